"""Residency: the one place that decides which models are loaded, when they load, and when they go.

Rules held here:
- one load per model at a time (single-flight): concurrent requests wait on the same load;
- a model with requests in flight is never unloaded under them: it is *retired* (no new requests) and
  unloaded when its last request returns;
- an edited spec reloads in the background; the old version serves until the new one is ready, and a
  failed reload leaves the old version serving;
- a removed spec's model is retired, and so is one whose provider is gone (its runner process died);
- an idle model is unloaded once its keep_alive has passed, unless pinned (-1 = forever, 0 = at once);
- memory is counted in bytes per device (measured after a load, estimated before it) and never exceeds
  the device's budget: a load that does not fit evicts the least recently used idle, unpinned models on
  the device, and fails with `insufficient_memory` when even that is not enough;
- `device: auto` (and `cuda`) places a model on the GPU with the most free budget, else the CPU;
- when a GPU's free memory falls under its reserve because another program grew, idle models are evicted
  until the reserve is back;
- a model evicted from a GPU is *parked* in pinned host memory when the host tier has room (its own LRU
  budget), so bringing it back is a host-to-device copy, not a disk read.
Requests for resident models take the lock only to count themselves in and out; loads and unloads run
outside the lock, so a load never blocks requests for other models.

Events: model.loading, model.loaded, model.failed, model.unloading, model.unloaded (reason: request,
spec_changed, spec_removed, keep_alive, evicted, pressure, removed, shutdown, exited), model.parked,
model.unparked, model.pinned, model.unpinned, and job.progress for each load phase.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from warmd import devices
from warmd.catalog import Catalog
from warmd.devices import Device
from warmd.errors import Code, WarmdError, at_boundary
from warmd.events import EventBus
from warmd.jobs import Job
from warmd.providers import Provider
from warmd.runner.process import provider_class
from warmd.spec import ModelSpec
from warmd.store import Store
from warmd.units import format_size

log = logging.getLogger(__name__)
REAP_INTERVAL_S = 0.25
EVICT_WAIT_S = 30.0      # how long a load waits for the models it evicted to be unloaded


class _StaleLoad(WarmdError):
    """A load finished after its spec changed or went away; waiters look the model up again."""


@dataclass(eq=False)
class Resident:
    """A loaded model. Mutable fields change only under the scheduler's lock."""

    spec: ModelSpec
    provider: Provider
    device: str
    estimated_bytes: int
    measured_bytes: int
    keep_alive: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    pinned: bool = False
    retiring: bool = False
    retire_reason: str = ""
    tier: str = "device"      # "device", or "host" while parked in host memory
    moving: bool = False      # between tiers: neither serves nor can be evicted
    unloaded: threading.Event = field(default_factory=threading.Event)
    freed: threading.Event = field(default_factory=threading.Event)   # device memory given back

    @property
    def serving(self) -> bool:
        return not self.retiring and self.tier == "device" and not self.moving

    @property
    def shown_tier(self) -> str:
        """The tier as users see it: "gpu", "cpu", or "host" (parked in host memory)."""
        return "host" if self.tier == "host" else "gpu" if self.device.startswith("cuda") else "cpu"

    @property
    def bytes(self) -> int:
        """What it counts for: the spec's `memory` if given (the author knows about workspace a
        measurement cannot see), else the measured bytes, else the estimate."""
        if self.spec.memory is not None:
            return self.spec.memory
        return self.measured_bytes or self.estimated_bytes

    @property
    def expires_at(self) -> float:
        if self.pinned or self.keep_alive < 0:
            return 0.0
        return self.last_used + self.keep_alive


@dataclass(eq=False)
class _Slot:
    current: Resident | None = None
    loading: Future | None = None
    loading_signature: str = ""
    job: Job | None = None
    error: WarmdError | None = None
    waiters: int = 0        # requests waiting for a load; keep-alive leaves the model to them


@dataclass(frozen=True)
class ModelView:
    """What the API shows about one model."""

    state: str                       # available | loading | ready | unloading | failed
    resident: Resident | None
    error: WarmdError | None
    pinned: bool | None = None       # `warm pin`/`unpin` over the spec's pin (None: the spec decides)


