"""Image parts as the API reads them: a data URL, its media type, its bytes, its size."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from service.sandbox.errors import OpenAIError

# Vision guide, "Image input requirements": PNG, JPEG, WEBP and non-animated GIF.
FORMATS = {"PNG": "png", "JPEG": "jpeg", "GIF": "gif", "WEBP": "webp"}
MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"),
         (b"GIF89a", "gif"))
UNSUPPORTED = ("You uploaded an unsupported image. Please make sure your image has of one the "
               "following formats: ['png', 'jpeg', 'gif', 'webp'].")


@dataclass(frozen=True)
class ImageInput:
    width: int
    height: int
    format: str
    wire_bytes: int  # the URL as sent: base64 is a third larger than the image


def _magic(raw: bytes) -> str | None:
    for prefix, name in MAGIC:
        if raw.startswith(prefix):
            return name
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return None


def read_image(url: str) -> ImageInput:
    """Reads the header of a data-URL image; every refusal is the API's own 400."""
    if not url.startswith("data:"):
        # The sandbox never reaches the network, so a remote image fails as an unreachable one.
        raise OpenAIError(400, f"Timeout while downloading {url[:200]}.", code="invalid_image_url")
    head, _, payload = url.partition(",")
    media_type = head[5:].split(";", 1)[0].strip().lower()
    if not media_type.startswith("image/"):
        raise OpenAIError(400, "Invalid MIME type. Only image types are supported.",
                          code="invalid_image_format")
    if ";base64" not in head.lower():
        raise OpenAIError(400, UNSUPPORTED, code="invalid_image_format")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, "You uploaded an unsupported image. Please make sure your image is "
                          "valid.", code="invalid_image_format") from None
    magic = _magic(raw)
    if magic is None or media_type.split("/", 1)[1] not in ("png", "jpeg", "jpg", "gif", "webp"):
        raise OpenAIError(400, UNSUPPORTED, code="invalid_image_format")
    try:
        with Image.open(io.BytesIO(raw)) as img:  # reads the header, decodes no pixel
            width, height = img.size
            fmt = FORMATS.get(img.format or "")
            animated = bool(getattr(img, "is_animated", False))
            if fmt == "png":
                img.verify()  # chunk CRCs, still without decoding
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise OpenAIError(400, "You uploaded an unsupported image. Please make sure your image is "
                          "valid.", code="invalid_image_format") from None
    if fmt is None or fmt != magic or animated:
        raise OpenAIError(400, UNSUPPORTED, code="invalid_image_format")
    return ImageInput(width, height, fmt, len(url))
