"""Residency, carried out: the one place that decides which models are loaded, when they load, and when
they go. The decisions are the pure policy's (policy.py); this module keeps the ledger of residents (each
in one state of residents.py's machine) and carries the policy's plans out on threads.

Rules held here (with policy.py):
- one load per model at a time (single-flight): concurrent requests wait on the same load;
- a model with requests in flight is never unloaded under them: it is retired (DRAINING, no new requests)
  and unloaded when its last request returns;
- an edited spec reloads in the background; the old version serves until the new one is ready, and a
  failed reload leaves the old version serving;
- a removed spec's model is retired, and so is one whose provider is gone (its runner process died);
- an idle model is unloaded once its keep_alive has passed, unless pinned (-1 = forever, 0 = at once);
  what a request or a load asks for is capped by `max_keep_alive`; pins always win;
- memory is counted in bytes per device (measured after a load, estimated before it) and never exceeds
  the device's budget: a load that does not fit evicts idle, unpinned models on the device (cost-aware or
  LRU, see policy.py), and fails with `insufficient_memory` when even that is not enough;
- `device: auto` (and `cuda`) places a model on the GPU with the most free budget, else the CPU;
- when a GPU's free memory falls under its reserve because another program grew, idle models are evicted
  until the reserve is back;
- a model evicted from a GPU is parked in pinned host memory when the host tier has room, so bringing it
  back is a host-to-device copy, not a disk read;
- a model that splits layer by layer (llama-cpp, `Provider.layers`) is placed by the policy as a GPU share
  and a host share (counted on the CPU); a load that waited its bound for room for all its layers asks
  again impatiently, and an `n_gpu_layers: auto` model then takes the layers that fit (policy.py).

How: each decision is one pass — sample the devices (NVML) outside the lock, then under the lock snapshot
the ledger, ask the policy, and commit its plan (state transitions, reservations, events, threads
started). The slow work (store, provider loads, copies, unloads) runs on threads outside the lock; requests
for resident models take the lock only to count themselves in and out, so a load never blocks requests
for other models. Every load is a job (jobs.py): `CancelJob` stops it at its next step. Load and unpark
durations are measured and requests counted (policy.Demand) for the policy's costs. Every eviction, park,
discard, expiry and pressure relief is kept in a bounded log (`evictions`) with the figures it was
decided on, which its events also carry (`Event.eviction`).

Events: model.loading, model.loaded, model.failed, model.unloading, model.unloaded (reason: request,
spec_changed, spec_removed, keep_alive, evicted, pressure, removed, profile, shutdown, exited), model.parked,
model.unparked, model.pinned, model.unpinned, and job.progress for each load phase.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Mapping

from warmd import devices, policy
from warmd.catalog import Catalog
from warmd.devices import Device
from warmd.errors import Code, WarmdError, WouldWait, at_boundary
from warmd.events import EventBus
from warmd.jobs import Job, Jobs
from warmd.policy import Demand, Move
from warmd.providers import Provider
from warmd.providers.base import Layers
from warmd.residents import Resident, State
from warmd.spec import ModelSpec
from warmd.store import Store
from warmd.store.sources import handler
from warmd.units import format_size
from warmd.v1 import warmd_pb2 as pb

__all__ = ["DryRun", "ModelView", "Resident", "Scheduler", "State", "eviction_proto"]
log = logging.getLogger(__name__)
REAP_INTERVAL_S = 0.25
EVICT_WAIT_S = 30.0      # how long a load waits for busy models and for work under way to free memory
WAIT_POLL_S = 0.25       # a waiting load looks again (devices, cancellation) at least this often
LOG_SIZE = 256           # evictions kept for `warm ps --history`
_LEAVING = (State.DRAINING, State.UNLOADING, State.DISCARDING)
_MOVING_OUT = (State.PARKING, *_LEAVING)
_NO_DEMAND = Demand()    # a model not asked for yet (Demand is frozen: one instance serves every lookup)


class _StaleLoad(WarmdError):
    """A load finished after its spec changed or went away; waiters look the model up again."""


@dataclass(eq=False)
class _Slot:
    current: Resident | None = None     # the version requests get: SERVING, PARKING, PARKED or UNPARKING
    loading: Future | None = None
    loading_signature: str = ""
    job: Job | None = None
    error: WarmdError | None = None
    waiters: int = 0        # requests waiting for a load; keep-alive and eviction leave the model to them


@dataclass(frozen=True)
class ModelView:
    """What the API shows about one model."""

    state: str                       # available | loading | ready | unloading | failed
    resident: Resident | None
    error: WarmdError | None
    pinned: bool | None = None       # `warm pin`/`unpin` over the spec's pin (None: the spec decides)


AVAILABLE = ModelView("available", None, None)


@dataclass(frozen=True)
class DryRun:
    """What a load would do now (`plan_load`)."""

    model: str
    action: str                      # load | unpark | resident | loading | wait
    device: str = ""
    need: int = 0
    free: int = 0
    moves: tuple[Move, ...] = ()
    download: bool = False           # the files are missing: the load downloads them first
    message: str = ""
    gpu_layers: int = 0              # a split model: layers it would put on the GPU, of `total_layers`,
    total_layers: int = 0
    host_bytes: int = 0              # and what it would keep in host memory


class Scheduler:
    def __init__(self, catalog: Catalog, store: Store, providers: Mapping[str, type[Provider]],
                 bus: EventBus, default_keep_alive: float, device_inventory: dict[str, Device],
                 host_tier_budget: int = 0, *, eviction: str = "cost", max_keep_alive: float = -1.0,
                 jobs: Jobs | None = None) -> None:
        if eviction not in policy.EVICTIONS:
            raise WarmdError(Code.INVALID_ARGUMENT, f"eviction must be one of {', '.join(policy.EVICTIONS)}")
        self.catalog, self.store, self.providers, self.bus = catalog, store, providers, bus
        self.jobs = jobs or store.jobs
        self.default_keep_alive, self.max_keep_alive = default_keep_alive, max_keep_alive
        self.devices = device_inventory
        self.host_tier_budget, self.eviction = host_tier_budget, eviction
        self._slots: dict[str, _Slot] = {}
        self._residents: list[Resident] = []               # every version not GONE, loads under way included
        self._demand: dict[str, Demand] = {}               # per model: requests lately, measured load costs
        self._pins: dict[str, bool] = {}                   # `warm pin`/`unpin`, over the spec's pin
        self._log: collections.deque[tuple[float, Move]] = collections.deque(maxlen=LOG_SIZE)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)    # a resident changed state or went idle
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="keep-alive", daemon=True)
        catalog.add_listener(self.on_catalog_change)

    def start(self) -> None:
        self._reaper.start()
        for spec in self.catalog.specs():
            if spec.preload:
                self.start_load(spec.name, reason="preload")

    # ---- requests ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def acquire(self, name: str, keep_alive: float | None = None, wait: bool = True) -> Iterator[Resident]:
        """Hold a resident model for one request, loading it first if needed.

        Raises:
            WouldWait: when not `wait`ing and the model is not serving now (it would load first).
        """
        resident = self.hold(name, keep_alive, wait)
        try:
            yield resident
        finally:
            self.release(resident)

    def hold(self, name: str, keep_alive: float | None = None, wait: bool = True) -> Resident:
        """`acquire` without a context manager, for the call path (a generator-made one costs it ~20 µs a call);
        every `hold` is followed by one `release`."""
        return self._enter(name, self._capped(keep_alive), wait)

    def release(self, resident: Resident) -> None:
        self._leave(resident)

    def _enter(self, name: str, keep_alive: float | None, wait: bool = True) -> Resident:
        while True:
            with self._lock:
                slot = self._slots.get(name)
                current = slot.current if slot is not None else None
                # Serving: its spec is in the catalog (a removed spec's model is retired at once), and the
                # caller (the application layer) looked the name up already: no second lookup per request.
                if current is not None and current.serving and not self._exited_locked(current):
                    current.in_flight += 1
                    current.last_used = time.time()
                    self._demand[name] = self._demand.get(name, _NO_DEMAND).used(current.last_used)
                    if keep_alive is not None:
                        current.keep_alive = keep_alive
                    return current
                if not wait:
                    raise WouldWait
                self._spec(name)
                slot = self._slots.setdefault(name, _Slot())
                slot.waiters += 1
            try:
                _, future = self._start(name, keep_alive, "request")
                future.result()
            except _StaleLoad:
                continue   # the spec changed under the load: look again (a new load or not found)
            finally:
                with self._lock:
                    slot.waiters -= 1
                    self._changed.notify_all()

    def _leave(self, resident: Resident) -> None:
        with self._lock:
            resident.in_flight -= 1
            resident.last_used = time.time()
            if resident.in_flight == 0:
                self._changed.notify_all()     # a load waiting for memory may evict it now
                if resident.state is State.DRAINING:
                    self._unload_locked(resident)
                    self._spawn(self._unload, resident)

    # ---- loading -------------------------------------------------------------------------------
    def start_load(self, name: str, keep_alive: float | None = None,
                   reason: str = "request") -> tuple[Job | None, Future]:
        """Start (or join) the load of `name`; an explicit load counts as one use for the policy.

        Returns:
            The load job (None when the model is resident already) and a future of the Resident.
        Raises:
            WarmdError: `model_not_found` when no spec defines `name`.
        """
        with self._lock:
            self._spec(name)
            self._demand[name] = self._demand.get(name, _NO_DEMAND).used(time.time())
        return self._start(name, self._capped(keep_alive), reason)

    def _start(self, name: str, keep_alive: float | None, reason: str) -> tuple[Job | None, Future]:
        with self._lock:
            spec = self._spec(name)
            slot = self._slots.setdefault(name, _Slot())
            current = slot.current
            if current is not None and current.serving and current.spec.signature == spec.signature:
                if keep_alive is not None:
                    current.keep_alive = keep_alive
                done: Future = Future()
                done.set_result(current)
                return None, done
            if slot.loading is not None and slot.loading_signature == spec.signature:
                return slot.job, slot.loading
            job, future = self.jobs.start("load", name), Future()
            slot.loading, slot.loading_signature, slot.job = future, spec.signature, job
        threading.Thread(target=self._load, args=(spec, job, future, keep_alive, reason),
                         name=f"load-{name}", daemon=True).start()
        return job, future

    def _load(self, spec: ModelSpec, job: Job, future: Future, keep_alive: float | None,
              reason: str) -> None:
        job.publish("model.loading", reason=reason)
        try:
            resident = self._build(spec, job, keep_alive)
        except Exception as exc:
            err = at_boundary(exc, Code.PROVIDER_FAILED, f"{spec.provider} load of {spec.name!r}", log)
            self._load_failed(spec, job, future, err)
        else:
            self._install(spec, job, future, resident)
        finally:
            self.jobs.finish(job)

    def _build(self, spec: ModelSpec, job: Job, keep_alive: float | None) -> Resident:
        from warmd.runner.process import provider_class   # the runner and multiprocessing: with a load, not a start

        parked = self._parked(spec)
        if parked is not None:
            back = self._unpark(parked, job)
            if back is not None:
                return back
        job.progress("resolve", 0, 3, message=f"locating {spec.source.describe()}")
        files = self.store.ensure(spec, job)    # downloads first when allowed; the job waits on that one
        job.check()
        cls = provider_class(spec, self.providers[spec.provider])
        estimated = spec.memory if spec.memory is not None else cls.estimate(spec, files)
        split = cls.layers(spec, files) if spec.memory is None else None
        resident = self._admit(spec, estimated, job, lambda plan: Resident(
            spec=spec, device=plan.device, estimated_bytes=plan.need, parkable=cls.parkable,
            host_bytes=plan.host_bytes, offloaded=(plan.gpu_layers, plan.total_layers),
            pinned=self._pins.get(spec.name, spec.pin),
            keep_alive=self._keep_alive(spec) if keep_alive is None else keep_alive), split=split)
        assert resident is not None
        device = self.devices[resident.device]
        try:
            if not cls.supports(spec, device.torch_device):
                raise WarmdError(Code.UNSUPPORTED_PROVIDER, f"provider {spec.provider} cannot run on {device.name}")
            job.progress("load", 1, 3, message=f"loading onto {device.name} "
                         f"(~{format_size(resident.estimated_bytes)}{_layers(*resident.offloaded)})")
            t0 = time.monotonic()
            provider = cls(spec, files, device.torch_device)
            if split is not None and device.is_gpu:
                provider.gpu_layers = resident.offloaded[0]
            measured = provider.load()
        except BaseException:
            with self._lock:
                self._forget_locked(resident)
            raise
        with self._lock:
            resident.provider, resident.measured_bytes = provider, measured
            resident.host_bytes = provider.host_bytes if device.is_gpu else 0
            resident.offloaded = provider.offloaded or (0, 0)
            self._measured_locked(spec.name, "load", time.monotonic() - t0)
        if job.cancelled:        # loaded, but nobody wants it any more
            with self._lock:
                self._unload_locked(resident)
            self._unload(resident, announce=False)
            job.check()
        job.progress("ready", 3, 3)
        return resident

    # ---- host tier -----------------------------------------------------------------------------
    def _parked(self, spec: ModelSpec) -> Resident | None:
        """The model's parked version (after a park under way has landed), or None."""
        with self._lock:
            while True:
                slot = self._slots.get(spec.name)
                current = slot.current if slot else None
                if current is None or current.spec.signature != spec.signature:
                    return None
                if current.state is State.PARKED:
                    return current
                if current.state is not State.PARKING:
                    return None
                self._changed.wait()           # being parked right now: let it land first

    def _unpark(self, resident: Resident, job: Job) -> Resident | None:
        """Bring a parked model back to its GPU: make room there, then a host-to-device copy.

        Returns:
            The resident, serving again; None when it left the host tier before room was made.
        """
        if self._admit(resident.spec, resident.bytes, job, unpark=resident) is None:
            return None
        job.progress("load", 1, 3, message=f"from the host tier to {resident.device}")
        t0 = time.monotonic()
        try:
            resident.provider.to_device()  # type: ignore[union-attr]
        except BaseException:
            with self._lock:
                self._move(resident, State.PARKED)
                self._landed_locked(resident)
            raise
        with self._lock:
            self._measured_locked(resident.spec.name, "unpark", time.monotonic() - t0)
            self._move(resident, State.SERVING)
            job.publish("model.unparked", message=f"back on {resident.device}")
            self._landed_locked(resident)
        return resident

    def _park(self, resident: Resident) -> None:
        try:
            resident.provider.to_host()  # type: ignore[union-attr]
        except Exception:
            log.exception("parking %s failed; unloading it instead", resident.spec.name)
            with self._lock:
                self._unload_locked(resident)
            self._unload(resident)
            return
        with self._lock:
            self._move(resident, State.PARKED)
            self.bus.publish("model.parked", model=resident.spec.name, reason=resident.reason,
                             message=f"{format_size(resident.bytes)} in host memory",
                             eviction=eviction_proto(time.time(), resident.eviction))
            self._landed_locked(resident)

    def _landed_locked(self, resident: Resident) -> None:
        """A copy between tiers is over: carry out a retirement asked for meanwhile."""
        if resident.pending_retire:
            reason, resident.pending_retire = resident.pending_retire, ""
            self._retire_locked(resident, reason)

    # ---- memory --------------------------------------------------------------------------------
    def _admit(self, spec: ModelSpec, need: int, job: Job, reserve: Callable[[policy.Plan], Resident] | None = None,
               unpark: Resident | None = None, split: Layers | None = None) -> Resident | None:
        """Place the model and hold its bytes (a new LOADING resident from `reserve(plan)`, or `unpark`
        moved to UNPARKING), carrying out the evictions the policy plans first. A `split` model that waited
        its bound for room for all its layers asks once more, impatiently (with `auto`, fewer layers).

        Returns:
            The resident holding the bytes; None when `unpark` left the host tier meanwhile.
        Raises:
            WarmdError: `insufficient_memory` (what is missing, which models are pinned or busy),
                `device_unavailable`, `cancelled`.
        """
        allowed = ((unpark.device,) if unpark is not None
                   else tuple(d.name for d in devices.candidates(spec.device, self.devices)))
        want = policy.Want(spec.name, need, allowed, unpark.key if unpark is not None else None, split)
        deadline = time.monotonic() + EVICT_WAIT_S
        while True:
            job.check()
            free = self._sample()
            with self._lock:
                if unpark is not None and unpark.state is not State.PARKED:
                    return None
                plan = policy.place(self._snapshot_locked(free), want)
                late = time.monotonic() > deadline
                if plan.kind == "fits":
                    if unpark is not None:
                        self._move(unpark, State.UNPARKING)
                        return unpark
                    resident = reserve(plan)  # type: ignore[misc]
                    self._residents.append(resident)
                    return resident
                if plan.kind == "wait" and not late:
                    # memory held by loads or copies in flight, or by models answering requests, can be
                    # evicted soon: wait for a change (bounded), then look again
                    self._changed.wait(timeout=min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
                    continue
                if plan.kind == "wait" and split is not None and split.flexible and want.patient:
                    # waited long enough for all its layers: what fits now, within a new bound
                    want, deadline = replace(want, patient=False), time.monotonic() + EVICT_WAIT_S
                    continue
                if plan.kind != "evict" or late:
                    raise WarmdError(Code.INSUFFICIENT_MEMORY, plan.message or policy.insufficient(
                        self._snapshot_locked(free), spec.name, need, allowed))
                victims = self._commit_locked(plan.moves)
                log.info("evicting %s from %s to make room for %s", ", ".join(m.name for m in plan.moves),
                         plan.device, spec.name)
                # until their moves are over (not until their memory is free: a parked victim may be
                # wanted back at once, and then the next pass plans again)
                self._changed.wait_for(lambda: not any(v.state in _MOVING_OUT for v in victims),
                                       timeout=max(0.0, deadline - time.monotonic()))

    def _sample(self) -> dict[str, int | None]:
        """Free memory per device as its driver reports it, asked outside the lock (NVML is slow)."""
        with self._lock:
            used = {name: self._used_locked(name) for name in self.devices}
        return {name: d.free_outside(used[name]) for name, d in self.devices.items()}

    def _used_locked(self, device: str) -> int:
        return sum(r.bytes * (r.device == device) + r.host_bytes * (device == policy.HOST)
                   for r in self._residents if r.state.holds_device)

    def _snapshot_locked(self, free: Mapping[str, int | None]) -> policy.Snapshot:
        now = time.time()
        waiting = {id(s.current): s.waiters for s in self._slots.values() if s.current is not None}
        residents = tuple(policy.facts(
            r.key, r.spec.name, r.device, r.state, r.bytes, self._demand.get(r.spec.name, _NO_DEMAND), now,
            pinned=r.pinned, in_flight=r.in_flight, waiters=waiting.get(id(r), 0), last_used=r.last_used,
            expires_at=r.expires_at, parkable=r.parkable, host_bytes=r.host_bytes) for r in self._residents)
        facts = {name: policy.DeviceFacts(name, d.budget, d.reserve, d.is_gpu, free.get(name))
                 for name, d in self.devices.items()}
        return policy.Snapshot(now, facts, residents, self.host_tier_budget, self.eviction)

    def _commit_locked(self, moves: tuple[Move, ...]) -> list[Resident]:
        """Carry out a plan's moves (the plan was made under this same hold of the lock) and log them."""
        by_key = {r.key: r for r in self._residents}
        now = time.time()
        moved = []
        for move in moves:
            resident = by_key[move.key]
            self._log.append((now, move))
            if move.action == "park":
                resident.reason, resident.eviction = move.reason, move
                self._move(resident, State.PARKING)
                self._spawn(self._park, resident)
            else:
                self._retire_locked(resident, move.reason, move)
            moved.append(resident)
        return moved

    def room_for(self, spec: ModelSpec, need: int) -> int:
        """The most bytes `spec` could get on a device it may use, evicting every unpinned model there
        (what a load could make room for at best; for choosing among models, not a reservation)."""
        allowed = [d.name for d in devices.candidates(spec.device, self.devices)]
        with self._lock:
            return policy.room_for(self._snapshot_locked({}), allowed, spec.name)

    def plan_load(self, name: str) -> DryRun:
        """What loading `name` would do now, without doing anything.

        Raises:
            WarmdError: what the load would raise before a provider runs: `model_not_found`,
                `device_unavailable`, `insufficient_memory`, `weights_missing` (local files absent).
        """
        with self._lock:
            spec = self._spec(name)
            slot = self._slots.get(name) or _Slot()
            current = slot.current
            same = current is not None and current.spec.signature == spec.signature
            if same and current.serving:  # type: ignore[union-attr]
                return DryRun(name, "resident", current.device, current.bytes,  # type: ignore[union-attr]
                              message=f"{name} is resident on {current.device}")  # type: ignore[union-attr]
            if slot.loading is not None and slot.loading_signature == spec.signature:
                return DryRun(name, "loading", message=f"a load of {name} is under way; a load joins it")
            parked = current if same and current.state in (State.PARKED, State.PARKING) else None  # type: ignore[union-attr]
        download, split = False, None
        if parked is not None:
            need, allowed, action = parked.bytes, (parked.device,), "unpark"
        else:
            try:
                files = self.store.local(spec)
            except WarmdError as err:
                if err.code is not Code.WEIGHTS_MISSING or not handler(spec.source).downloadable:
                    raise
                files, download = None, True
            cls = self.providers[spec.provider]
            need = spec.memory if spec.memory is not None else (
                cls.estimate(spec, files) if files is not None else self.store.state(spec).bytes_total)
            if spec.memory is None and files is not None:
                split = cls.layers(spec, files)
            allowed = tuple(d.name for d in devices.candidates(spec.device, self.devices))
            action = "load"
        free = self._sample()
        with self._lock:
            plan = policy.place(self._snapshot_locked(free), policy.Want(name, need, allowed,
                                                                         parked.key if parked else None, split))
        if plan.kind == "refuse":
            raise WarmdError(Code.INSUFFICIENT_MEMORY, plan.message)
        return _dry_run(name, action if plan.kind != "wait" else "wait", plan, download)

    def evictions(self, model: str = "") -> list[tuple[float, Move]]:
        """The latest evictions, parks, discards, expiries and pressure reliefs (oldest first)."""
        with self._lock:
            return [(t, m) for t, m in self._log if not model or m.name == model]

    def pin(self, name: str, pinned: bool) -> None:
        """Pin (never evicted, never expires) or unpin a model, over what its spec says, until restart."""
        with self._lock:
            spec = self._spec(name)
            self._pins[name] = pinned
            slot = self._slots.get(name)
            if slot is not None and slot.current is not None:
                slot.current.pinned = pinned
        self.bus.publish("model.pinned" if pinned else "model.unpinned", model=spec.name)

    def device_usage(self) -> list[tuple[Device, int, int | None]]:
        """(device, bytes the daemon holds or has reserved there, free memory the driver reports)."""
        with self._lock:
            rows = [(d, self._used_locked(d.name)) for d in self.devices.values()]
        return [(d, used, d.free_outside(used)) for d, used in rows]

    def _install(self, spec: ModelSpec, job: Job, future: Future, resident: Resident) -> None:
        free = self._sample()
        with self._lock:
            slot = self._slots.setdefault(spec.name, _Slot())
            wanted = self.catalog.get(spec.name)
            stale = wanted is None or wanted.signature != spec.signature or self._stop.is_set()
            if slot.loading is future:
                slot.loading, slot.job = None, None
            returning = resident.state is not State.LOADING     # back from the host tier, not a new load
            if stale and not returning:
                resident.reason = "spec_changed"
                self._unload_locked(resident)
            elif not stale:
                if not returning:
                    self._move(resident, State.SERVING)
                    resident.loaded_at = resident.last_used = time.time()
                    old, slot.current = slot.current, resident
                    if old is not None:
                        self._retire_locked(old, "spec_changed")
                slot.error = None
                self._trim_locked(resident, free)
                job.publish("model.loaded", message=(
                    f"{resident.device}, {format_size(resident.measured_bytes)} "
                    f"(estimated {format_size(resident.estimated_bytes)})"))
        if stale:
            # The spec changed or went away while we loaded: this version must not serve. (A model
            # back from the host tier is still the slot's; the catalog change retires it as usual.)
            if not returning:
                self._unload(resident, message="discarded a load that finished after its spec changed")
            future.set_exception(_StaleLoad(Code.CANCELLED,
                                            f"the spec of {spec.name!r} changed while it loaded; retry"))
            return
        future.set_result(resident)

    def _trim_locked(self, resident: Resident, free: Mapping[str, int | None]) -> None:
        """After a load measured bigger than estimated: evict idle models until the budget holds (on its
        device, and on the CPU for a split model's host share)."""
        shares = [resident.device] + ([policy.HOST] if resident.host_bytes and resident.device != policy.HOST else [])
        for device in shares:
            moves = policy.trim(self._snapshot_locked(free), device, resident.spec.name)
            if moves is None:
                log.warning("%s is over its budget after loading %s and nothing idle can be evicted",
                            device, resident.spec.name)
                continue
            self._commit_locked(moves)

    def _load_failed(self, spec: ModelSpec, job: Job, future: Future, err: WarmdError) -> None:
        with self._lock:
            self._changed.notify_all()
            slot = self._slots.setdefault(spec.name, _Slot())
            if slot.loading is future:
                slot.loading, slot.job = None, None
                if err.code is not Code.CANCELLED:     # a cancel is not the model's failure
                    slot.error = err
        log.error("load of %s failed: %s", spec.name, err)
        job.publish("model.failed", error_code=err.code.value, message=err.message)
        future.set_exception(err)

    # ---- unloading -----------------------------------------------------------------------------
    def unload(self, name: str, reason: str = "request", wait_s: float = 0.0) -> None:
        """Retire `name`'s resident version; it unloads once its in-flight requests finish.

        Args:
            wait_s: how long to wait for the unload to complete.
        Raises:
            WarmdError: `model_not_found` for a name that is neither in the catalog nor resident.
        """
        with self._lock:
            slot = self._slots.get(name)
            resident = slot.current if slot else None
            if resident is None:
                self.catalog.require(name)      # model_not_found, unless the catalog has it
            else:
                self._retire_locked(resident, reason)
                self._changed.wait_for(lambda: resident.state is State.GONE, timeout=wait_s)

    def _retire_locked(self, resident: Resident, reason: str, eviction: Move | None = None) -> None:
        """No new requests for `resident`: it unloads when its last request returns (a parked one at once;
        one between tiers once its copy lands)."""
        slot = self._slots.get(resident.spec.name)
        if slot is not None and slot.current is resident:
            slot.current = None
        if resident.moving:
            resident.pending_retire = resident.pending_retire or reason
            return
        if resident.state not in (State.SERVING, State.PARKED):
            return                         # leaving already
        resident.reason, resident.eviction = reason, eviction
        self._move(resident, State.DRAINING if resident.state is State.SERVING else State.DISCARDING)
        self.bus.publish("model.unloading", model=resident.spec.name, reason=reason,
                         message=f"{resident.in_flight} request(s) in flight",
                         eviction=eviction_proto(time.time(), eviction))
        if resident.state is State.DISCARDING:
            self._spawn(self._unload, resident)
        elif resident.in_flight == 0:
            self._unload_locked(resident)
            self._spawn(self._unload, resident)

    def _unload_locked(self, resident: Resident) -> None:
        """Start leaving its device (the caller then runs `_unload`, inline or on a thread)."""
        slot = self._slots.get(resident.spec.name)
        if slot is not None and slot.current is resident:
            slot.current = None
        self._move(resident, State.UNLOADING)

    def _unload(self, resident: Resident, announce: bool = True, message: str = "") -> None:
        try:
            resident.provider.unload()  # type: ignore[union-attr]
        except Exception:
            log.exception("unload of %s raised; its memory may not be returned", resident.spec.name)
        with self._lock:
            self._forget_locked(resident)
            if announce:
                self.bus.publish("model.unloaded", model=resident.spec.name, reason=resident.reason,
                                 message=message, eviction=eviction_proto(time.time(), resident.eviction))

    def _forget_locked(self, resident: Resident) -> None:
        self._move(resident, State.GONE)
        self._residents.remove(resident)

    def _move(self, resident: Resident, state: State) -> None:
        resident.move(state)
        self._changed.notify_all()

    @staticmethod
    def _spawn(target: Callable[[Resident], None], resident: Resident) -> None:
        threading.Thread(target=target, args=(resident,), name=f"{target.__name__.strip('_')}-{resident.spec.name}",
                         daemon=True).start()

    # ---- catalog changes -----------------------------------------------------------------------
    def on_catalog_change(self, old: ModelSpec | None, new: ModelSpec | None) -> None:
        name = (new or old).name  # type: ignore[union-attr]
        with self._lock:
            slot = self._slots.get(name)
            resident = slot.current if slot else None
            if new is None and resident is not None:
                self._retire_locked(resident, "spec_removed")
            elif new is not None and resident is not None and resident.spec.signature == new.signature:
                resident.spec = new   # metadata (pin, keep_alive, tags) applies at once
                resident.pinned = self._pins.get(new.name, new.pin)
        if new is not None and resident is not None and resident.spec.signature != new.signature:
            self._start(name, None, "spec_changed")
        elif new is not None and old is None and new.preload:
            self._start(name, None, "preload")

    # ---- keep-alive and pressure ---------------------------------------------------------------
    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            free = self._sample()
            with self._lock:
                self._commit_locked(policy.expire(self._snapshot_locked(free)))
                relief = policy.relieve(self._snapshot_locked(free))
                self._commit_locked(relief)
                for resident in [s.current for s in self._slots.values() if s.current is not None]:
                    self._exited_locked(resident)
            if relief:
                log.warning("memory pressure: evicting %s", ", ".join(m.name for m in relief))

    def _exited_locked(self, resident: Resident) -> bool:
        """Retire `resident` if it serves but its provider no longer can (a runner process that died): its
        memory is already back, and the next request loads it again. Returns whether it was retired."""
        gone = resident.provider.gone() if resident.serving and resident.provider is not None else None
        if gone is not None:
            log.warning("%s", gone)
            self._retire_locked(resident, "exited")
        return gone is not None

    # ---- views and shutdown --------------------------------------------------------------------
    def view(self, name: str) -> ModelView:
        with self._lock:
            return self._view(name, self._retiring())

    def views(self) -> dict[str, ModelView]:
        """The view of every model the scheduler knows something about (a load, a resident, an error, a
        pin), in one look; any other model is AVAILABLE."""
        with self._lock:
            retiring = self._retiring()
            return {name: self._view(name, retiring) for name in {*self._slots, *self._pins, *retiring}}

    def _retiring(self) -> dict[str, Resident]:
        return {r.spec.name: r for r in self._residents if r.state in _LEAVING or r.pending_retire}

    def _view(self, name: str, retiring: dict[str, Resident]) -> ModelView:
        slot = self._slots.get(name) or _Slot()
        pinned = self._pins.get(name)
        if slot.current is not None:
            return ModelView("ready", slot.current, slot.error, pinned)
        if slot.loading is not None:
            return ModelView("loading", None, slot.error, pinned)
        if name in retiring:
            return ModelView("unloading", retiring[name], None, pinned)
        return ModelView("failed" if slot.error else "available", None, slot.error, pinned)

    def resident(self) -> list[Resident]:
        with self._lock:
            return [s.current for s in self._slots.values() if s.current is not None]

    def shutdown(self, timeout_s: float) -> None:
        """Unload everything (in-flight requests were drained by the server first)."""
        self._stop.set()
        with self._lock:
            for slot in self._slots.values():
                if slot.current is not None:
                    self._retire_locked(slot.current, "shutdown")
            stuck = [r for r in self._residents if r.state is State.DRAINING]   # past the drain timeout
            for resident in stuck:
                self._unload_locked(resident)
        for resident in stuck:
            self._unload(resident)
        with self._lock:    # loads under way are discarded when they finish (the stop makes them stale)
            self._changed.wait_for(lambda: not any(r.state is not State.LOADING for r in self._residents),
                                   timeout=timeout_s)

    # ---- helpers -------------------------------------------------------------------------------
    def _spec(self, name: str) -> ModelSpec:
        return self.catalog.require(name)

    def _keep_alive(self, spec: ModelSpec) -> float:
        return self.default_keep_alive if spec.keep_alive is None else spec.keep_alive

    def _capped(self, keep_alive: float | None) -> float | None:
        """A client's keep_alive within `max_keep_alive` (-1, forever, is over any cap)."""
        if keep_alive is None or self.max_keep_alive < 0:
            return keep_alive
        return self.max_keep_alive if keep_alive < 0 or keep_alive > self.max_keep_alive else keep_alive

    def _measured_locked(self, name: str, kind: str, seconds: float) -> None:
        self._demand[name] = self._demand.get(name, _NO_DEMAND).measured(kind, seconds)  # type: ignore[arg-type]


def _dry_run(name: str, action: str, plan: policy.Plan, download: bool) -> DryRun:
    first = "downloads its files, then " if download else ""
    if action == "wait":
        message = f"would wait (up to {EVICT_WAIT_S:.0f} s) for busy models or work under way: {plan.message}"
    else:
        verb = "brings it back from the host tier to" if action == "unpark" else "loads it onto"
        split = (_layers(plan.gpu_layers, plan.total_layers)
                 + (f", {format_size(plan.host_bytes)} in host memory" if plan.host_bytes else ""))
        message = (f"{first}{verb} {plan.device} ({format_size(plan.need)}{split}; "
                   f"{format_size(max(0, plan.free))} free)")
        if plan.moves:
            message += " after: " + "; ".join(f"{m.action} {m.name} ({format_size(m.bytes)})" for m in plan.moves)
    return DryRun(name, action, plan.device, plan.need, plan.free, plan.moves, download, message,
                  plan.gpu_layers, plan.total_layers, plan.host_bytes)


def _layers(on_gpu: int, layers: int) -> str:
    """`, 3 of 5 layers on a GPU` for a model split layer by layer (0 of them: it runs on the CPU)."""
    return f", {on_gpu} of {layers} layers on a GPU" if layers else ""


def eviction_proto(when: float, move: Move | None) -> pb.Eviction | None:
    """The wire form of a policy decision (None for none): the log's entries and the events' field."""
    if move is None:
        return None
    return pb.Eviction(time=when, model=move.name, action=move.action, reason=move.reason, device=move.device,
                       bytes=move.bytes, for_model=move.for_model, policy=move.policy,
                       requests_per_min=move.rate * 60, back_s=move.back_s, back_measured=move.measured,
                       cost=move.cost, idle_s=move.idle_s, message=move.why)