class Scheduler:
    def __init__(self, catalog: Catalog, store: Store, providers: Mapping[str, type[Provider]],
                 bus: EventBus, default_keep_alive: float, device_inventory: dict[str, Device],
                 host_tier_budget: int = 0) -> None:
        self.catalog, self.store, self.providers, self.bus = catalog, store, providers, bus
        self.default_keep_alive = default_keep_alive
        self.devices = device_inventory
        self.host_tier_budget = host_tier_budget
        self._host_reserved = 0                            # bytes of parks under way
        self._slots: dict[str, _Slot] = {}
        self._retiring: list[Resident] = []
        self._reserved: dict[str, tuple[str, int]] = {}   # load job id -> (device, bytes) while it loads
        self._pins: dict[str, bool] = {}                   # `warm pin`/`unpin`, over the spec's pin
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)    # memory was freed or a load finished
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
    def acquire(self, name: str, keep_alive: float | None = None) -> Iterator[Resident]:
        """Hold a resident model for one request, loading it first if needed."""
        resident = self._enter(name, keep_alive)
        try:
            yield resident
        finally:
            self._leave(resident)

    def _enter(self, name: str, keep_alive: float | None) -> Resident:
        while True:
            with self._lock:
                self._spec(name)
                slot = self._slots.setdefault(name, _Slot())
                exited = self._exited_locked([slot])
                current = slot.current
                if current is not None and current.serving:
                    current.in_flight += 1
                    current.last_used = time.time()
                    if keep_alive is not None:
                        current.keep_alive = keep_alive
                    return current
                slot.waiters += 1
            for resident in exited:
                self._drain(resident)
            try:
                _, future = self.start_load(name, keep_alive=keep_alive)
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
            drained = resident.retiring and resident.in_flight == 0
            if resident.in_flight == 0:
                self._changed.notify_all()     # a load waiting for memory may evict it now
        if drained:
            self._unload_in_background(resident)

    # ---- loading -------------------------------------------------------------------------------
    def start_load(self, name: str, keep_alive: float | None = None,
                   reason: str = "request") -> tuple[Job, Future]:
        """Start (or join) the load of `name`. Returns the load job and a future of the Resident.

        Raises:
            WarmdError: `model_not_found` when no spec defines `name`.
        """
        with self._lock:
            spec = self._spec(name)
            slot = self._slots.setdefault(name, _Slot())
            current = slot.current
            if current is not None and current.serving and current.spec.signature == spec.signature:
                if keep_alive is not None:
                    current.keep_alive = keep_alive
                done: Future = Future()
                done.set_result(current)
                return Job("load", name, self.bus), done
            if slot.loading is not None and slot.loading_signature == spec.signature:
                return slot.job, slot.loading  # type: ignore[return-value]
            job, future = Job("load", name, self.bus), Future()
            slot.loading, slot.loading_signature, slot.job = future, spec.signature, job
        threading.Thread(target=self._load, args=(spec, job, future, keep_alive, reason),
                         name=f"load-{name}", daemon=True).start()
        return job, future

    def _load(self, spec: ModelSpec, job: Job, future: Future, keep_alive: float | None,
              reason: str) -> None:
        self.bus.publish("model.loading", model=spec.name, job_id=job.id, reason=reason)
        try:
            resident = self._build(spec, job, keep_alive)
        except Exception as exc:
            err = at_boundary(exc, Code.PROVIDER_FAILED, f"{spec.provider} load of {spec.name!r}", log)
            self._load_failed(spec, job, future, err)
            return
        self._install(spec, job, future, resident)

    def _build(self, spec: ModelSpec, job: Job, keep_alive: float | None) -> Resident:
        parked = self._parked(spec)
        if parked is not None:
            return self._unpark(parked, job)
        job.progress("resolve", 0, 3, message=f"locating {spec.source.describe()}")
        files = self.store.ensure(spec)     # downloads first when allowed, with its own job's events
        job.check()
        cls = provider_class(spec, self.providers[spec.provider])
        estimated = spec.memory if spec.memory is not None else cls.estimate(spec, files)
        device = self._admit(spec, estimated, job)     # reserved until _install or _load_failed
        if not cls.supports(spec, device.torch_device):
            raise WarmdError(Code.UNSUPPORTED_PROVIDER, f"provider {spec.provider} cannot run on {device.name}")
        job.progress("load", 1, 3, message=f"loading onto {device.name} (~{format_size(estimated)})")
        provider = cls(spec, files, device.torch_device)
        measured = provider.load()
        job.check()
        job.progress("ready", 3, 3)
        return Resident(spec=spec, provider=provider, device=device.name, estimated_bytes=estimated,
                        measured_bytes=measured, pinned=self._pins.get(spec.name, spec.pin),
                        keep_alive=self._keep_alive(spec) if keep_alive is None else keep_alive)

    # ---- host tier -----------------------------------------------------------------------------
    def _parked(self, spec: ModelSpec) -> Resident | None:
        """The model's parked version, claimed for bringing back (waiting for a park under way)."""
        while True:
            with self._lock:
                slot = self._slots.get(spec.name)
                current = slot.current if slot else None
                if current is None or current.retiring or current.spec.signature != spec.signature:
                    return None
                if current.tier == "host" and not current.moving:
                    current.moving = True      # ours now: neither expiry nor the host tier's LRU takes it
                    return current
                if not (current.tier == "device" and current.moving):
                    return None
            current.freed.wait(EVICT_WAIT_S)   # being parked right now: let it land first

    def _unpark(self, resident: Resident, job: Job) -> Resident:
        """Bring a parked model back to its GPU: make room there, then a host-to-device copy."""
        try:
            self._admit(resident.spec, resident.bytes, job, only=resident.device)
            job.progress("load", 1, 3, message=f"from the host tier to {resident.device}")
            resident.provider.to_device()
        except BaseException:
            with self._lock:
                resident.moving = False
            raise
        with self._lock:
            resident.tier, resident.moving = "device", False
            resident.freed.clear()
            self._changed.notify_all()
        self.bus.publish("model.unparked", model=resident.spec.name, message=f"back on {resident.device}")
        return resident

    def _park_room_locked(self, resident: Resident) -> list[Resident] | None:
        """Room in the host tier for `resident`: parked models to evict for it (LRU), or None if it cannot go."""
        if not (self.host_tier_budget and resident.provider.parkable and resident.device.startswith("cuda")):
            return None
        parked = sorted((s.current for s in self._slots.values() if s.current is not None
                         and s.current.tier == "host" and not s.current.moving and not s.current.retiring),
                        key=lambda r: r.last_used)
        free = self.host_tier_budget - self._host_reserved - sum(r.bytes for r in parked)
        chosen = []
        for old in parked:
            if free >= resident.bytes:
                break
            chosen.append(old)
            free += old.bytes
        return chosen if free >= resident.bytes else None

    def _evict_locked(self, victims: list[Resident], reason: str) -> tuple[list[Resident], list[Resident]]:
        """Take idle models off their device: park them in the host tier if it has room, else retire them.

        Returns:
            (to park, to drain): the caller carries both out after releasing the lock (`_carry_out`).
        """
        parks, drains = [], []
        for victim in victims:
            room = self._park_room_locked(victim)
            if room is None:
                self._retire_locked(victim, reason)
                drains.append(victim)
                continue
            for old in room:                   # the host tier's own LRU
                self._retire_locked(old, "evicted")
                drains.append(old)
            victim.moving = True
            victim.retire_reason = reason
            self._host_reserved += victim.bytes
            parks.append(victim)
        return parks, drains

    def _carry_out(self, parks: list[Resident], drains: list[Resident]) -> None:
        for resident in drains:
            self._drain(resident)
        for resident in parks:
            threading.Thread(target=self._park, args=(resident,), name=f"park-{resident.spec.name}",
                             daemon=True).start()

    def _park(self, resident: Resident) -> None:
        try:
            resident.provider.to_host()
        except Exception:
            log.exception("parking %s failed; unloading it instead", resident.spec.name)
            with self._lock:
                self._host_reserved -= resident.bytes
                resident.moving = False
                self._retire_locked(resident, resident.retire_reason)
            self._drain(resident)
            return
        with self._lock:
            self._host_reserved -= resident.bytes
            resident.tier, resident.moving = "host", False
            resident.freed.set()
            self._changed.notify_all()
        self.bus.publish("model.parked", model=resident.spec.name, reason=resident.retire_reason,
                         message=f"{format_size(resident.bytes)} in host memory")

    # ---- memory --------------------------------------------------------------------------------
    def _admit(self, spec: ModelSpec, need: int, job: Job, only: str = "") -> Device:
        """Place the model and reserve its bytes, evicting LRU idle models if that is what it takes.

        Raises:
            WarmdError: `insufficient_memory` (what is missing, which models are pinned or busy),
                `device_unavailable`.
        """
        deadline = time.monotonic() + EVICT_WAIT_S
        while True:
            with self._lock:
                allowed = [self.devices[only]] if only else devices.candidates(spec.device, self.devices)
                options = sorted(allowed, key=self._free_locked, reverse=True)   # most free budget first
                fits = next((d for d in options if need <= self._free_locked(d)), None)
                if fits is not None:
                    self._reserved[job.id] = (fits.name, need)
                    return fits
                plan = next(((d, v) for d in options
                             if (v := self._victims_locked(d, need - self._free_locked(d))) is not None), None)
                if (plan is None and time.monotonic() < deadline
                        and (self._others_moving_locked(options, job, spec.name) or self._busy_locked(options))):
                    # Memory held by loads in flight, or by models answering requests, becomes evictable
                    # soon: wait for a change (bounded), then look again.
                    self._changed.wait(timeout=max(0.0, deadline - time.monotonic()))
                    continue
                if plan is None or time.monotonic() > deadline:
                    raise self._insufficient_locked(spec, need, options)
                device, victims = plan
                parks, drains = self._evict_locked(victims, "evicted")
            log.info("evicting %s from %s to make room for %s", ", ".join(v.spec.name for v in victims),
                     device.name, spec.name)
            self._carry_out(parks, drains)
            for victim in victims:
                victim.freed.wait(max(0.0, deadline - time.monotonic()))

    def _busy_locked(self, options: list[Device]) -> bool:
        names = {d.name for d in options}
        return any(s.current is not None and s.current.device in names and s.current.serving
                   and not s.current.pinned and (s.current.in_flight or s.waiters) for s in self._slots.values())

    def _others_moving_locked(self, options: list[Device], job: Job, name: str) -> bool:
        """Whether other loads, parks, returns or unloads are under way on these devices."""
        names = {d.name for d in options}
        return (any(device in names for job_id, (device, _) in self._reserved.items() if job_id != job.id)
                or any(r is not None and r.moving and r.device in names and r.spec.name != name
                       for r in (s.current for s in self._slots.values()))
                # retired models still draining: their memory comes back when their requests finish
                or any(r.device in names and not r.freed.is_set() for r in self._retiring))

    def _used_locked(self, device: str) -> int:
        residents = [s.current for s in self._slots.values() if s.current is not None] + self._retiring
        return (sum(r.bytes for r in residents if r.device == device and not r.freed.is_set())
                + sum(n for d, n in self._reserved.values() if d == device))

    def room_for(self, spec: ModelSpec, need: int) -> int:
        """The most bytes `spec` could get on a device it may use, evicting every unpinned model there
        (what a load could make room for at best; for choosing among models, not a reservation)."""
        with self._lock:
            best = 0
            for device in devices.candidates(spec.device, self.devices):
                pinned = sum(s.current.bytes for s in self._slots.values()
                             if s.current is not None and s.current.device == device.name and s.current.pinned
                             and s.current.spec.name != spec.name)
                best = max(best, device.budget - pinned)
            return best

    def _free_locked(self, device: Device) -> int:
        """Bytes a new model may take: what is left of the budget, and of the reserve others need."""
        used = self._used_locked(device.name)
        free = device.budget - used
        outside = device.free_outside(used)
        if outside is not None:
            free = min(free, outside - device.reserve)
        return free

    def _victims_locked(self, device: Device, gap: int, partial: bool = False) -> list[Resident] | None:
        """The least recently used idle, unpinned models on `device` that free `gap` bytes; None if they
        cannot (or, with `partial`, as many as there are)."""
        idle = sorted((s.current for s in self._slots.values()
                       if s.current is not None and s.current.device == device.name and not s.current.pinned
                       and s.current.in_flight == 0 and s.waiters == 0 and s.current.serving),
                      key=lambda r: r.last_used)
        chosen, freed = [], 0
        for resident in idle:
            if freed >= gap:
                break
            chosen.append(resident)
            freed += resident.bytes
        return chosen if freed >= gap or partial else None

    def _insufficient_locked(self, spec: ModelSpec, need: int, options: list[Device]) -> WarmdError:
        parts = []
        for d in options:
            here = [s.current for s in self._slots.values()
                    if s.current is not None and s.current.device == d.name and s.current.tier == "device"]
            pinned = [f"{r.spec.name} ({format_size(r.bytes)})" for r in here if r.pinned]
            busy = [f"{r.spec.name} ({r.in_flight} in flight)" for r in here if not r.pinned and r.in_flight]
            parts.append(f"{d.name}: {format_size(max(0, self._free_locked(d)))} free of a "
                         f"{format_size(d.budget)} budget, {format_size(need - max(0, self._free_locked(d)))} "
                         f"missing; pinned: {', '.join(pinned) or 'none'}; busy: {', '.join(busy) or 'none'}")
        return WarmdError(Code.INSUFFICIENT_MEMORY, f"{spec.name} needs {format_size(need)}. "
                          + " | ".join(parts) + ". Unpin or unload a model, or raise the budget.")

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
        with self._lock:
            slot = self._slots.setdefault(spec.name, _Slot())
            wanted = self.catalog.get(spec.name)
            stale = wanted is None or wanted.signature != spec.signature
            if slot.loading is future:
                slot.loading, slot.job = None, None
            self._reserved.pop(job.id, None)
            self._changed.notify_all()
            old, overshoot = None, ([], [])
            returning = slot.current is resident     # back from the host tier, not a new load
            if not stale:
                old, slot.current, slot.error = slot.current, resident, None
                if returning:
                    old = None
                if old is not None:
                    self._retire_locked(old, "spec_changed")
                overshoot = self._trim_locked(self.devices[resident.device])
        if stale:
            # The spec changed or went away while we loaded: this version must not serve. (A model
            # back from the host tier is still the slot's; the catalog change retires it as usual.)
            if not returning:
                resident.provider.unload()
                self.bus.publish("model.unloaded", model=spec.name, reason="spec_changed",
                                 message="discarded a load that finished after its spec changed")
            future.set_exception(_StaleLoad(Code.CANCELLED,
                                            f"the spec of {spec.name!r} changed while it loaded; retry"))
            return
        self.bus.publish("model.loaded", model=spec.name, job_id=job.id, message=(
            f"{resident.device}, {format_size(resident.measured_bytes)} "
            f"(estimated {format_size(resident.estimated_bytes)})"))
        future.set_result(resident)
        if old is not None:
            self._drain(old)
        self._carry_out(*overshoot)

    def _trim_locked(self, device: Device) -> tuple[list[Resident], list[Resident]]:
        """After a load measured bigger than estimated: evict LRU idle models until the budget holds."""
        over = -self._free_locked(device)
        if over <= 0:
            return [], []
        victims = self._victims_locked(device, over) or []
        if not victims:
            log.warning("%s is %s over its budget and nothing idle can be evicted", device.name, format_size(over))
        return self._evict_locked(victims, "evicted")

    def _load_failed(self, spec: ModelSpec, job: Job, future: Future, err: WarmdError) -> None:
        with self._lock:
            self._reserved.pop(job.id, None)
            self._changed.notify_all()
            slot = self._slots.setdefault(spec.name, _Slot())
            if slot.loading is future:
                slot.loading, slot.job, slot.error = None, None, err
        log.error("load of %s failed: %s", spec.name, err)
        self.bus.publish("model.failed", model=spec.name, job_id=job.id, error_code=err.code.value,
                         message=err.message)
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
        if resident is not None:
            self._drain(resident)
            resident.unloaded.wait(wait_s)

    def _retire_locked(self, resident: Resident, reason: str) -> None:
        if not resident.retiring:
            resident.retiring, resident.retire_reason = True, reason
        slot = self._slots.get(resident.spec.name)
        if slot is not None and slot.current is resident:
            slot.current = None
        if resident not in self._retiring:
            self._retiring.append(resident)

    def _drain(self, resident: Resident) -> None:
        """Unload a retired model now if idle; otherwise the last request to leave does it (_leave)."""
        with self._lock:
            in_flight = resident.in_flight
        self.bus.publish("model.unloading", model=resident.spec.name, reason=resident.retire_reason,
                         message=f"{in_flight} request(s) in flight")
        if in_flight == 0:
            self._unload_in_background(resident)

    def _unload_in_background(self, resident: Resident) -> None:
        threading.Thread(target=self._unload_now, args=(resident,),
                         name=f"unload-{resident.spec.name}", daemon=True).start()

    def _unload_now(self, resident: Resident) -> None:
        with self._lock:
            if resident.unloaded.is_set() or resident not in self._retiring:
                return
            self._retiring.remove(resident)
        try:
            resident.provider.unload()
        except Exception:
            log.exception("unload of %s raised; its memory may not be returned", resident.spec.name)
        with self._lock:
            resident.unloaded.set()
            resident.freed.set()
            self._changed.notify_all()
        self.bus.publish("model.unloaded", model=resident.spec.name, reason=resident.retire_reason)

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
        if new is None and resident is not None:
            self._drain(resident)
        elif new is not None and resident is not None and resident.spec.signature != new.signature:
            self.start_load(name, reason="spec_changed")
        elif new is not None and old is None and new.preload:
            self.start_load(name, reason="preload")

    # ---- keep-alive ----------------------------------------------------------------------------
    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            now = time.time()
            with self._lock:
                expired = [s.current for s in self._slots.values()
                           if s.current is not None and s.current.in_flight == 0 and s.waiters == 0
                           and not s.current.moving and s.current.expires_at and s.current.expires_at <= now]
                for resident in expired:
                    self._retire_locked(resident, "keep_alive")
                exited = self._exited_locked(list(self._slots.values()))
            for resident in expired + exited:
                self._drain(resident)
            self._carry_out(*self._relieve_pressure())

    def _exited_locked(self, slots: list[_Slot]) -> list[Resident]:
        """Retire the serving models of `slots` whose provider can no longer serve (a runner process that
        died); their memory is already back, and the next request loads them again."""
        exited = [s.current for s in slots if s.current is not None and s.current.serving
                  and s.current.provider.gone() is not None]
        for resident in exited:
            log.warning("%s", resident.provider.gone())
            self._retire_locked(resident, "exited")
        return exited

    def _relieve_pressure(self) -> tuple[list[Resident], list[Resident]]:
        """Evict idle models from a device whose free memory fell under its reserve (another program grew)."""
        victims: list[Resident] = []
        with self._lock:
            for device in self.devices.values():
                moving = [s.current for s in self._slots.values() if s.current is not None and s.current.moving]
                if any(r.device == device.name for r in self._retiring + moving):
                    continue    # unloads or parks under way; the driver's free figure has not caught up yet
                used = self._used_locked(device.name)
                outside = device.free_outside(used)
                if outside is None or outside >= device.reserve:
                    continue
                victims += self._victims_locked(device, device.reserve - outside, partial=True) or []
            moves = self._evict_locked(victims, "pressure")
        if victims:
            log.warning("memory pressure: evicting %s", ", ".join(v.spec.name for v in victims))
        return moves

    # ---- views and shutdown --------------------------------------------------------------------
    def view(self, name: str) -> ModelView:
        with self._lock:
            slot = self._slots.get(name) or _Slot()
            retiring = next((r for r in self._retiring if r.spec.name == name), None)
            pinned = self._pins.get(name)
            if slot.current is not None:
                return ModelView("ready", slot.current, slot.error, pinned)
            if slot.loading is not None:
                return ModelView("loading", None, slot.error, pinned)
            if retiring is not None:
                return ModelView("unloading", retiring, None, pinned)
            return ModelView("failed" if slot.error else "available", None, slot.error, pinned)

    def resident(self) -> list[Resident]:
        with self._lock:
            return [s.current for s in self._slots.values() if s.current is not None]

    def shutdown(self, timeout_s: float) -> None:
        """Unload everything (in-flight requests were drained by the server first)."""
        self._stop.set()
        with self._lock:
            everything = [s.current for s in self._slots.values() if s.current is not None]
            for resident in everything:
                self._retire_locked(resident, "shutdown")
            retiring = list(self._retiring)
        for resident in retiring:
            self._unload_now(resident)
        deadline = time.monotonic() + timeout_s
        for resident in retiring:
            resident.unloaded.wait(max(0.0, deadline - time.monotonic()))

    def _spec(self, name: str) -> ModelSpec:
        return self.catalog.require(name)

    def _keep_alive(self, spec: ModelSpec) -> float:
        return self.default_keep_alive if spec.keep_alive is None else spec.keep_alive
