"""Exact token counting with ``o200k_base``, loaded offline, and the image token formula."""

from __future__ import annotations

import base64
import gzip
import hashlib
import math
from functools import lru_cache
from importlib import resources

import tiktoken

# The hash tiktoken itself checks for o200k_base, and the encoding's pre-tokenizer pattern and
# special tokens, as tiktoken defines them (tiktoken_ext/openai_public.py, ``o200k_base``); a
# test checks this copy against tiktoken's own definition.
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


class TokenizerUnavailable(RuntimeError):
    pass


def _load_ranks(name: str, expected_hash: str) -> dict[bytes, int]:
    # tiktoken downloads its BPE files at run time; bpe-openai ships the same files gzipped.
    blob = resources.files("bpe_openai").joinpath(f"data/{name}.tiktoken.gz").read_bytes()
    data = gzip.decompress(blob)
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise TokenizerUnavailable(f"{name}: BPE file does not match sha256 {expected_hash}")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=4)
def get_encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    if name != "o200k_base":
        raise TokenizerUnavailable(f"tokenizer {name!r} is not available offline")
    return tiktoken.Encoding(name=name, pat_str=O200K_PATTERN,
                             mergeable_ranks=_load_ranks(name, O200K_SHA256),
                             special_tokens=O200K_SPECIAL_TOKENS)


def count_text(text: str, encoding: str = "o200k_base") -> int:
    if not text:
        return 0
    return len(get_encoding(encoding).encode_ordinary(text))


def patch_scale(width: float, height: float, patch: int = 32, max_patches: int = 1536) -> float:
    """The factor the API shrinks an image by before cutting patches (OpenAI vision guide)."""
    if math.ceil(width / patch) * math.ceil(height / patch) <= max_patches:
        return 1.0
    r = math.sqrt(patch * patch * max_patches / (width * height))
    w_scaled, h_scaled = width * r / patch, height * r / patch
    return r * min(math.floor(w_scaled) / w_scaled, math.floor(h_scaled) / h_scaled)


def patch_grid(width: int, height: int, patch: int = 32, max_patches: int = 1536) -> tuple[int, int]:
    """The patch method of GPT-4.1 mini/nano: the (cols, rows) billed."""
    r = patch_scale(width, height, patch, max_patches)
    return math.ceil(width * r / patch), math.ceil(height * r / patch)


def image_patch_tokens(
    width: int, height: int, multiplier: float, max_patches: int = 1536, patch: int = 32
) -> int:
    cols, rows = patch_grid(width, height, patch, max_patches)
    return math.ceil(cols * rows * multiplier)


def image_tile_tokens(width: int, height: int, base: int, per_tile: int) -> int:
    """The tile method of GPT-4o / GPT-4.1 (detail high): fit 2048, shortest side 768, 512 tiles."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)
