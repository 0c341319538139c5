"""The residency policy as pure functions: snapshots in, plans out (no threads, devices or files)."""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest

from warmd import policy
from warmd.policy import DeviceFacts, Demand, Snapshot, Want
from warmd.providers.base import Layers
from warmd.residents import TRANSITIONS, IllegalTransition, Resident, State

MB = 2**20
NOW = 10_000.0


def _r(key: int, name: str, mb: float, device: str = "cuda:0", state: State = State.SERVING,
       used_ago: float = 0.0, rate: float = 0.0, load_s: float = 1.0, unpark_s: float = 0.1,
       **rest: object) -> policy.Facts:
    return policy.Facts(key=key, name=name, device=device, state=state, bytes=int(mb * MB),
                        last_used=NOW - used_ago, rate=rate, load_s=load_s, unpark_s=unpark_s,
                        load_measured=True, unpark_measured=True, parkable=True, **rest)  # type: ignore[arg-type]


def _snap(*residents: policy.Facts, eviction: str = "cost", host_mb: float = 0, **budgets: float) -> Snapshot:
    budgets = budgets or {"cuda:0": 4}
    devices = {name.replace("_", ":"): DeviceFacts(name.replace("_", ":"), int(mb * MB), gpu=name != "cpu")
               for name, mb in budgets.items()}
    return Snapshot(NOW, devices, residents, int(host_mb * MB), eviction)


def _names(plan: policy.Plan) -> list[tuple[str, str]]:
    return [(m.action, m.name) for m in plan.moves]


def test_a_model_that_fits_goes_to_the_device_with_most_free_budget() -> None:
    snap = _snap(_r(1, "a", 1, "cuda_0".replace("_", ":")), cuda_0=3, cuda_1=2.5)
    plan = policy.place(snap, Want("new", MB, ("cuda:0", "cuda:1")))
    assert (plan.kind, plan.device) == ("fits", "cuda:1")            # 1.5 MB ... 2.5 MB free: cuda:1
    plan = policy.place(snap, Want("new", MB, ("cuda:0",)))          # cuda:N: only there
    assert (plan.kind, plan.device, plan.free) == ("fits", "cuda:0", 2 * MB)


def test_lru_evicts_the_least_recently_used_and_cost_the_cheapest_to_lose() -> None:
    old_slow = _r(1, "old-slow", 2, used_ago=60, rate=0.05, load_s=20.0)
    new_fast = _r(2, "new-fast", 2, used_ago=1, rate=0.05, load_s=0.5)
    want = Want("new", 2 * MB, ("cuda:0",))
    assert _names(policy.place(_snap(old_slow, new_fast, eviction="lru"), want)) == [("unload", "old-slow")]
    plan = policy.place(_snap(old_slow, new_fast), want)
    assert plan.kind == "evict" and _names(plan) == [("unload", "new-fast")]
    [move] = plan.moves
    assert (move.reason, move.for_model, move.policy, move.bytes) == ("evicted", "new", "cost", 2 * MB)
    assert move.back_s == 0.5 and move.measured and move.cost == pytest.approx(0.05 * 0.5 * 60)
    assert move.idle_s == 1 and "cheapest to lose" in move.why


def test_cost_breaks_ties_by_recency_and_evicts_no_more_than_needed() -> None:
    a, b = _r(1, "a", 1, used_ago=30, rate=0.01), _r(2, "b", 1, used_ago=10, rate=0.01)
    big = _r(3, "big", 2, used_ago=50, rate=0.01)
    # 1 MB free; 3 MB needed: `big` alone covers it for less than a + b together would not
    plan = policy.place(_snap(a, b, big, cuda_0=5), Want("new", 3 * MB, ("cuda:0",)))
    assert _names(plan) == [("unload", "big")]
    plan = policy.place(_snap(a, b, cuda_0=3), Want("new", 2 * MB, ("cuda:0",)))
    assert _names(plan) == [("unload", "a")]                           # equal costs: the older goes


