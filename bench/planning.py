"""Planning benchmark: time to plan, and calls made against the lower bound ceil(tokens / budget).

    .venv/bin/python -m bench.planning
"""

from __future__ import annotations

import math
import time

from schemas.strict import check_schema
from service.core.pages import PageInfo
from service.core.planner import call_budget, header_tokens, plan_chunks
from service.core.profiles import get_profile
from service.core.prompt import fixed_overhead
from service.core.tokens import get_encoding

SCHEMA = {"type": "object", "properties": {"parties": {"type": "array", "items": {"type": "string"}},
                                           "total": {"type": "number"}}}


def main() -> None:
    profile = get_profile("gpt-4.1-nano")
    get_encoding()  # loaded once per process, at worker start
    started = time.perf_counter()
    overhead = fixed_overhead(profile, "Extract the parties.", check_schema(SCHEMA), "json_schema")
    overhead_s = time.perf_counter() - started
    print(f"request overhead: {overhead} tokens, counted in {overhead_s * 1000:.1f} ms")
    print(f"{'tokens':>10} {'pages':>6} {'TPM cap':>9} {'budget':>9} {'calls':>5} {'bound':>5} "
          f"{'spread':>7} {'plan ms (cold)':>14}")
    for tpm in (0, 200_000):
        budget = call_budget(profile, overhead=overhead, reserved_output=32_768,
                             safety_margin=2048, tpm_limit=tpm)
        for pages in (100, 1_400, 1_500, 2_900, 4_400, 10_000, 20_000):
            # ~690 tokens a page, like the 1,400-page benchmark PDF, with some variation
            infos = [PageInfo("text", 600 + (i * 37) % 180) for i in range(pages)]
            tokens = sum(i.text_tokens for i in infos)
            header_tokens.cache_clear()
            times = []
            for _ in range(3):  # the first run counts every page header; later ones hit the cache
                started = time.perf_counter()
                plan = plan_chunks([infos], profile, overhead=overhead, budget=budget,
                                   load_text=lambda d, p: "")
                times.append(time.perf_counter() - started)
            best = times[0]
            sizes = [c.prompt_tokens - overhead for c in plan.chunks]
            bound = math.ceil(sum(sizes) / budget)
            spread = (max(sizes) - min(sizes)) / max(sizes)
            print(f"{tokens:>10} {pages:>6} {tpm or '-':>9} {budget:>9} {len(plan.chunks):>5} "
                  f"{bound:>5} {spread:>7.2%} {best * 1000:>14.1f}")


if __name__ == "__main__":
    main()
