"""The oracle: answers that carry what the pages hold, in page order, cut at the output cap as a
real model's are; and citations of where each value came from, some made wrong on purpose."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sandbox.conftest import chat, schema_body, serve

STRING = {"type": "string"}


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": list(props),
            "properties": props}


INVOICES = obj(vendor=STRING, items={"type": "array", "items": obj(number=STRING,
                                                                    amount={"type": "number"})},
               note=STRING)
CITED = obj(data=INVOICES, sources={"type": "array", "items": obj(
    path=STRING, document={"type": "integer"}, page={"type": "integer"}, quote=STRING)})
PAGES = ["Document 1, page 1\nInvoice list\nINV-0001 widgets 10.00\nINV-0002 bolts 20.00\n",
         "Document 1, page 2\nINV-0003 nuts 30.00\n",
         "Document 2, page 1\nSold by Acme Corp, Springfield\n"]
# Out of page order on purpose, values with keys out of schema order, one entry on no page.
ORACLE: list[dict[str, Any]] = [
    {"match": "INV-0003", "path": "/items/-", "value": {"amount": 30, "number": "INV-0003"}},
    {"match": "Acme Corp", "path": "/vendor", "value": "Acme Corporation"},
    {"match": "INV-0001", "path": "/items/-", "value": {"amount": 10, "number": "INV-0001"}},
    {"match": "INV-0002", "path": "/items/-", "value": {"number": "INV-0002", "amount": 20}},
    {"match": "INV-0099", "path": "/items/-", "value": {"number": "INV-0099", "amount": 99}},
]


def write_oracle(path: Path, entries: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return str(path)


@pytest.fixture(scope="module")
def oracle_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(oracle=write_oracle(tmp_path_factory.mktemp("oracle") / "o.jsonl", ORACLE)) as url:
        yield url


def pages_body(schema: dict[str, Any], pages: list[str] = PAGES, **extra: Any) -> dict[str, Any]:
    body = schema_body("", schema, **extra)
    body["messages"] = [{"role": "system", "content": "Extract."},
                        {"role": "user", "content": [{"type": "text", "text": p} for p in pages]}]
    return body


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def test_the_answer_carries_the_entries_found_on_the_pages_in_page_order(oracle_url: str) -> None:
    answer = content(chat(oracle_url, pages_body(INVOICES)))
    # Keys in the schema's order, as OpenAI generates them.
    assert answer.startswith('{"vendor":"Acme Corporation","items":[{"number":"INV-0001",'
                             '"amount":10},{"number":"INV-0002","amount":20},'
                             '{"number":"INV-0003","amount":30}],"note":"')
    assert isinstance(json.loads(answer)["note"], str)  # the rest is filled as before


def test_a_tool_call_carries_the_same_answer(oracle_url: str) -> None:
    body = pages_body(INVOICES)
    del body["response_format"]
    body["tools"] = [{"type": "function", "function": {"name": "record", "parameters": INVOICES,
                                                       "strict": True}}]
    message = chat(oracle_url, body).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["arguments"] == \
        content(chat(oracle_url, pages_body(INVOICES)))


def test_only_the_pages_in_the_prompt_count(oracle_url: str) -> None:
    data = json.loads(content(chat(oracle_url, pages_body(INVOICES, PAGES[1:2]))))
    assert [i["number"] for i in data["items"]] == ["INV-0003"]
    assert data["vendor"] != "Acme Corporation"


def test_an_answer_longer_than_max_completion_tokens_is_cut_mid_json(oracle_url: str) -> None:
    full = content(chat(oracle_url, pages_body(INVOICES)))
    response = chat(oracle_url, pages_body(INVOICES, max_completion_tokens=12))
    cut = content(response)
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 12
    assert full.startswith(cut) and len(cut) < len(full)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


def test_citations_name_the_page_and_quote_the_match_of_every_leaf(oracle_url: str) -> None:
    answer = json.loads(content(chat(oracle_url, pages_body(CITED))))
    assert answer["data"] == json.loads(content(chat(oracle_url, pages_body(INVOICES))))
    assert answer["sources"] == [
        {"path": "/items/0/number", "document": 1, "page": 1, "quote": "INV-0001"},
        {"path": "/items/0/amount", "document": 1, "page": 1, "quote": "INV-0001"},
        {"path": "/items/1/number", "document": 1, "page": 1, "quote": "INV-0002"},
        {"path": "/items/1/amount", "document": 1, "page": 1, "quote": "INV-0002"},
        {"path": "/items/2/number", "document": 1, "page": 2, "quote": "INV-0003"},
        {"path": "/items/2/amount", "document": 1, "page": 2, "quote": "INV-0003"},
        {"path": "/vendor", "document": 2, "page": 1, "quote": "Acme Corp"},
    ]


LEDGER_PAGES = [f"Document 1, page {p}\n" + "".join(
    f"ROW-{10 * (p - 1) + i:03d} item {i}\n" for i in range(10)) for p in range(1, 5)]
LEDGER_ORACLE: list[dict[str, Any]] = [{"match": f"ROW-{n:03d}", "path": "/items/-",
                  "value": {"number": f"ROW-{n:03d}", "amount": n}} for n in range(40)]


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = write_oracle(tmp_path_factory.mktemp("ledger") / "o.jsonl", LEDGER_ORACLE)
    with serve(oracle=path, seed=7) as url:
        yield url


def cited(url: str, rate: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sources, the sandbox's list of the citations it made wrong) at ``rate``."""
    httpx.post(f"{url}/sandbox/config", json={"fabricate_rate": rate},
               timeout=10).raise_for_status()
    answer = json.loads(content(chat(url, pages_body(CITED, LEDGER_PAGES))))
    fabricated = httpx.get(f"{url}/sandbox/stats", timeout=10).json()["fabricated"]
    return answer["sources"], fabricated


def wrong(source: dict[str, Any]) -> bool:
    """A citation is right when its quote is on the page it names and that page has the row."""
    page = LEDGER_PAGES[source["page"] - 1] if 1 <= source["page"] <= 4 else ""
    row = int(source["path"].split("/")[2])
    return source["quote"] not in page or f"ROW-{row:03d}" not in page


def test_fabricated_citations_cite_another_page_and_an_invented_quote(ledger_url: str) -> None:
    sources, fabricated = cited(ledger_url, 0.25)
    bad = [s for s in sources if wrong(s)]
    assert 0 < len(bad) < len(sources) == 80
    assert [s["path"] for s in bad] == [f["path"] for f in fabricated]
    for source in bad:
        assert source["quote"] not in "".join(LEDGER_PAGES)  # invented, on no page at all
    for entry in fabricated:
        assert (entry["document"], entry["page"]) != (entry["true_document"], entry["true_page"])
    # Chosen by the seed and the entry: the same request gets the same wrong citations.
    assert cited(ledger_url, 0.25)[0] == sources
    assert all(wrong(s) for s in cited(ledger_url, 1.0)[0])
    assert not any(wrong(s) for s in cited(ledger_url, 0.0)[0])