def test_pinned_busy_and_waited_for_models_and_the_model_itself_are_never_victims() -> None:
    residents = (_r(1, "pinned", 1, pinned=True), _r(2, "busy", 1, in_flight=1), _r(3, "awaited", 1, waiters=2),
                 _r(4, "new", 1, state=State.PARKED))
    plan = policy.place(_snap(*residents), Want("new", 2 * MB, ("cuda:0",), unpark=4))
    assert plan.kind == "wait"                                         # busy ones become idle later
    assert "pinned: pinned (1.0 MiB)" in plan.message and "busy: busy (1 in flight)" in plan.message
    plan = policy.place(_snap(residents[0], cuda_0=2), Want("x", 2 * MB, ("cuda:0",)))
    assert plan.kind == "refuse"
    assert plan.message.startswith("x needs 2.0 MiB. cuda:0: 1.0 MiB free of a 2.0 MiB budget, 1.0 MiB missing")


def test_a_load_waits_while_memory_is_moving_on_the_device() -> None:
    for state in (State.LOADING, State.PARKING, State.UNPARKING, State.DRAINING, State.UNLOADING):
        plan = policy.place(_snap(_r(1, "other", 3, state=state)), Want("new", 2 * MB, ("cuda:0",)))
        assert plan.kind == "wait", state
    plan = policy.place(_snap(_r(1, "parked", 3, state=State.PARKED), cuda_0=1), Want("new", 2 * MB, ("cuda:0",)))
    assert plan.kind == "refuse"                                       # host memory does not help a device


def test_gpu_victims_are_parked_when_the_host_tier_takes_them_cpu_ones_unloaded() -> None:
    gpu = _r(1, "gpu", 2, rate=0.1)
    want = Want("new", 3 * MB, ("cuda:0",))
    assert _names(policy.place(_snap(gpu, host_mb=4), want)) == [("park", "gpu")]
    assert _names(policy.place(_snap(gpu, host_mb=1), want)) == [("unload", "gpu")]      # too big for the tier
    cpu = _r(2, "c", 2, device="cpu")
    assert _names(policy.place(_snap(cpu, host_mb=4, cpu=3), Want("new", 2 * MB, ("cpu",)))) == [("unload", "c")]


def test_host_tier_discards_lru_or_only_when_parking_saves_more() -> None:
    parked_hot = _r(1, "hot", 2, state=State.PARKED, used_ago=100, rate=1.0, load_s=10.0)
    victim = _r(2, "cold", 2, used_ago=5, rate=0.01, load_s=10.0)
    want = Want("new", 3 * MB, ("cuda:0",))
    assert _names(policy.place(_snap(parked_hot, victim, host_mb=2, eviction="lru"), want)) == [
        ("discard", "hot"), ("park", "cold")]
    # cost: dropping `hot` (1 request/s, 10 s from disk) to park `cold` (0.01/s) would be a bad trade
    assert _names(policy.place(_snap(parked_hot, victim, host_mb=2), want)) == [("unload", "cold")]
    # ... and the model coming back from the tier is never discarded for another
    back = Want("hot", 2 * MB, ("cuda:0",), unpark=1)
    assert _names(policy.place(_snap(parked_hot, victim, host_mb=2, eviction="lru", cuda_0=3), back)) == [
        ("unload", "cold")]


# A model that splits layer by layer: 1 MB stays on the host whatever is offloaded, three layers of 2, 3 and
# 3 MB (offloaded in this order), 1 MB that goes wherever the model runs: 10 MB in all. With k layers on a
# GPU it takes 10 - 1 - (what is left of the layers) there: k=3: 9 MB, k=2: 6 MB, k=1: 3 MB, k=0: 1 MB.
TOTAL = 10 * MB


def _layers(wanted: int = 3, flexible: bool = True) -> Layers:
    return Layers(sizes=(2 * MB, 3 * MB, 3 * MB), host=MB, wanted=wanted, flexible=flexible)


def _split(plan: policy.Plan) -> tuple[str, str, int, int, float, float]:
    return plan.kind, plan.device, plan.gpu_layers, plan.total_layers, plan.need / MB, plan.host_bytes / MB


