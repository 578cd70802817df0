"""Answer-heavy documents: calls against the output-aware lower bound, tokens re-sent by
continuations, and cost against a naive split-in-two (what the service did before: an answer cut
at ``length`` thrown away, its pages halved and asked again, ``max_tokens`` = max(2048, prompt/4)).

    .venv/bin/python -m bench.answers [--pages 20,100,300]

Ledgers of 50 numbered rows a page (``tests/support/ledger.py``) and a 100-page prose document
with 12 obligations spread over it, read by the sandbox with an oracle of every row (it answers
with exactly the rows of the pages it is given, cut at 32,768 tokens mid-JSON, as gpt-4.1-nano
is). Both strategies run against the same sandbox, on the same extracted page text, counted by
the sandbox. Latency is modeled from the calls' dependencies at the seed figures (0.47 s to the
first token, 144 output tokens/s): a call starts when the call whose answer it needs has ended.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from schemas.strict import check_schema
from service.core.planner import header_tokens
from service.core.profiles import get_profile
from service.core.prompt import fixed_overhead, format_fields, page_header, system_text
from service.core.sizing import lower_bound_calls, usable_output
from service.core.tokens import count_text
from tests.support.ledger import SCHEMA, make_ledger
from tests.support.pdfgen import text_pdf
from tests.support.stack import Stack, start_stack, upload, wait_document, wait_job

NANO = get_profile("gpt-4.1-nano")
CAP = NANO.max_output_tokens
TTFT_S, OUTPUT_TPS = 0.47, 144.0
SPARSE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["title", "obligations"],
    "properties": {"title": {"type": "string"}, "obligations": {"type": "array", "items": {
        "type": "object", "required": ["party", "duty"],
        "properties": {"party": {"type": "string"}, "duty": {"type": "string"}}}}}}


def call_seconds(completion_tokens: int) -> float:
    return TTFT_S + completion_tokens / OUTPUT_TPS


@dataclass
class Outcome:
    calls: int
    prompt: int
    completion: int
    cost: float
    resent: int  # page tokens sent more than once
    discarded: int  # completion tokens of answers thrown away
    latency_s: float
    items: int


def ours(stack: Stack, client: httpx.Client, doc: dict[str, Any], schema: dict[str, Any],
         unique_pages: int, overhead: int) -> tuple[Outcome, dict[str, Any]]:
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": schema}).json()
    job = wait_job(client, job["id"], 600)
    assert job["status"] == "succeeded", job
    calls = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    sent = sum(c["prompt_tokens"] - overhead for c in calls)
    items = sum(len(v) for v in result["data"].values() if isinstance(v, list))
    return Outcome(len(calls), sum(c["prompt_tokens"] for c in calls),
                   sum(c["completion_tokens"] for c in calls), job["cost_usd"],
                   sent - unique_pages, sum(c["completion_tokens"] for c in calls
                                            if not c["answer_used"]),
                   modeled_latency(stack, job), items), result


def modeled_latency(stack: Stack, job: dict[str, Any]) -> float:
    """The longest chain of calls, each waiting for the one whose answer created it: a
    continuation (ordinal ``X.nnnn``) for chunk X, chunks held for the first answer for it."""
    db = sqlite3.connect(f"file:{stack.data_dir / 'longdoc.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT c.ordinal, m.completion_tokens FROM chunks c JOIN model_calls m "
                          "ON m.chunk_id = c.id WHERE c.job_id = ? AND m.status = 'answered'",
                          (job["id"],)).fetchall()
    finally:
        db.close()
    held = bool((job["plan"].get("answer") or {}).get("first_call_alone"))
    ends: dict[str, float] = {}
    for ordinal, tokens in sorted(rows, key=lambda r: (r[0].count("."), r[0])):
        parent = ordinal.rsplit(".", 1)[0] if "." in ordinal else None
        if parent is None and held and ordinal != "00000":
            parent = "00000"
        start = ends.get(parent, 0.0) if parent else 0.0
        ends[ordinal] = start + call_seconds(tokens)
    return max(ends.values())


def naive(stack: Stack, texts: list[str], schema: dict[str, Any]) -> Outcome:
    """The service before: one call for what fits the window; a cut answer is thrown away and
    its pages are split in two (by tokens) and asked again."""
    strict = check_schema(schema)
    tokens = [header_tokens(1, p) + count_text(t) for p, t in enumerate(texts, start=1)]
    overhead = fixed_overhead(NANO, None, strict, "json_schema")
    outcome = Outcome(0, 0, 0, 0.0, 0, 0, 0.0, 0)
    level: list[tuple[list[int], float]] = [(list(range(1, len(texts) + 1)), 0.0)]
    with httpx.Client(base_url=stack.sandbox_url, timeout=600,
                      headers={"Authorization": "Bearer sandbox-key"}) as http:

        def ask(pages: list[int]) -> dict[str, Any]:
            prompt = overhead + sum(tokens[p - 1] for p in pages)
            body = {"model": "gpt-4.1-nano",
                    "messages": [{"role": "system", "content": system_text(None)},
                                 {"role": "user", "content": [
                                     {"type": "text", "text": page_header(1, p) + texts[p - 1]}
                                     for p in pages]}],
                    **format_fields(strict, "json_schema"),
                    "max_completion_tokens": min(CAP, max(2048, prompt // 4)), "temperature": 0}
            response = http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            return answer

        with ThreadPoolExecutor(16) as pool:
            while level:
                answers = list(pool.map(ask, [pages for pages, _ in level]))
                following: list[tuple[list[int], float]] = []
                for (pages, start), answer in zip(level, answers, strict=True):
                    usage = answer["usage"]
                    outcome.calls += 1
                    outcome.prompt += usage["prompt_tokens"]
                    outcome.completion += usage["completion_tokens"]
                    outcome.cost += NANO.cost_usd(usage["prompt_tokens"], usage["prompt_tokens_details"]
                                                  ["cached_tokens"], usage["completion_tokens"])
                    end = start + call_seconds(usage["completion_tokens"])
                    outcome.latency_s = max(outcome.latency_s, end)
                    if answer["choices"][0]["finish_reason"] == "length" and len(pages) > 1:
                        outcome.discarded += usage["completion_tokens"]
                        outcome.resent += sum(tokens[p - 1] for p in pages)
                        half = split_at(pages, tokens)
                        following += [(pages[:half], end), (pages[half:], end)]
                    else:
                        data = json.loads(answer["choices"][0]["message"]["content"])
                        outcome.items += sum(len(v) for v in data.values() if isinstance(v, list))
                level = following
    return outcome


def split_at(pages: list[int], tokens: list[int]) -> int:
    total, running = sum(tokens[p - 1] for p in pages), 0
    for i, p in enumerate(pages[:-1], start=1):
        running += tokens[p - 1]
        if running >= total / 2:
            return i
    return len(pages) - 1


def sparse_document() -> tuple[bytes, list[str]]:
    """100 pages of prose; 12 of them state an obligation the oracle knows."""
    pdf = text_pdf(100, lines=50, seed=500)
    oracle = [json.dumps({"match": f"{500 + p}-7.", "path": "/obligations/-",
                          "value": {"party": f"Party {p}", "duty": f"the duty stated on page {p}"}})
              for p in range(1, 100, 8)]
    return pdf, oracle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", default="20,100,300")
    sizes = [int(n) for n in parser.parse_args().pages.split(",")]
    ledgers = {n: make_ledger(n, prefix=f"L{n}") for n in sizes}
    sparse_pdf, sparse_oracle = sparse_document()
    with tempfile.TemporaryDirectory() as tmp:
        oracle = Path(tmp) / "oracle.jsonl"
        oracle.write_text("\n".join([line for led in ledgers.values() for line in led.oracle_lines()]
                                    + sparse_oracle) + "\n")
        stack = start_stack(Path(tmp), sandbox_args=["--oracle", str(oracle)])
        try:
            with stack.client(stack.create_key("bench")["api_key"]) as client:
                cases = [(f"ledger {n} p", led.pdf, SCHEMA, len(led.rows))
                         for n, led in ledgers.items()]
                cases.append(("prose 100 p", sparse_pdf, SPARSE_SCHEMA, len(sparse_oracle)))
                print(f"{'document':<14} {'rows':>6} {'answer':>8} {'bound':>5} {'calls':>5} "
                      f"{'naive':>5} {'re-sent':>8} {'naive re-sent':>13} {'discarded':>9} "
                      f"{'cost $':>9} {'naive $':>9} {'ratio':>5} {'latency s':>9} "
                      f"{'naive s':>8}")
                for name, pdf, schema, expected in cases:
                    doc = upload(client, f"{name}.pdf", data=pdf).json()
                    doc = wait_document(client, doc["id"], 300)
                    texts = [client.get(f"/v1/documents/{doc['id']}/pages/{p}").json()["text"]
                             for p in range(1, doc["pages"] + 1)]
                    unique = sum(header_tokens(1, p) + count_text(t)
                                 for p, t in enumerate(texts, start=1))
                    overhead = fixed_overhead(NANO, None, check_schema(schema), "json_schema")
                    started = time.perf_counter()
                    mine, result = ours(stack, client, doc, schema, unique, overhead)
                    took = time.perf_counter() - started
                    answer = count_text(json.dumps(result["data"], separators=(",", ":")))
                    bound = lower_bound_calls(unique, 1_000_000, answer, usable_output(CAP))
                    before = naive(stack, texts, schema)
                    assert mine.items == expected, (name, mine.items)
                    print(f"{name:<14} {mine.items:>6} {answer:>8} {bound:>5} {mine.calls:>5} "
                          f"{before.calls:>5} {mine.resent:>8} {before.resent:>13} "
                          f"{before.discarded:>9} {mine.cost:>9.5f} {before.cost:>9.5f} "
                          f"{before.cost / mine.cost:>5.2f} {mine.latency_s:>9.0f} "
                          f"{before.latency_s:>8.0f}   ({took:.1f} s here)")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
