"""A generated ledger: numbered rows printed page after page, with the sandbox oracle that
knows every row (``--oracle``), for tests and benchmarks of long answers and their sources."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.pdfgen import build_pdf

SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["rows"],
    "properties": {"rows": {"type": "array", "items": {
        "type": "object", "required": ["number", "date", "description", "amount"],
        "properties": {"number": {"type": "string"}, "date": {"type": "string"},
                       "description": {"type": "string"}, "amount": {"type": "number"}}}}},
}
GOODS = ("bolts", "nuts", "washers", "hinges", "brackets", "gaskets", "valves", "fuses",
         "cables", "springs", "rivets", "clamps")


@dataclass(frozen=True)
class Row:
    number: str
    date: str
    description: str
    amount: float
    page: int

    @property
    def value(self) -> dict[str, Any]:
        return {"number": self.number, "date": self.date, "description": self.description,
                "amount": self.amount}

    @property
    def line(self) -> str:
        return f"{self.number}  {self.date}  {self.description}  {self.amount:,.2f}"


@dataclass(frozen=True)
class Ledger:
    pdf: bytes
    rows: list[Row]

    def oracle_lines(self) -> list[str]:
        """The oracle's entries: one per row, matched by its number."""
        return [json.dumps({"match": r.number, "path": "/rows/-", "value": r.value})
                for r in self.rows]

    def oracle(self, path: Path) -> str:
        """Writes the oracle file."""
        path.write_text("".join(line + "\n" for line in self.oracle_lines()))
        return str(path)

    def rows_on(self, pages: range | list[int]) -> list[Row]:
        wanted = set(pages)
        return [r for r in self.rows if r.page in wanted]


def make_ledger(pages: int = 100, rows_per_page: int = 50, seed: int = 0,
                prefix: str = "R") -> Ledger:
    """``pages`` pages of ``rows_per_page`` uniquely numbered rows (``R-00001`` on; another
    ``prefix`` keeps the rows of several ledgers apart in one oracle)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for page in range(1, pages + 1):
        for _ in range(rows_per_page):
            n = len(rows) + 1
            rows.append(Row(f"{prefix}-{n:05d}", f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                            f"{rng.choice(GOODS)} lot {rng.randint(1, 999)}",
                            round(rng.uniform(1, 9999), 2), page))
    layout: list[tuple[str, object]] = [("text", [f"Ledger, page {p} of {pages}"]
               + [r.line for r in rows if r.page == p]) for p in range(1, pages + 1)]
    return Ledger(build_pdf(layout), rows)
