"""Reading what a real ``/metrics`` endpoint says, with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass
class Scrape:
    """One answer of a ``/metrics`` endpoint: its families by name (as the parser names them:
    a counter without ``_total``) and every sample."""

    types: dict[str, str]
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(url: str) -> Scrape:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    types, samples = {}, []
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        samples.extend(family.samples)
    return Scrape(types, samples)


def combined(scrapes: Iterable[Scrape]) -> Scrape:
    """Several processes as Prometheus would sum them."""
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for one in scrapes:
        types.update(one.types)
        samples.extend(one.samples)
    return Scrape(types, samples)