def test_a_split_model_that_fits_goes_wholly_onto_the_gpu_its_host_share_onto_the_cpu() -> None:
    plan = policy.place(_snap(cuda_0=16, cpu=16), Want("m", TOTAL, ("cuda:0",), split=_layers()))
    assert _split(plan) == ("fits", "cuda:0", 3, 3, 9, 1)
    plan = policy.place(_snap(cuda_0=16, cpu=16), Want("m", TOTAL, ("cuda:0",), split=_layers(wanted=2)))
    assert _split(plan) == ("fits", "cuda:0", 2, 3, 6, 4)            # a fixed count that fits
    plan = policy.place(_snap(cpu=16), Want("m", TOTAL, ("cpu",), split=_layers()))
    assert _split(plan) == ("fits", "cpu", 0, 0, 10, 0)              # no GPU allowed: all of it on the CPU


def test_auto_takes_the_layers_that_fit_once_idle_models_are_evicted() -> None:
    # 8 MB GPU: 1 MB pinned, 2 MB idle; 5 MB free, 7 MB once the idle model goes: two layers (6 MB)
    residents = (_r(1, "pinned", 1, pinned=True), _r(2, "idle", 2, used_ago=5))
    plan = policy.place(_snap(*residents, cuda_0=8, cpu=16), Want("m", TOTAL, ("cuda:0",), split=_layers()))
    assert _split(plan) == ("evict", "cuda:0", 2, 3, 6, 4) and _names(plan) == [("unload", "idle")]
    # on two GPUs it takes the one with the most room after evictions, not the one with most free now
    residents = (_r(1, "idle", 4, device="cuda:1"),)
    plan = policy.place(_snap(*residents, cuda_0=4, cuda_1=7, cpu=16),
                        Want("m", TOTAL, ("cuda:0", "cuda:1"), split=_layers()))
    assert _split(plan) == ("evict", "cuda:1", 2, 3, 6, 4) and _names(plan) == [("unload", "idle")]


def test_not_one_layer_fitting_runs_it_on_the_cpu_and_a_fixed_count_must_fit() -> None:
    plan = policy.place(_snap(cuda_0=2, cpu=16), Want("m", TOTAL, ("cuda:0",), split=_layers()))
    assert _split(plan) == ("fits", "cpu", 0, 3, 10, 0)
    plan = policy.place(_snap(cuda_0=8, cpu=16), Want("m", TOTAL, ("cuda:0",), split=_layers(flexible=False)))
    assert plan.kind == "refuse" and plan.moves == () and plan.gpu_layers == 3
    assert plan.message.startswith("3 of 3 layers on a GPU (or offload fewer layers): m needs 9.0 MiB. cuda:0:")


def test_the_host_share_is_placed_on_the_cpu_budget_with_the_gpu_share() -> None:
    cpu_idle = _r(1, "cpu-idle", 3, device="cpu", used_ago=5)
    plan = policy.place(_snap(cpu_idle, cuda_0=16, cpu=3), Want("m", TOTAL, ("cuda:0",), split=_layers()))
    assert _split(plan) == ("evict", "cuda:0", 3, 3, 9, 1) and _names(plan) == [("unload", "cpu-idle")]
    # fewer layers would only need more host memory: no room on the CPU is a refusal, not a smaller split
    plan = policy.place(_snap(_r(1, "cpu-pinned", 3, device="cpu", pinned=True), cuda_0=16, cpu=3),
                        Want("m", TOTAL, ("cuda:0",), split=_layers()))
    assert plan.kind == "refuse" and "cpu: 0 B free of a 3.0 MiB budget" in plan.message
    # what resident split models hold on the host counts there
    snap = _snap(_r(1, "split", 6, host_bytes=4 * MB), cuda_0=8, cpu=16)
    assert (snap.used("cpu"), snap.used("cuda:0"), snap.free("cpu")) == (4 * MB, 6 * MB, 12 * MB)
    assert policy.place(snap, Want("x", 13 * MB, ("cpu",))).kind == "refuse"


def test_a_flexible_split_waits_for_busy_models_then_takes_what_fits_now() -> None:
    busy = _r(1, "busy", 4, in_flight=1)
    want = Want("m", TOTAL, ("cuda:0",), split=_layers())
    plan = policy.place(_snap(busy, cuda_0=12, cpu=16), want)       # 8 MB free now, 9 MB once busy is idle
    assert plan.kind == "wait" and plan.message.startswith("3 of 3 layers on a GPU: m needs 9.0 MiB")
    plan = policy.place(_snap(busy, cuda_0=12, cpu=16), replace(want, patient=False))
    assert _split(plan) == ("fits", "cuda:0", 2, 3, 6, 4)
    fixed = replace(want, split=_layers(flexible=False), patient=False)
    assert policy.place(_snap(busy, cuda_0=12, cpu=16), fixed).kind == "wait"   # a fixed count keeps waiting


