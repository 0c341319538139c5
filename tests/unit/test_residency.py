"""The memory policy on simulated devices: budgets, LRU eviction, pins, busy models, placement,
external pressure, and requests to resident models while another model loads."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from test_scheduler import Recording, _use, make_world
from waiting import wait_until
from warmd.devices import Device
from warmd.errors import Code, WarmdError

MB = 2**20


def _gpu(name: str, total: int, budget: int, reserve: int = 0) -> Device:
    return Device(name, total, budget, reserve=reserve, torch_device="cpu", simulated=True)


@pytest.fixture
def sim(tmp_path: Path):  # type: ignore[no-untyped-def]
    """cpu (4 MB budget), cuda:0 (3 MB budget), cuda:1 (2 MB budget)."""
    inventory = {"cpu": Device("cpu", 64 * MB, 4 * MB, torch_device="cpu"),
                 "cuda:0": _gpu("cuda:0", 8 * MB, 3 * MB), "cuda:1": _gpu("cuda:1", 8 * MB, 2 * MB)}
    made = make_world(tmp_path, inventory)
    yield (*made, inventory)
    made[1].shutdown(5)


def _model(write, name: str, mb: float, device: str = "cuda:0", **top: object) -> None:  # type: ignore[no-untyped-def]
    write(name, value=name, _top={"device": device, "memory": int(mb * MB), **top})


def _unloaded(name: str) -> bool:
    return ("unload", name, name) in Recording.log


def test_lru_idle_model_is_evicted_to_make_room(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, _, bus, _ = sim
    for name in ("a", "b", "c"):
        _model(write, name, 1)
        _use(scheduler, name)
    _use(scheduler, "a")                         # b is now the least recently used
    events = bus.subscribe(kinds=["model.unloaded"])
    _model(write, "d", 1)
    assert _use(scheduler, "d") == "d"
    wait_until(lambda: _unloaded("b"))
    assert not _unloaded("a") and not _unloaded("c")
    event = events.get(timeout=2)
    assert event.model == "b" and event.reason == "evicted"
    assert {r.spec.name for r in scheduler.resident()} == {"a", "c", "d"}


def test_a_busy_model_is_not_evicted_under_its_request(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "busy", 2)
    _use(scheduler, "busy")
    worker = threading.Thread(target=lambda: _use(scheduler, "busy", hold_s=1.0))
    worker.start()
    wait_until(lambda: scheduler.view("busy").resident.in_flight == 1)
    _model(write, "new", 2)
    t0 = time.monotonic()
    assert _use(scheduler, "new") == "new"      # waited for the request, then evicted the idle model
    assert time.monotonic() - t0 >= 0.5
    worker.join()
    assert Recording.log.index(("unload", "busy", "busy")) > 0


def test_insufficient_memory_names_what_is_missing_and_what_is_pinned(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "pinned", 2, pin="true")
    _use(scheduler, "pinned")
    _model(write, "big", 2)
    t0 = time.monotonic()
    with pytest.raises(WarmdError) as info:       # nothing busy, nothing loading: no reason to wait
        _use(scheduler, "big")
    assert time.monotonic() - t0 < 1.0
    err = info.value
    assert err.code is Code.INSUFFICIENT_MEMORY
    assert "big needs 2.0 MiB" in err.message and "1.0 MiB missing" in err.message
    assert "pinned: pinned (2.0 MiB)" in err.message and "busy: none" in err.message
    assert not _unloaded("pinned")


def test_budget_never_exceeded_when_measured_exceeds_estimate(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "a", 1)
    _use(scheduler, "a")
    write("liar", value="liar", estimate=MB, measured=int(2.5 * MB), _top={"device": "cuda:0"})
    _use(scheduler, "liar")                       # estimated 1 MB, measured 2.5 MB: a must go
    wait_until(lambda: scheduler.view("a").state == "available")    # a counts until its provider unloaded it
    assert _unloaded("a")
    [(device, used, _)] = [u for u in scheduler.device_usage() if u[0].name == "cuda:0"]
    assert used <= device.budget


def test_auto_places_on_the_gpu_with_most_free_budget_and_cuda_n_pins(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "first", 1.5, device="auto")
    _use(scheduler, "first")
    assert scheduler.view("first").resident.device == "cuda:0"      # 3 MB free beats 2 MB
    _model(write, "second", 1.5, device="auto")
    _use(scheduler, "second")
    assert scheduler.view("second").resident.device == "cuda:1"     # 2 MB free beats 1.5 MB
    _model(write, "there", 0.5, device="cuda:1")
    _use(scheduler, "there")
    assert scheduler.view("there").resident.device == "cuda:1"
    assert Recording.placed["there"] == "cpu"                       # simulated: tensors stay on the host
    _model(write, "nowhere", 1, device="cuda:7")
    with pytest.raises(WarmdError) as info:
        _use(scheduler, "nowhere")
    assert info.value.code is Code.DEVICE_UNAVAILABLE


def test_external_pressure_evicts_idle_models_until_the_reserve_is_back(tmp_path: Path) -> None:
    gpu = _gpu("cuda:0", 8 * MB, 6 * MB, reserve=1 * MB)
    catalog, scheduler, write, _, bus = make_world(tmp_path, {"cpu": Device("cpu", 64 * MB, 4 * MB,
                                                                              torch_device="cpu"), "cuda:0": gpu})
    try:
        for name in ("old", "new"):
            _model(write, name, 2)
            _use(scheduler, name)
        events = bus.subscribe(kinds=["model.unloaded"])
        gpu.external = 4 * MB + MB // 2          # another program takes 4.5 MB: free = 8 - 4.5 - 4 < 1 MB reserve
        event = events.get(timeout=3)
        assert event is not None and event.model == "old" and event.reason == "pressure"
        time.sleep(0.6)
        assert not _unloaded("new")              # one eviction restored the reserve
    finally:
        scheduler.shutdown(5)


def test_resident_model_answers_while_another_loads(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "fast", 1)
    _use(scheduler, "fast")
    write("slow", value="slow", load_s=1.5, _top={"device": "cuda:1", "memory": MB})
    loader = threading.Thread(target=lambda: _use(scheduler, "slow"))
    loader.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    for _ in range(20):
        assert _use(scheduler, "fast") == "fast"
    assert time.monotonic() - t0 < 0.5
    loader.join()


def test_runtime_pin_and_unpin(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "a", 2, keep_alive="300ms")
    _use(scheduler, "a")
    scheduler.pin("a", True)
    time.sleep(0.7)
    assert not _unloaded("a")                    # pinned: keep_alive does not apply
    scheduler.pin("a", False)
    wait_until(lambda: _unloaded("a"), timeout=3)


def _host_world(tmp_path: Path, host_tier: int):  # type: ignore[no-untyped-def]
    return make_world(tmp_path, {"cpu": Device("cpu", 64 * MB, 4 * MB, torch_device="cpu"),
                                 "cuda:0": _gpu("cuda:0", 8 * MB, 3 * MB)}, host_tier=host_tier)


def test_host_tier_round_trip(tmp_path: Path) -> None:
    _, scheduler, write, _, bus = _host_world(tmp_path, host_tier=4 * MB)
    try:
        _model(write, "a", 2)
        _model(write, "b", 2)
        events = bus.subscribe(kinds=["model.parked", "model.unparked", "model.unloaded"])
        assert _use(scheduler, "a") == "a"
        assert _use(scheduler, "b") == "b"        # a does not fit beside b: parked, not unloaded
        parked = events.get(timeout=3)
        assert (parked.kind, parked.model, parked.reason) == ("model.parked", "a", "evicted")
        assert scheduler.view("a").resident.tier == "host"
        assert _use(scheduler, "a") == "a"        # back: b is parked for it, a comes from host memory
        kinds = [(e.kind, e.model) for e in (events.get(timeout=3), events.get(timeout=3))]
        assert sorted(kinds) == [("model.parked", "b"), ("model.unparked", "a")]
        loads = [entry for entry in Recording.log if entry[0] == "load"]
        assert loads == [("load", "a", "a"), ("load", "b", "b")]       # never loaded from disk twice
        assert ("to_device", "a", "a") in Recording.log and not _unloaded("a") and not _unloaded("b")
        [(gpu, used, _)] = [u for u in scheduler.device_usage() if u[0].name == "cuda:0"]
        assert used == 2 * MB                      # only a counts on the GPU; b sits in the host tier
    finally:
        scheduler.shutdown(5)
    assert _unloaded("a") and _unloaded("b")       # shutdown unloads parked models too


def test_host_tier_is_lru_within_its_own_budget(tmp_path: Path) -> None:
    _, scheduler, write, _, _ = _host_world(tmp_path, host_tier=2 * MB)
    try:
        for name in ("a", "b", "c"):
            _model(write, name, 2)
            _use(scheduler, name)                  # each load parks the previous one
        wait_until(lambda: _unloaded("a"))         # the host tier holds one: a (the oldest) is unloaded
        wait_until(lambda: scheduler.view("b").resident.tier == "host")   # its park lands
        assert not _unloaded("b")
    finally:
        scheduler.shutdown(5)


def test_requests_wait_for_a_park_in_progress_then_bring_it_back(tmp_path: Path) -> None:
    _, scheduler, write, _, _ = _host_world(tmp_path, host_tier=4 * MB)
    try:
        write("a", value="a", move_s=0.5, _top={"device": "cuda:0", "memory": 2 * MB})
        _model(write, "b", 2)
        _use(scheduler, "a")
        outcome: list[object] = []

        def use_b() -> None:
            try:
                outcome.append(_use(scheduler, "b"))
            except WarmdError as err:
                outcome.append(err.code)

        loader = threading.Thread(target=use_b)
        loader.start()
        wait_until(lambda: scheduler.view("a").resident is not None and scheduler.view("a").resident.moving)
        assert _use(scheduler, "a") == "a"         # waited for the park, then brought it back
        loader.join()
        assert outcome == ["b"]                    # a's return waited for b's load instead of failing
        moves = [e[0] for e in Recording.log if e[1] == "a"]
        # b, loading after a's return, may park a again once a's request is done: never a disk load
        assert moves[:3] == ["load", "to_host", "to_device"] and moves[3:] in ([], ["to_host"])
    finally:
        scheduler.shutdown(5)


class _Watched(Device):
    """A simulated GPU that checks, each time its driver is asked, that the scheduler's lock is free."""

    scheduler = None
    under_lock = 0

    def free_outside(self, ours: int) -> int | None:
        lock = self.scheduler._lock                     # type: ignore[union-attr]
        if lock.acquire(timeout=2):     # held by this very thread, it would never come free
            lock.release()
        else:
            _Watched.under_lock += 1
        return super().free_outside(ours)


