"""Cost-aware eviction against LRU on replayed request traces (simulated GPU and clock, tests/traces.py):
the total seconds spent bringing models back must be lower. `pytest -s` prints both totals;
bench/eviction.py writes them to bench/results/eviction.md."""
from __future__ import annotations

import pytest

import traces

GiB = traces.GiB


def _both(models, trace, budget, host):  # type: ignore[no-untyped-def]
    lru = traces.replay(models, trace, "lru", budget, host)
    cost = traces.replay(models, trace, "cost", budget, host)
    assert lru.cold_s == cost.cold_s            # the same first loads: only reloads differ
    print(f"reload seconds: lru {lru.reload_s:.1f}, cost {cost.reload_s:.1f} "
          f"({lru.reload_s / cost.reload_s:.2f}x); hits lru {lru.hits}, cost {cost.hits}")
    return lru, cost


def test_cost_aware_stops_lru_thrashing_the_big_slow_model() -> None:
    lru, cost = _both(*traces.thrash())
    # LRU reloads the 20 s model every round (it is the oldest when the third small one comes);
    # cost-aware keeps it and lets the 1.5 s ones take turns
    assert lru.hits == 0 and cost.hits >= 49
    assert cost.reload_s < lru.reload_s / 3


def test_cost_aware_parks_what_is_cheap_to_bring_back() -> None:
    models, trace, budget, _ = traces.thrash()
    lru, cost = _both(models, trace, budget, 8 * GiB)
    assert cost.moves.get("discard", 0) == 0 < lru.moves.get("discard", 0)  # LRU drops parked models to disk
    assert cost.reload_s < lru.reload_s / 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cost_aware_beats_lru_on_a_zipf_mix(seed: int) -> None:
    lru, cost = _both(*traces.zipf(seed))
    assert cost.reload_s < lru.reload_s
    assert cost.hits > lru.hits


def test_cost_aware_beats_lru_on_a_zipf_mix_without_a_host_tier() -> None:
    models, trace, budget, _ = traces.zipf(0)
    lru, cost = _both(models, trace, budget, 0)
    assert cost.reload_s < lru.reload_s
