"""Cost-aware eviction against LRU on replayed request traces: total seconds spent bringing models back
(the residency policy itself, warmd/policy.py, on a simulated GPU and clock: tests/traces.py).

    .venv/bin/python bench/eviction.py [--seeds 10]
"""
from __future__ import annotations

import argparse

from common import write_report   # also puts tests/ on the path, for traces

import traces

GiB = traces.GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10, help="Zipf traces to replay")
    args = parser.parse_args()
    models, trace, budget, _ = traces.thrash()
    cases = [("thrash: 1 big slow + 4 small, in turn, no host tier", traces.thrash()),
             ("thrash, 8 GiB host tier", (models, trace, budget, 8 * GiB))]
    cases += [(f"Zipf mix, seed {seed}, 12 GiB host tier", traces.zipf(seed)) for seed in range(args.seeds)]
    lines = ["# Eviction: cost-aware against LRU on replayed traces", "",
             "Seconds spent bringing back models that had been resident before (first loads excluded: the",
             "same for both), hits = requests that found their model serving. `tests/traces.py` describes",
             "the traces; `tests/unit/test_policy_traces.py` asserts cost < LRU on them.", "",
             "| trace | requests | LRU reload s | cost reload s | LRU / cost | hits LRU | hits cost |",
             "|---|---|---|---|---|---|---|"]
    for title, (models, trace, budget, host) in cases:
        lru = traces.replay(models, trace, "lru", budget, host)
        cost = traces.replay(models, trace, "cost", budget, host)
        lines.append(f"| {title} | {len(trace)} | {lru.reload_s:.1f} | {cost.reload_s:.1f} | "
                     f"{lru.reload_s / cost.reload_s:.2f}x | {lru.hits} | {cost.hits} |")
    write_report("eviction", lines)


if __name__ == "__main__":
    main()
