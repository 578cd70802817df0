"""Token budget and chunking: one call when everything fits, else the fewest balanced chunks.

A call must hold its prompt (the budget) and its answer (the usable output, when the answer
grows with the pages: ``service.core.sizing``). Pages are atomic (images are never split) except
a text page larger than a whole call, which is cut at paragraph, then sentence, then word
boundaries. Documents are laid end to end in job order and packed together when they fit; a
job may name the pages it reads per document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from schemas.errors import LongdocError
from service.core.pages import PageInfo, PageKind
from service.core.profiles import ModelProfile, wire_image_bytes
from service.core.prompt import page_header
from service.core.sizing import AnswerSize
from service.core.tokens import count_text, get_encoding

MAX_IMAGES_PER_CALL = 500
# The API's image payload limit, counted as sent (base64 data URLs: ``wire_image_bytes``).
MAX_PAYLOAD_BYTES = 50_000_000


class PlanningError(LongdocError):
    """The documents cannot be cut into calls that fit (the code says why)."""


@dataclass(frozen=True)
class Part:
    """One page (or a span of an oversized text page) as sent in a call."""

    document: int  # 1-based position of the document in the job
    page: int  # 1-based
    tokens: int
    kind: str = "text"
    span: tuple[int, int] | None = None
    part: int | None = None
    image_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"document": self.document, "page": self.page, "kind": self.kind,
                "span": list(self.span) if self.span else None, "part": self.part,
                "tokens": self.tokens, "image_bytes": self.image_bytes}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Part:
        span = (raw["span"][0], raw["span"][1]) if raw.get("span") else None
        return cls(raw["document"], raw["page"], raw["tokens"], raw.get("kind", PageKind.TEXT),
                   span, raw.get("part"), raw.get("image_bytes", 0))


@dataclass
class PlannedChunk:
    parts: list[Part]
    prompt_tokens: int  # overhead included: the exact prompt of the call

    @property
    def images(self) -> int:
        return sum(1 for p in self.parts if p.kind == "image")


@dataclass
class Plan:
    budget: int  # tokens available for pages in one call
    overhead: int
    chunks: list[PlannedChunk] = field(default_factory=list)
    # How the answers are expected to grow, and what each may hold (None: not planned by them).
    answer: AnswerSize | None = None
    usable_output: int = 0
    # The first call goes alone: its answer shows how long the others' will be (see jobs.py).
    hold: bool = False

    @property
    def total_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.chunks)


@lru_cache(maxsize=65536)
def header_tokens(document: int, page: int, part: int | None = None, image: bool = False) -> int:
    return count_text(page_header(document, page, part, image))


def call_budget(
    profile: ModelProfile,
    *,
    overhead: int,
    reserved_output: int,
    safety_margin: int,
    tpm_limit: int = 0,
    max_tokens_per_call: int | None = None,
) -> int:
    """Tokens left for pages in one call.

    The window holds prompt and output together (as does a job's ``max_tokens_per_call``);
    a request is charged against tokens-per-minute as the larger of its prompt and its
    ``max_tokens`` (OpenAI's rate-limit guide), and one charged above the TPM limit is refused
    outright: an account whose TPM is below the window cannot send a window-sized call.
    """
    caps = [profile.context_window - reserved_output]
    if tpm_limit:
        caps.append(tpm_limit)
    if max_tokens_per_call:
        caps.append(max_tokens_per_call - reserved_output)
    budget = min(caps) - overhead - safety_margin
    if budget <= 0 or (tpm_limit and reserved_output > tpm_limit):
        raise PlanningError(
            "budget_too_small",
            f"no room for pages: a call's prompt may carry {min(caps)} tokens, "
            f"{overhead + safety_margin} of which go to instructions, schema and margin "
            f"({reserved_output} more are reserved for the answer)",
        )
    return budget


def page_parts(
    documents: Sequence[Sequence[PageInfo]],
    profile: ModelProfile,
    *,
    detail: str,
    budget: int,
    load_text: Callable[[int, int], str],
    selected: Sequence[Collection[int] | None] | None = None,
) -> list[Part]:
    """Every page of every document (or the ``selected`` page numbers of each) as parts that
    each fit one call, in order."""
    parts: list[Part] = []
    for d, pages in enumerate(documents, start=1):
        chosen = selected[d - 1] if selected is not None else None
        for p, info in enumerate(pages, start=1):
            if chosen is not None and p not in chosen:
                continue
            if info.kind == PageKind.IMAGE:
                tokens = header_tokens(d, p, None, True) + profile.image_tokens(
                    info.width, info.height, detail)
                if tokens > budget:
                    raise PlanningError("page_too_large",
                                        f"document {d} page {p}: an image of {tokens} tokens "
                                        f"does not fit a call of {budget}")
                parts.append(Part(d, p, tokens, "image", image_bytes=info.image_bytes))
            elif info.kind == PageKind.TEXT and info.text_tokens:
                tokens = header_tokens(d, p) + info.text_tokens
                if tokens <= budget:
                    parts.append(Part(d, p, tokens))
                else:
                    parts.extend(split_text_page(d, p, load_text(d, p), budget))
    return parts


_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?。])\s+")
_SPACE = re.compile(r"\s+")


def _cut_near(text: str, start: int, target: int, end: int) -> int:
    """A boundary close to ``target`` in (start, end): paragraph, else sentence, else space."""
    window = max(200, (end - start) // 8)
    lo, hi = max(start + 1, target - window), min(end - 1, target + window)
    for pattern in (_PARAGRAPH, _SENTENCE, _SPACE):
        best = None
        for match in pattern.finditer(text, lo, hi):
            if best is None or abs(match.end() - target) < abs(best - target):
                best = match.end()
        if best is not None and start < best < end:
            return best
    return max(start + 1, min(target, end - 1))


def _span_tokens(d: int, p: int, k: int, text: str, span: tuple[int, int]) -> int:
    return header_tokens(d, p, k) + count_text(text[span[0]:span[1]])


def split_text_page(d: int, p: int, text: str, budget: int) -> list[Part]:
    """Cuts an oversized page into the fewest spans that fit, balanced, at natural boundaries."""
    enc = get_encoding()
    total = len(enc.encode_ordinary(text))
    pieces = -(-total // max(1, budget - header_tokens(d, p, 999)))
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(1, pieces):
        cut = _cut_near(text, start, round(len(text) * i / pieces), len(text))
        spans.append((start, cut))
        start = cut
    spans.append((start, len(text)))
    # Exact counts; a span over budget is halved again (rare: dense text near a cut).
    done: list[tuple[int, int]] = []
    while spans:
        span = spans.pop(0)
        if _span_tokens(d, p, 999, text, span) <= budget or span[1] - span[0] < 2:
            done.append(span)
            continue
        mid = _cut_near(text, span[0], (span[0] + span[1]) // 2, span[1])
        spans[:0] = [(span[0], mid), (mid, span[1])]
    return [
        Part(d, p, _span_tokens(d, p, k, text, span), "text", span, k)
        for k, span in enumerate(done, start=1)
    ]


@dataclass(frozen=True)
class Limits:
    """What one call may carry: pages within the budget, and (when the answer grows with the
    pages) an answer within the usable output."""

    budget: int
    answer: AnswerSize | None = None
    usable: int = 0

    def scaled(self, budget: int) -> Limits:
        """Both limits shrunk alike, for balancing."""
        if self.answer is None or not self.answer.grows:
            return Limits(budget)
        room = self.usable - self.answer.fixed
        return Limits(budget, self.answer,
                      self.answer.fixed + max(1, room * budget // max(1, self.budget)))

    def fits(self, tokens: int) -> bool:
        if tokens > self.budget:
            return False
        return self.answer is None or not self.answer.grows or \
            self.answer.tokens(tokens) <= self.usable


def _fill(parts: Sequence[Part], limits: Limits) -> list[list[Part]]:
    chunks: list[list[Part]] = []
    current: list[Part] = []
    tokens = images = payload = 0
    for part in parts:
        is_image = part.kind == "image"
        if current and (not limits.fits(tokens + part.tokens)
                        or images + is_image > MAX_IMAGES_PER_CALL
                        or payload + wire_image_bytes(part.image_bytes) > MAX_PAYLOAD_BYTES):
            chunks.append(current)
            current, tokens, images, payload = [], 0, 0, 0
        current.append(part)
        tokens += part.tokens
        images += is_image
        payload += wire_image_bytes(part.image_bytes) if is_image else 0
    if current:
        chunks.append(current)
    return chunks


def balanced_chunks(parts: Sequence[Part], limits: Limits | int) -> list[list[Part]]:
    """The fewest chunks within the limits, with the largest chunk as small as it can be.

    A greedy fill at the full limits gives the fewest chunks but can leave a tiny last one;
    the smallest limits (both shrunk alike) that still need no more chunks spread the pages
    evenly.
    """
    if isinstance(limits, int):
        limits = Limits(limits)
    if not parts:
        return []
    fewest = len(_fill(parts, limits))
    if fewest == 1:
        return [list(parts)]
    lo, hi = max(p.tokens for p in parts), limits.budget
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_fill(parts, limits.scaled(mid))) <= fewest:
            hi = mid
        else:
            lo = mid + 1
    return _fill(parts, limits.scaled(lo))


def plan_chunks(
    documents: Sequence[Sequence[PageInfo]],
    profile: ModelProfile,
    *,
    overhead: int,
    budget: int,
    detail: str = "auto",
    load_text: Callable[[int, int], str],
    selected: Sequence[Collection[int] | None] | None = None,
    answer: AnswerSize | None = None,
    usable_output: int = 0,
) -> Plan:
    """The fewest balanced chunks of the pages. With ``answer``, each chunk's expected answer
    also fits ``usable_output``."""
    parts = page_parts(documents, profile, detail=detail, budget=budget, load_text=load_text,
                       selected=selected)
    plan = Plan(budget=budget, overhead=overhead, answer=answer, usable_output=usable_output)
    if not parts:
        raise PlanningError("document_empty", "the pages to read have no text and no images")
    for chunk in balanced_chunks(parts, Limits(budget, answer, usable_output)):
        plan.chunks.append(PlannedChunk(chunk, overhead + sum(p.tokens for p in chunk)))
    return plan


def split_in_two(parts: Sequence[Part], load_text: Callable[[int, int], str]) -> list[list[Part]]:
    """Halves a chunk that came back too long (or was refused as too large) for a retry."""
    if len(parts) > 1:
        total = sum(p.tokens for p in parts)
        best, running = 1, 0
        for i, part in enumerate(parts[:-1], start=1):
            running += part.tokens
            if abs(total / 2 - running) < abs(total / 2 - sum(x.tokens for x in parts[:best])):
                best = i
        return [list(parts[:best]), list(parts[best:])]
    part = parts[0]
    if part.kind == "image":
        raise PlanningError("page_too_large",
                            f"document {part.document} page {part.page}: one image cannot be split")
    text = load_text(part.document, part.page)
    start, end = part.span or (0, len(text))
    text_tokens = part.tokens - header_tokens(part.document, part.page, part.part)
    half = header_tokens(part.document, part.page, 999) + -(-text_tokens // 2) + 4
    halves = split_text_page(part.document, part.page, text[start:end], half)
    if len(halves) < 2:
        raise PlanningError("page_too_large",
                            f"document {part.document} page {part.page} cannot be split further")
    out = []
    for i, piece in enumerate(halves, start=1):
        number = (part.part or 1) * 10 + i  # one more digit per split: still a unique label
        span = (start + piece.span[0], start + piece.span[1]) if piece.span else (start, end)
        tokens = _span_tokens(part.document, part.page, number, text, span)
        out.append([Part(part.document, part.page, tokens, "text", span, number)])
    return out


def replan(parts: Sequence[Part], limits: Limits, load_text: Callable[[int, int], str],
           again: Sequence[Part] = ()) -> list[list[Part]]:
    """Pages still to read, cut again by what the job's answers showed. ``again`` is a chunk
    whose answer was cut before anything of it was settled: the same chunk sent again would be
    cut at the same place, so it never comes back whole (it is halved instead)."""
    groups = balanced_chunks(parts, limits)
    if not again:
        return groups
    out: list[list[Part]] = []
    for group in groups:
        if list(group[:len(again)]) == list(again):
            out.extend(split_in_two(again, load_text))
            if group[len(again):]:
                out.append(group[len(again):])
        else:
            out.append(group)
    return out