def test_trim_evicts_until_the_budget_holds_and_says_when_it_cannot() -> None:
    fresh, idle = _r(1, "fresh", 3, used_ago=0), _r(2, "idle", 2, used_ago=9)
    assert [m.name for m in policy.trim(_snap(fresh, idle), "cuda:0", "fresh")] == ["idle"]
    assert policy.trim(_snap(fresh, _r(2, "busy", 2, in_flight=1)), "cuda:0", "fresh") is None
    assert policy.trim(_snap(idle), "cuda:0", "idle") == ()


def test_expiry_unloads_idle_models_past_keep_alive_and_discards_parked_ones() -> None:
    residents = (_r(1, "due", 1, expires_at=NOW - 1, used_ago=301), _r(2, "later", 1, expires_at=NOW + 5),
                 _r(3, "never", 1, expires_at=0), _r(4, "busy", 1, expires_at=NOW - 1, in_flight=1),
                 _r(5, "parked", 1, state=State.PARKED, expires_at=NOW - 1))
    moves = policy.expire(_snap(*residents))
    assert [(m.action, m.name, m.reason) for m in moves] == [("unload", "due", "keep_alive"),
                                                             ("discard", "parked", "keep_alive")]
    assert moves[0].why == "idle 301 s, past its keep_alive"


def test_pressure_relief_frees_the_reserve_unless_our_own_memory_is_moving() -> None:
    old, new = _r(1, "old", 1, used_ago=50), _r(2, "new", 1, used_ago=1)
    tight = {"cuda:0": DeviceFacts("cuda:0", 4 * MB, reserve=MB, gpu=True, driver_free=MB // 2)}
    snap = Snapshot(NOW, tight, (old, new), eviction="lru")
    assert [(m.name, m.reason) for m in policy.relieve(snap)] == [("old", "pressure")]
    moving = Snapshot(NOW, tight, (old, new, _r(3, "going", 1, state=State.UNLOADING)))
    assert policy.relieve(moving) == ()
    calm = {"cuda:0": DeviceFacts("cuda:0", 4 * MB, reserve=MB, gpu=True, driver_free=2 * MB)}
    assert policy.relieve(Snapshot(NOW, calm, (old, new))) == ()


def test_room_for_counts_only_other_pinned_models() -> None:
    snap = _snap(_r(1, "pin", 1, pinned=True), _r(2, "idle", 2), _r(3, "me", 1, pinned=True), cuda_0=4, cuda_1=3)
    assert policy.room_for(snap, ["cuda:0", "cuda:1"], "me") == 3 * MB


def test_demand_decays_by_half_life_and_learns_measured_costs() -> None:
    d = Demand().used(0.0).used(0.0)
    assert d.rate(policy.HALF_LIFE_S) == pytest.approx(d.rate(0.0) / 2)
    assert d.rate(0.0) == pytest.approx(2 * math.log(2) / policy.HALF_LIFE_S)
    assert d.load_cost(2 * 10**9) == (policy.LOAD_OVERHEAD_S + 2.0, False)       # estimated from bytes
    d = d.measured("load", 4.0).measured("load", 2.0)
    assert d.load_cost(2 * 10**9) == (3.0, True)
    assert d.unpark_cost(2 * 10**10) == (1.0, False)


def test_every_transition_not_in_the_table_is_refused() -> None:
    assert all(to.holds_device or to.holds_host or to is State.GONE for to in State)
    assert State.PARKED.holds_host and not State.PARKED.holds_device
    assert State.UNPARKING.holds_host and State.UNPARKING.holds_device
    for start in State:
        for to in State:
            r = Resident(spec=SimpleNamespace(name="m", memory=None), device="cuda:0", estimated_bytes=1,  # type: ignore[arg-type]
                         keep_alive=1, state=start)
            if to in TRANSITIONS[start]:
                r.move(to)
                assert r.state is to
            else:
                with pytest.raises(IllegalTransition):
                    r.move(to)
                assert r.state is start
