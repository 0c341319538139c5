"""The residency rules, exercised on the real Catalog and Scheduler with a recording provider."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from waiting import wait_until
from warmd.catalog import Catalog
from warmd.devices import Device
from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.providers.base import InferRequest, InferResult, Provider
from warmd.scheduler import Scheduler
from warmd.store import Store


class Recording(Provider):
    """Loads take options.load_s; `value` identifies the loaded version; options.fail makes load fail."""

    name = "recording"
    options_schema = {"type": "object"}
    parkable = True
    log: list[tuple[str, str, object]] = []
    placed: dict[str, str] = {}

    @classmethod
    def estimate(cls, spec, files):  # type: ignore[no-untyped-def]
        return spec.options.get("estimate", 1000)

    def load(self) -> int:
        time.sleep(self.spec.options.get("load_s", 0))
        if self.spec.options.get("fail"):
            raise WarmdError(Code.PROVIDER_FAILED, "told to fail")
        Recording.log.append(("load", self.spec.name, self.spec.options.get("value")))
        Recording.placed[self.spec.name] = self.device
        # "measured": what the spec's options say it really took (default: the estimate)
        return self.spec.options.get("measured", self.spec.memory or self.estimate(self.spec, self.files))

    def infer(self, request: InferRequest) -> InferResult:
        time.sleep(request.parameters.get("hold_s", 0))
        return InferResult(json=self.spec.options.get("value"))

    def unload(self) -> None:
        Recording.log.append(("unload", self.spec.name, self.spec.options.get("value")))

    def to_host(self) -> None:
        time.sleep(self.spec.options.get("move_s", 0))
        Recording.log.append(("to_host", self.spec.name, self.spec.options.get("value")))

    def to_device(self) -> None:
        time.sleep(self.spec.options.get("move_s", 0))
        Recording.log.append(("to_device", self.spec.name, self.spec.options.get("value")))


def make_world(tmp_path: Path, inventory: dict[str, Device] | None = None,  # type: ignore[no-untyped-def]
               host_tier: int = 0, **options: object):
    Recording.log, Recording.placed = [], {}
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "w").write_bytes(b"")
    bus = EventBus()
    catalog = Catalog(specs, [specs], {"recording": Recording}, bus)
    catalog.rescan()
    inventory = inventory or {"cpu": Device("cpu", 2**40, 2**40, torch_device="cpu")}
    scheduler = Scheduler(catalog, Store(tmp_path / "data", bus), {"recording": Recording}, bus, 300.0,
                          inventory, host_tier, **options)  # type: ignore[arg-type]
    scheduler.start()

    def write(name: str, **options: object) -> None:
        top = {"device": "cpu", **options.pop("_top", {})}  # type: ignore[dict-item]
        extra = "".join(f"\n{k}: {v}" for k, v in top.items())
        opts = ", ".join(f"{k}: {v}" for k, v in options.items())
        (specs / f"{name}.yaml").write_text(
            f"provider: recording\nsource: {{path: w}}\noptions: {{{opts}}}{extra}\n")
        catalog.rescan()

    return catalog, scheduler, write, specs, bus


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    made = make_world(tmp_path)
    yield made
    made[1].shutdown(5)


def _use(scheduler: Scheduler, name: str, hold_s: float = 0.0) -> object:
    with scheduler.acquire(name) as resident:
        return resident.provider.infer(InferRequest(parameters={"hold_s": hold_s})).json


def test_concurrent_requests_share_one_load(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("m", value=1, load_s=0.3)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(_use(scheduler, "m"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 8
    assert [e for e in Recording.log if e[0] == "load"] == [("load", "m", 1)]


def test_unload_waits_for_in_flight_request(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("m", value=1)
    _use(scheduler, "m")
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (_use(scheduler, "m", hold_s=0.5), finished.set()))
    worker.start()
    wait_until(lambda: scheduler.view("m").resident and scheduler.view("m").resident.in_flight == 1)
    scheduler.unload("m")
    assert ("unload", "m", 1) not in Recording.log      # not under the running request
    worker.join()
    assert finished.is_set()
    wait_until(lambda: scheduler.view("m").state == "available")    # "unloading" while the provider unloads
    assert ("unload", "m", 1) in Recording.log


def test_keep_alive_expiry_and_pin(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("short", value=1, _top={"keep_alive": "300ms"})
    write("pinned", value=2, _top={"keep_alive": "300ms", "pin": "true"})
    _use(scheduler, "short")
    _use(scheduler, "pinned")
    wait_until(lambda: ("unload", "short", 1) in Recording.log, timeout=3)
    time.sleep(0.5)
    assert ("unload", "pinned", 2) not in Recording.log
    assert scheduler.view("pinned").state == "ready"


def test_keep_alive_zero_unloads_when_idle(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("m", value=1, _top={"keep_alive": 0})
    assert _use(scheduler, "m") == 1
    wait_until(lambda: ("unload", "m", 1) in Recording.log, timeout=3)


def test_edit_reloads_while_old_version_serves(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("m", value=1)
    assert _use(scheduler, "m") == 1
    write("m", value=2, load_s=0.6)              # reload starts in the background
    time.sleep(0.2)
    assert scheduler.view("m").state == "ready"
    assert _use(scheduler, "m") == 1              # old version still answers during the reload
    wait_until(lambda: _use(scheduler, "m") == 2)
    wait_until(lambda: ("unload", "m", 1) in Recording.log)


def test_failed_reload_leaves_old_version_serving(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, _, bus = world
    sub = bus.subscribe(kinds=["model.failed"])
    write("m", value=1)
    assert _use(scheduler, "m") == 1
    write("m", value=2, fail="true")
    event = sub.get(timeout=5)
    assert event is not None and event.error_code == "provider_failed"
    assert _use(scheduler, "m") == 1
    assert ("unload", "m", 1) not in Recording.log


def test_removed_spec_unloads_after_in_flight(world) -> None:  # type: ignore[no-untyped-def]
    catalog, scheduler, write, specs, _ = world
    write("m", value=1)
    _use(scheduler, "m")
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_use(scheduler, "m", hold_s=0.5)))
    worker.start()
    wait_until(lambda: scheduler.view("m").resident and scheduler.view("m").resident.in_flight == 1)
    (specs / "m.yaml").unlink()
    catalog.rescan()
    with pytest.raises(WarmdError) as info:
        _use(scheduler, "m")
    assert info.value.code is Code.MODEL_NOT_FOUND
    assert ("unload", "m", 1) not in Recording.log
    worker.join()
    assert result == [1]
    wait_until(lambda: ("unload", "m", 1) in Recording.log)


def test_load_failure_is_reported_with_its_code(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("m", fail="true")
    with pytest.raises(WarmdError) as info:
        _use(scheduler, "m")
    assert info.value.code is Code.PROVIDER_FAILED
    view = scheduler.view("m")
    assert view.state == "failed" and view.error.code is Code.PROVIDER_FAILED


def test_request_waiting_on_a_load_follows_a_spec_edit(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, *_ = world
    write("m", value=1, load_s=0.6)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_use(scheduler, "m")))
    worker.start()
    time.sleep(0.2)                  # the first load is under way
    write("m", value=2)              # edited before it finished: that load must not serve
    worker.join(timeout=10)
    assert result == [2]
    assert ("unload", "m", 1) in Recording.log


def test_a_load_is_a_job_that_can_be_cancelled(world) -> None:  # type: ignore[no-untyped-def]
    _, scheduler, write, _, bus = world
    write("m", value=1, load_s=0.6)
    job, future = scheduler.start_load("m")
    assert [(j.id, j.kind, j.model) for j in scheduler.jobs.running()] == [(job.id, "load", "m")]
    wait_until(lambda: job.last is not None and job.last.phase == "load")    # the provider is loading
    events = scheduler.jobs.follow(job)       # joins late: what the job published so far comes first
    assert [events.get(timeout=2).kind for _ in range(2)] == ["model.loading", "job.progress"]
    scheduler.jobs.cancel(job.id)
    with pytest.raises(WarmdError) as info:
        future.result(timeout=5)
    assert info.value.code is Code.CANCELLED
    assert Recording.log == [("load", "m", 1), ("unload", "m", 1)]   # stopped after the provider's load
    kinds = [e.kind for e in iter(lambda: events.get(timeout=0.5), None)]
    assert kinds[-1] == "model.failed" and "model.loaded" not in kinds
    events.close()
    view = scheduler.view("m")
    assert view.state == "available" and view.resident is None      # a cancel is not a failure
    assert scheduler.jobs.running() == []
    with pytest.raises(WarmdError) as info:
        scheduler.jobs.cancel(job.id)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert _use(scheduler, "m") == 1                                  # the next load works


def test_max_keep_alive_caps_what_requests_ask_and_pins_win(tmp_path: Path) -> None:
    _, scheduler, write, _, _ = make_world(tmp_path, max_keep_alive=0.3)
    try:
        write("m", value=1)
        write("p", value=2, _top={"pin": "true"})
        with scheduler.acquire("m", keep_alive=-1) as resident:       # forever: over any cap
            assert resident.keep_alive == 0.3
        with scheduler.acquire("p", keep_alive=0) as resident:
            assert resident.expires_at == 0.0                         # pinned: never expires
        _, future = scheduler.start_load("m", keep_alive=3600)
        assert future.result().keep_alive == 0.3
        wait_until(lambda: ("unload", "m", 1) in Recording.log, timeout=3)
        time.sleep(0.5)
        assert scheduler.view("p").state == "ready"
    finally:
        scheduler.shutdown(5)


def test_a_catalog_override_applies_like_an_edit_and_goes_with_its_spec(world) -> None:  # type: ignore[no-untyped-def]
    catalog, scheduler, write, specs, _ = world
    write("m", value=1)
    _use(scheduler, "m")
    first = scheduler.view("m").resident
    assert first is not None
    catalog.override("m", {"max_batch": 16})               # not part of the signature: applies at once
    assert catalog.get("m").max_batch == 16 and scheduler.view("m").resident is first
    assert scheduler.view("m").resident.spec.max_batch == 16
    catalog.override("m", {"precision": "fp16"})           # part of it: a reload, the file's max_batch again
    wait_until(lambda: scheduler.view("m").resident is not first and scheduler.view("m").state == "ready")
    assert catalog.get("m").max_batch == 1 and catalog.get("m").precision == "fp16"
    assert catalog.overrides("m") == {"precision": "fp16"}
    (specs / "m.yaml").unlink()
    catalog.rescan()
    write("m", value=2)                                    # a new spec of the same name starts clean
    assert catalog.overrides("m") == {} and catalog.get("m").precision == "fp32"
