"""Request traces replayed against the residency policy (warmd.policy) on a simulated GPU and clock.

No threads, providers or files: each request at time t hits a serving model, or brings a parked one back
(its unpark seconds), or loads it from disk (its load seconds) once the policy's moves are carried out
at once. Loads and unparks are "measured" with the model's true durations, as the daemon measures them,
so the policy starts from estimates made from bytes and learns the real costs. Used by
tests/unit/test_policy_traces.py and bench/eviction.py.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from warmd import policy
from warmd.residents import State

GiB = 2**30
GPU = "cuda:0"


@dataclass(frozen=True)
class SimModel:
    name: str
    bytes: int
    load_s: float          # true seconds of a load from disk
    unpark_s: float        # true seconds back from the host tier
    parkable: bool = True


@dataclass
class Totals:
    reload_s: float = 0.0  # seconds spent bringing back models that had been resident before
    cold_s: float = 0.0    # seconds of first loads (the same for every policy)
    loads: int = 0
    unparks: int = 0
    hits: int = 0
    moves: dict[str, int] = field(default_factory=dict)


@dataclass
class _Held:
    key: int
    model: SimModel
    state: State
    last_used: float


def replay(models: list[SimModel], trace: list[tuple[float, str]], eviction: str, gpu_budget: int,
           host_budget: int = 0) -> Totals:
    """Run `trace` ((time, model name) in time order) with the `eviction` policy; returns what it cost."""
    by_name = {m.name: m for m in models}
    held: dict[str, _Held] = {}
    demand: dict[str, policy.Demand] = {}
    keys = itertools.count(1)
    totals = Totals()
    seen: set[str] = set()
    for now, name in trace:
        demand[name] = demand.get(name, policy.Demand()).used(now)
        mine = held.get(name)
        if mine is not None and mine.state is State.SERVING:
            mine.last_used = now
            totals.hits += 1
            continue
        model = by_name[name]
        want = policy.Want(name, model.bytes, (GPU,), mine.key if mine is not None else None)
        while (plan := policy.place(_snapshot(now, held, demand, gpu_budget, host_budget, eviction),
                                    want)).kind == "evict":
            for move in plan.moves:
                _carry_out(held, move, totals)
        assert plan.kind == "fits", plan
        if mine is not None:            # back from the host tier
            mine.state, mine.last_used = State.SERVING, now
            demand[name] = demand[name].measured("unpark", model.unpark_s)
            totals.unparks += 1
            totals.reload_s += model.unpark_s
            continue
        held[name] = _Held(next(keys), model, State.SERVING, now)
        demand[name] = demand[name].measured("load", model.load_s)
        totals.loads += 1
        if name in seen:
            totals.reload_s += model.load_s
        else:
            totals.cold_s += model.load_s
            seen.add(name)
    return totals


def _snapshot(now: float, held: dict[str, _Held], demand: dict[str, policy.Demand], gpu_budget: int,
              host_budget: int, eviction: str) -> policy.Snapshot:
    facts = tuple(policy.facts(h.key, name, GPU, h.state, h.model.bytes, demand[name], now,
                               last_used=h.last_used, parkable=h.model.parkable) for name, h in held.items())
    return policy.Snapshot(now, {GPU: policy.DeviceFacts(GPU, gpu_budget, gpu=True)}, facts, host_budget, eviction)


def _carry_out(held: dict[str, _Held], move: policy.Move, totals: Totals) -> None:
    totals.moves[move.action] = totals.moves.get(move.action, 0) + 1
    if move.action == "park":
        held[move.name].state = State.PARKED
    else:
        del held[move.name]


# ---- traces ---------------------------------------------------------------------------------------
def thrash() -> tuple[list[SimModel], list[tuple[float, str]], int, int]:
    """A big, slow model and four small ones requested in turn, one request a second; the GPU holds the
    big one and two small ones. LRU always finds the big one oldest when the third small one comes."""
    models = [SimModel("big", 6 * GiB, 20.0, 0.4)] + [SimModel(f"small{i}", 3 * GiB // 2, 1.5, 0.1)
                                                      for i in range(4)]
    names = [m.name for m in models]
    trace = [(float(t), names[t % len(names)]) for t in range(250)]
    return models, trace, 10 * GiB, 0


def zipf(seed: int, requests: int = 3000) -> tuple[list[SimModel], list[tuple[float, str]], int, int]:
    """Twelve models of mixed sizes and load speeds (some providers are slow to build), popularity by
    Zipf (s = 1.1) in an order unrelated to size, Poisson arrivals (2 s apart on average); a 16 GiB GPU
    budget and a 12 GiB host tier."""
    rng = random.Random(seed)
    models = []
    for i in range(12):
        size = rng.choice([GiB // 2, GiB, 2 * GiB, 4 * GiB, 8 * GiB])
        speed = rng.uniform(0.3, 2.0)              # GB/s a load from disk reaches for this model
        models.append(SimModel(f"m{i}", size, 0.5 + size / (speed * 1e9), size / 2e10))
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(models))]
    popular = rng.sample(models, len(models))
    t, trace = 0.0, []
    for _ in range(requests):
        t += rng.expovariate(0.5)
        trace.append((t, rng.choices(popular, weights)[0].name))
    return models, trace, 16 * GiB, 12 * GiB