def test_the_driver_is_never_asked_under_the_lock(tmp_path: Path) -> None:
    gpu = _Watched("cuda:0", 8 * MB, 3 * MB, reserve=MB, torch_device="cpu", simulated=True)
    _, scheduler, write, _, _ = make_world(tmp_path, {"cpu": Device("cpu", 64 * MB, 4 * MB, torch_device="cpu"),
                                                      "cuda:0": gpu})
    _Watched.scheduler, _Watched.under_lock = scheduler, 0
    try:
        for name in ("a", "b", "c"):
            _model(write, name, 1.5)
            _use(scheduler, name)                       # placements, evictions, trims
        time.sleep(3 * 0.25)                            # the reaper's pressure checks
        scheduler.device_usage()
        assert _unloaded("a") or _unloaded("b")
        assert _Watched.under_lock == 0
    finally:
        scheduler.shutdown(5)


def test_every_eviction_is_logged_with_its_figures_and_its_events_carry_them(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, _, bus, _ = sim
    for name in ("a", "b", "c"):
        _model(write, name, 1)
        _use(scheduler, name)
    events = bus.subscribe(kinds=["model.unload"])
    _model(write, "d", 1)
    _use(scheduler, "d")
    [(when, move)] = scheduler.evictions()
    assert (move.name, move.action, move.reason, move.for_model, move.policy) == ("a", "unload", "evicted", "d",
                                                                                   "cost")
    assert move.bytes == MB and move.device == "cuda:0" and move.rate > 0 and move.idle_s >= 0
    assert move.measured and "cheapest to lose" in move.why and abs(when - time.time()) < 5
    unloading, unloaded = events.get(timeout=2), events.get(timeout=2)
    for event in (unloading, unloaded):
        assert event.eviction.model == "a" and event.eviction.for_model == "d"
        assert event.eviction.message == move.why and event.eviction.back_s == move.back_s
    assert scheduler.evictions("b") == []


def test_a_dry_run_says_what_a_load_would_evict_and_does_nothing(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    for name in ("a", "b", "c"):
        _model(write, name, 1)
        _use(scheduler, name)
    _model(write, "d", 2)
    before = list(Recording.log)
    run = scheduler.plan_load("d")
    assert (run.action, run.device, run.need, run.free) == ("load", "cuda:0", 2 * MB, 0)
    assert [(m.action, m.name) for m in run.moves] == [("unload", "a"), ("unload", "b")]
    assert "loads it onto cuda:0 (2.0 MiB; 0 B free) after: unload a (1.0 MiB); unload b" in run.message
    assert Recording.log == before and scheduler.evictions() == []
    assert {r.spec.name for r in scheduler.resident()} == {"a", "b", "c"}
    assert scheduler.plan_load("a").action == "resident"
    _model(write, "huge", 4)
    with pytest.raises(WarmdError) as info:
        scheduler.plan_load("huge")
    assert info.value.code is Code.INSUFFICIENT_MEMORY


def test_measured_load_times_decide_what_is_evicted(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    write("slow", value="slow", load_s=0.5, _top={"device": "cuda:0", "memory": MB})
    _use(scheduler, "slow")                         # the least recently used, but 0.5 s to load again
    for name in ("fast", "other"):
        _model(write, name, 1)
        _use(scheduler, name)
    _model(write, "new", 1)
    _use(scheduler, "new")
    wait_until(lambda: _unloaded("fast"))
    assert not _unloaded("slow")
    [(_, move)] = scheduler.evictions()
    assert move.name == "fast" and move.measured and move.back_s < 0.5


def test_lru_setting_evicts_by_recency_alone(tmp_path: Path) -> None:
    inventory = {"cpu": Device("cpu", 64 * MB, 4 * MB, torch_device="cpu"), "cuda:0": _gpu("cuda:0", 8 * MB, 3 * MB)}
    _, scheduler, write, _, _ = make_world(tmp_path, inventory, eviction="lru")
    try:
        write("slow", value="slow", load_s=0.5, _top={"device": "cuda:0", "memory": MB})
        _use(scheduler, "slow")
        for name in ("fast", "other", "new"):
            _model(write, name, 1)
            _use(scheduler, name)
        wait_until(lambda: _unloaded("slow"))
        assert [m.policy for _, m in scheduler.evictions()] == ["lru"]
    finally:
        scheduler.shutdown(5)


def test_a_load_waiting_for_memory_stops_at_once_when_cancelled(sim) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = sim
    _model(write, "busy", 2)
    _use(scheduler, "busy")
    worker = threading.Thread(target=lambda: _use(scheduler, "busy", hold_s=3.0))
    worker.start()
    wait_until(lambda: scheduler.view("busy").resident.in_flight == 1)
    _model(write, "new", 2)
    job, future = scheduler.start_load("new")
    assert scheduler.plan_load("new").action == "loading"
    time.sleep(0.3)                                  # waiting for `busy` to finish its request
    t0 = time.monotonic()
    scheduler.jobs.cancel(job.id)
    with pytest.raises(WarmdError) as info:
        future.result(timeout=5)
    assert info.value.code is Code.CANCELLED and time.monotonic() - t0 < 1.0
    assert ("load", "new", "new") not in Recording.log and not _unloaded("busy")
    worker.join()
