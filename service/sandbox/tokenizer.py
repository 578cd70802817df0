"""``o200k_base``, loaded offline by the sandbox itself.

The sandbox is the referee of the service's token predictions, so it shares no counting code
with the service, only the published encoding: tiktoken downloads its BPE files at run time,
the ``bpe-openai`` package ships the same file gzipped, and the sha256 below is the one
tiktoken itself checks (``tiktoken_ext/openai_public.py``, ``o200k_base``), as is the
pre-tokenizer pattern.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from functools import lru_cache
from importlib import resources

import tiktoken

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


class TokenizerMissing(RuntimeError):
    """The BPE file is absent or is not the published one: the sandbox refuses to guess."""


def _ranks() -> dict[bytes, int]:
    blob = resources.files("bpe_openai").joinpath("data/o200k_base.tiktoken.gz").read_bytes()
    data = gzip.decompress(blob)
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise TokenizerMissing(f"o200k_base: BPE file does not match sha256 {O200K_SHA256}")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding(name="o200k_base", pat_str=O200K_PATTERN, mergeable_ranks=_ranks(),
                             special_tokens=O200K_SPECIAL_TOKENS)


def count(text: str) -> int:
    """Tokens of ``text`` as the API bills user text: special-token names are plain text."""
    return len(encoding().encode_ordinary(text)) if text else 0


def truncate(text: str, tokens: int) -> str:
    """The first ``tokens`` tokens of ``text``, as a model cut off at its cap would have said."""
    enc = encoding()
    return enc.decode(enc.encode_ordinary(text)[:tokens])
