"""The residency policy: pure decisions over a snapshot of the ledger.

The scheduler hands over a `Snapshot` — every resident with its state, bytes, pin, requests, last use,
request rate and costs to bring back, and every device with its budget, reserve and the free memory its
driver reported (sampled once, outside the scheduler's lock) — and gets back a `Plan`: where to place a
model, which residents to park, unload or discard first and why, with the figures each decision was made
on. Nothing here starts a thread, reads a clock (the snapshot carries `now`), touches a device or a file:
the same calls drive the daemon, the dry run (`warm load --dry-run`) and the trace replays that test the
policy.

Decisions (each the one place its rule lives):
- `place`: a model that fits goes to the allowed device with the most free budget; otherwise victims are
  chosen on a device (the cheapest set, see below); while memory held by busy models or by loads, copies
  and unloads under way may still come back, the plan is to wait; else `insufficient_memory`, naming what
  is missing and which models are pinned or busy.
- `place`, a model that splits layer by layer between a GPU and host memory (llama.cpp, `Want.split`):
  its wanted layers go onto a GPU as above, the rest (and what always stays on the host) count against
  the CPU's budget (`HOST`), both shares planned together; when its layers do not fit and may be fewer
  (`n_gpu_layers: auto`), it takes the GPU with the most room once its idle models are evicted and as many
  layers as fit there (the CPU alone when not one does), rather than waiting (an impatient want: the
  executor's wait for its whole is over) or failing. A fixed count that does not fit is refused.
- `trim`: a load that measured bigger than its estimate evicts idle models until the budget holds.
- `expire`: idle, unpinned models whose keep_alive has passed are unloaded (parked ones discarded).
- `relieve`: on a GPU whose driver-reported free memory fell under its reserve (another program grew),
  idle models are evicted until the reserve is back; not while our own copies or unloads are under way
  there (the driver's figure has not caught up).
- `room_for`: the most bytes a model could get somewhere, evicting everything unpinned.
Victims are idle (no request in flight or waiting), unpinned, serving models, never the model being
placed. A victim on a GPU is parked in the host tier when it is parkable and the tier has room (after
discarding parked models for it, when that costs less than the park saves); otherwise it is unloaded.

Choosing victims (`eviction` setting):
- `cost` (default): what losing each model costs — its recent request rate (exponentially decayed,
  half-life `HALF_LIFE_S`) times the seconds to bring it back (from the host tier when it would be
  parked, else from disk; measured on its last loads, estimated from its bytes before the first one;
  under `MIN_BACK_S` all the same, so that noise does not decide) —
  and the set covering the gap with the least total cost is chosen (cost per byte first, then redundant
  victims dropped, against the single cheapest model big enough alone). LRU breaks ties.
- `lru`: the least recently used first, and the host tier's own LRU for discards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Literal, Mapping

from warmd.residents import State
from warmd.units import format_size

if TYPE_CHECKING:
    from warmd.providers.base import Layers

HALF_LIFE_S = 300.0            # a request counts half after this long
DISK_BYTES_PER_S = 1.0e9       # estimate of a load from disk before one was measured (cold-ish disk)
LOAD_OVERHEAD_S = 0.5          # ... plus building the model
HOST_BYTES_PER_S = 2.0e10      # estimate of bringing a parked model back (pinned host-to-device copy)
MEASURE_WEIGHT = 0.5           # a new measurement's weight against the remembered one
MIN_BACK_S = 0.1               # shorter times to bring a model back count as this much (they are noise)
EVICTIONS = ("cost", "lru")
HOST = "cpu"                   # the device a split model's host share counts on
# Memory in these states comes back (or settles) by itself soon: a load that does not fit waits for it.
_CHANGING = frozenset({State.LOADING, State.PARKING, State.UNPARKING, State.DRAINING, State.UNLOADING})
_LEAVING = frozenset({State.PARKING, State.UNPARKING, State.DRAINING, State.UNLOADING})


@dataclass(frozen=True)
class Demand:
    """What the policy remembers about a model across its loads: how often it was asked for lately and
    how long bringing it back took."""

    score: float = 0.0               # requests, each decayed by its age (half-life HALF_LIFE_S)
    at: float = 0.0                  # when `score` was last brought up to date
    load_s: float | None = None      # measured seconds of a load from disk
    unpark_s: float | None = None    # measured seconds back from the host tier

    def used(self, now: float) -> "Demand":
        """One more request at `now`."""
        return Demand(self._decayed(now) + 1.0, now, self.load_s, self.unpark_s)   # on every request: no replace()

    def rate(self, now: float) -> float:
        """Requests per second lately (the decayed count over its mean age)."""
        return self._decayed(now) * math.log(2) / HALF_LIFE_S

    def measured(self, kind: Literal["load", "unpark"], seconds: float) -> "Demand":
        """Remember how long a load (from disk) or an unpark (from the host tier) took."""
        field = f"{kind}_s"
        old = getattr(self, field)
        new = seconds if old is None else MEASURE_WEIGHT * seconds + (1 - MEASURE_WEIGHT) * old
        return replace(self, **{field: new})

    def load_cost(self, nbytes: int) -> tuple[float, bool]:
        """(seconds to load from disk, measured?) — estimated from the bytes until measured."""
        if self.load_s is not None:
            return self.load_s, True
        return LOAD_OVERHEAD_S + nbytes / DISK_BYTES_PER_S, False

    def unpark_cost(self, nbytes: int) -> tuple[float, bool]:
        """(seconds back from the host tier, measured?)."""
        if self.unpark_s is not None:
            return self.unpark_s, True
        return nbytes / HOST_BYTES_PER_S, False

    def _decayed(self, now: float) -> float:
        return self.score * 0.5 ** (max(0.0, now - self.at) / HALF_LIFE_S)


@dataclass(frozen=True)
class Facts:
    """One resident as the policy sees it."""

    key: int
    name: str
    device: str
    state: State
    bytes: int
    pinned: bool = False
    in_flight: int = 0
    waiters: int = 0                 # requests waiting for a load of this model
    last_used: float = 0.0
    expires_at: float = 0.0          # 0 = never
    parkable: bool = False
    rate: float = 0.0                # requests per second lately
    load_s: float = 0.0              # seconds to bring it back from disk
    load_measured: bool = False
    unpark_s: float = 0.0            # seconds to bring it back from the host tier
    unpark_measured: bool = False
    host_bytes: int = 0              # a model split between a GPU and the host: its share on HOST

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiters == 0


def facts(key: int, name: str, device: str, state: State, nbytes: int, demand: Demand, now: float,
          **rest: object) -> Facts:
    """A resident's facts with its rate and costs taken from its `Demand` (measured or estimated)."""
    load_s, load_measured = demand.load_cost(nbytes)
    unpark_s, unpark_measured = demand.unpark_cost(nbytes)
    return Facts(key=key, name=name, device=device, state=state, bytes=nbytes, rate=demand.rate(now),
                 load_s=load_s, load_measured=load_measured, unpark_s=unpark_s,
                 unpark_measured=unpark_measured, **rest)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    budget: int
    reserve: int = 0
    gpu: bool = False
    driver_free: int | None = None   # free memory the driver reported (None: unknown, e.g. the CPU)


@dataclass(frozen=True)
class Snapshot:
    now: float
    devices: Mapping[str, DeviceFacts]
    residents: tuple[Facts, ...]
    host_budget: int = 0
    eviction: str = "cost"

    def used(self, device: str) -> int:
        """Bytes held on `device`: its residents', and on HOST the host shares of split models."""
        return sum(r.bytes * (r.device == device) + r.host_bytes * (device == HOST)
                   for r in self.residents if r.state.holds_device)

    def host_used(self) -> int:
        return sum(r.bytes for r in self.residents if r.state.holds_host)

    def free(self, device: str) -> int:
        """Bytes a new model may take: what is left of the budget, and of the reserve others need."""
        d = self.devices[device]
        free = d.budget - self.used(device)
        if d.driver_free is not None:
            free = min(free, d.driver_free - d.reserve)
        return free

    def on(self, device: str) -> list[Facts]:
        return [r for r in self.residents if r.device == device]


@dataclass(frozen=True)
class Move:
    """One resident leaving its place, with the figures it was decided on."""

    key: int
    name: str
    action: Literal["park", "unload", "discard"]   # discard: unloaded from the host tier
    reason: str                    # evicted | pressure | keep_alive
    device: str
    bytes: int
    policy: str
    for_model: str = ""            # the load it makes room for
    rate: float = 0.0              # requests per second lately
    back_s: float = 0.0            # seconds to bring it back after this move
    measured: bool = False         # back_s measured (else estimated from bytes)
    cost: float = 0.0              # expected extra loading seconds per minute it adds: rate x 60 x (back_s,
                                   # less the unpark a discarded model would have cost)
    idle_s: float = 0.0
    why: str = ""                  # one line for people


@dataclass(frozen=True)
class Want:
    """A model to place: its name, the bytes it needs, the devices it may use (from its spec)."""

    name: str
    need: int                      # a split model: its GPU and host shares together
    devices: tuple[str, ...]
    unpark: int | None = None      # the key of its parked version, when it comes back from the host tier
    split: Layers | None = None    # how it may split between a GPU and host memory, layer by layer
    patient: bool = True           # a flexible split waits for room for all its layers (False: takes what fits)


@dataclass(frozen=True)
class Plan:
    kind: Literal["fits", "evict", "wait", "refuse"]
    device: str = ""
    need: int = 0
    free: int = 0                  # on `device`, before the moves
    moves: tuple[Move, ...] = ()
    message: str = ""              # wait/refuse: what is missing, which models are pinned or busy
    gpu_layers: int = 0            # a split model: the layers going onto `device` when it is a GPU...
    total_layers: int = 0          # ... of this many (0: not a split model)
    host_bytes: int = 0            # ... and its share held on HOST (`need` is its share on `device`)


# ---- decisions ----------------------------------------------------------------------------------
def place(snap: Snapshot, want: Want) -> Plan:
    """Where `want` goes, and what must leave first.

    Returns:
        `fits` (reserve on `device` now; a split model also `host_bytes` on HOST), `evict` (carry out
        `moves`, then place again), `wait` (memory that may come back is held by busy models or by work
        under way), or `refuse` (`message` says why).
    """
    gpus = tuple(d for d in want.devices if snap.devices[d].gpu)
    if want.split is None or not gpus:
        return _place(snap, want.name, want.need, want.devices, want.unpark)
    return _place_split(snap, want, want.split, gpus)


def _place(snap: Snapshot, name: str, need: int, devices: Iterable[str], unpark: int | None = None) -> Plan:
    options = sorted(devices, key=snap.free, reverse=True)    # most free budget first
    for device in options:
        if need <= snap.free(device):
            return Plan("fits", device, need, snap.free(device))
    host = _HostTier(snap)
    candidates = []
    for device in options:
        gap = need - snap.free(device)
        moves = _evict(snap, device, gap, "evicted", name, host.copy(), unpark)
        if moves is not None:
            candidates.append((device, moves))
    if candidates:
        # lru: the device with the most free budget that can make room; cost: the cheapest room
        device, moves = candidates[0] if snap.eviction == "lru" else min(
            candidates, key=lambda c: sum(m.cost for m in c[1]))
        return Plan("evict", device, need, snap.free(device), tuple(moves))
    message = insufficient(snap, name, need, options)
    if _changing(snap, options) or _busy(snap, options):
        return Plan("wait", need=need, message=message)
    return Plan("refuse", need=need, message=message)


def _place_split(snap: Snapshot, want: Want, split: Layers, gpus: tuple[str, ...]) -> Plan:
    """A model that splits layer by layer: its GPU share and its host share, planned together."""
    layers, on_gpu = len(split.sizes), split.wanted
    device = _place(snap, want.name, want.need - split.host_bytes(on_gpu), gpus)
    if split.flexible and (device.kind == "refuse" or (device.kind == "wait" and not want.patient)):
        # fewer layers: as many as the GPU with the most room (once its idle models are gone) holds
        room = {d: snap.free(d) + sum(r.bytes for r in _evictable(snap, d, want.name)) for d in gpus}
        best = max(gpus, key=lambda d: room[d])
        on_gpu = split.fitting(want.need, room[best])
        if on_gpu == 0:       # not one layer: all of it on the CPU
            return replace(_place(snap, want.name, want.need, (HOST,)), total_layers=layers)
        device = _place(snap, want.name, want.need - split.host_bytes(on_gpu), (best,))
    host = _place(snap, want.name, split.host_bytes(on_gpu), (HOST,))
    shares = {"gpu_layers": on_gpu, "total_layers": layers, "host_bytes": host.need}
    blocked = next((p for kind in ("refuse", "wait") for p in (device, host) if p.kind == kind), None)
    if blocked is not None:
        fewer = "" if split.flexible else " (or offload fewer layers)"
        return Plan(blocked.kind, need=device.need, message=f"{on_gpu} of {layers} layers on a GPU{fewer}: "
                    + blocked.message, **shares)  # type: ignore[arg-type]
    moves = device.moves + host.moves
    return Plan("evict" if moves else "fits", device.device, device.need, device.free, moves,
                **shares)  # type: ignore[arg-type]


def trim(snap: Snapshot, device: str, loaded: str) -> tuple[Move, ...] | None:
    """After `loaded` measured bigger than estimated: idle models to evict until `device`'s budget holds.

    Returns:
        The moves (empty when the budget holds), or None when the idle models cannot free enough.
    """
    over = -snap.free(device)
    if over <= 0:
        return ()
    moves = _evict(snap, device, over, "evicted", loaded, _HostTier(snap))
    return None if moves is None else tuple(moves)


def expire(snap: Snapshot) -> tuple[Move, ...]:
    """Idle models whose keep_alive has passed: serving ones unloaded, parked ones discarded."""
    moves = []
    for r in snap.residents:
        if r.state in (State.SERVING, State.PARKED) and r.idle and r.expires_at and r.expires_at <= snap.now:
            parked = r.state is State.PARKED
            back_s, measured = (r.load_s, r.load_measured)
            moves.append(_move(snap, r, "discard" if parked else "unload", "keep_alive", back_s, measured,
                               why=f"idle {snap.now - r.last_used:.0f} s, past its keep_alive"))
    return tuple(moves)


def relieve(snap: Snapshot) -> tuple[Move, ...]:
    """Idle models to evict from GPUs whose free memory fell under their reserve."""
    moves: list[Move] = []
    host = _HostTier(snap)
    for d in snap.devices.values():
        if d.driver_free is None or d.driver_free >= d.reserve:
            continue
        if any(r.state in _LEAVING for r in snap.on(d.name)):
            continue      # our own copies or unloads are under way; the driver's figure lags behind them
        gap = d.reserve - d.driver_free
        moves += _evict(snap, d.name, gap, "pressure", "", host, partial=True) or []
    return tuple(moves)


def room_for(snap: Snapshot, devices: Iterable[str], name: str) -> int:
    """The most bytes `name` could get on one of `devices` with every unpinned model evicted."""
    return max((snap.devices[d].budget - sum(r.bytes for r in snap.on(d) if r.pinned and r.name != name
                                             and r.state.holds_device) for d in devices), default=0)


def insufficient(snap: Snapshot, name: str, need: int, devices: Iterable[str]) -> str:
    """What is missing for `name` on each device, and which models are pinned or busy there."""
    parts = []
    for device in devices:
        here = [r for r in snap.on(device) if r.state in (State.SERVING, State.DRAINING)]
        pinned = [f"{r.name} ({format_size(r.bytes)})" for r in here if r.pinned]
        busy = [f"{r.name} ({r.in_flight} in flight)" for r in here if not r.pinned and r.in_flight]
        free = max(0, snap.free(device))
        parts.append(f"{device}: {format_size(free)} free of a {format_size(snap.devices[device].budget)} "
                     f"budget, {format_size(need - free)} missing; pinned: {', '.join(pinned) or 'none'}; "
                     f"busy: {', '.join(busy) or 'none'}")
    return (f"{name} needs {format_size(need)}. " + " | ".join(parts)
            + ". Unpin or unload a model, or raise the budget.")


# ---- choosing victims ---------------------------------------------------------------------------
class _HostTier:
    """The host tier as a plan goes along: what is free, and which parked models are still there."""

    def __init__(self, snap: Snapshot, free: int | None = None, parked: list[Facts] | None = None) -> None:
        self.snap = snap
        self.free = snap.host_budget - snap.host_used() if free is None else free
        self.parked = [r for r in snap.residents if r.state is State.PARKED] if parked is None else parked

    def copy(self) -> "_HostTier":
        return _HostTier(self.snap, self.free, list(self.parked))

    def accepts(self, r: Facts) -> bool:
        d = self.snap.devices[r.device]
        return bool(self.snap.host_budget and r.parkable and d.gpu and r.bytes <= self.snap.host_budget)


def _evict(snap: Snapshot, device: str, gap: int, reason: str, for_model: str, host: _HostTier,
           keep: int | None = None, partial: bool = False) -> list[Move] | None:
    """Moves freeing `gap` bytes on `device` (parks where the host tier takes them, else unloads);
    None when its idle models cannot (with `partial`: as many as there are)."""
    chosen = _choose(snap, _evictable(snap, device, for_model), gap, lambda r: _device_cost(host, r), partial)
    if chosen is None:
        return None
    moves: list[Move] = []
    for victim in chosen:
        moves += _leave_device(snap, victim, reason, for_model, host, keep)
    return moves


def _evictable(snap: Snapshot, device: str, for_model: str) -> list[Facts]:
    """What eviction may take on `device`: idle, unpinned, serving models other than `for_model`."""
    return [r for r in snap.on(device) if r.state is State.SERVING and r.idle and not r.pinned
            and r.name != for_model]


def _choose(snap: Snapshot, items: list[Facts], gap: int, cost, partial: bool = False) -> list[Facts] | None:  # type: ignore[no-untyped-def]
    """Items freeing `gap` bytes: the cheapest set (cost) or the least recently used (lru)."""
    if gap <= 0:
        return []
    lru = sorted(items, key=lambda r: r.last_used)
    if snap.eviction == "lru":
        return _cover(lru, gap, partial)
    # cost per byte first (LRU among equals), then victims the others already cover are dropped
    greedy = _cover(sorted(lru, key=lambda r: cost(r) / max(1, r.bytes)), gap, partial)
    if greedy is None:
        return None
    for r in sorted(greedy, key=cost, reverse=True):
        if sum(o.bytes for o in greedy if o is not r) >= gap:
            greedy = [o for o in greedy if o is not r]
    alone = [[r] for r in lru if r.bytes >= gap]
    return min([greedy, *alone], key=lambda group: sum(cost(r) for r in group))   # min keeps the first of equals


def _cover(ordered: list[Facts], gap: int, partial: bool) -> list[Facts] | None:
    chosen, freed = [], 0
    for r in ordered:
        if freed >= gap:
            break
        chosen.append(r)
        freed += r.bytes
    return chosen if freed >= gap or partial else None


def _device_cost(host: _HostTier, r: Facts) -> float:
    """Expected loading seconds per second that evicting `r` from its device adds."""
    return r.rate * max(MIN_BACK_S, r.unpark_s if host.accepts(r) else r.load_s)


def _discard_cost(r: Facts) -> float:
    """What dropping a parked model adds: its next return comes from disk, not from host memory."""
    return r.rate * max(MIN_BACK_S, r.load_s - r.unpark_s)


def _leave_device(snap: Snapshot, victim: Facts, reason: str, for_model: str, host: _HostTier,
                  keep: int | None) -> list[Move]:
    """Park `victim` (discarding parked models for it when that is worth it) or unload it."""
    if host.accepts(victim):
        others = [p for p in host.parked if p.key != keep and p.name != for_model and p.idle]
        discards = _choose(snap, others, victim.bytes - host.free, _discard_cost) or []
        room = host.free + sum(p.bytes for p in discards) >= victim.bytes
        worth = snap.eviction == "lru" or _discard_cost(victim) >= sum(_discard_cost(p) for p in discards)
        if room and worth:
            host.free += sum(p.bytes for p in discards) - victim.bytes
            host.parked = [p for p in host.parked if p not in discards]
            moves = [_move(snap, p, "discard", reason, p.load_s, p.load_measured, for_model,
                           f"discarded from the host tier to park {victim.name}") for p in discards]
            return moves + [_move(snap, victim, "park", reason, victim.unpark_s, victim.unpark_measured,
                                  for_model, _why(snap, victim, reason, for_model, "parked in host memory",
                                                  victim.unpark_s))]
    return [_move(snap, victim, "unload", reason, victim.load_s, victim.load_measured, for_model,
                  _why(snap, victim, reason, for_model, "unloaded", victim.load_s))]


def _move(snap: Snapshot, r: Facts, action: Literal["park", "unload", "discard"], reason: str, back_s: float,
          measured: bool, for_model: str = "", why: str = "") -> Move:
    # what the move adds to its next return: from disk instead of from where it is now
    extra = back_s - (r.unpark_s if action == "discard" else 0.0)
    return Move(key=r.key, name=r.name, action=action, reason=reason, device=r.device, bytes=r.bytes,
                policy=snap.eviction, for_model=for_model, rate=r.rate, back_s=back_s, measured=measured,
                cost=r.rate * max(0.0, extra) * 60, idle_s=max(0.0, snap.now - r.last_used), why=why)


def _why(snap: Snapshot, r: Facts, reason: str, for_model: str, done: str, back_s: float) -> str:
    cause = (f"for {for_model}" if for_model else
             f"{r.device} under its reserve (another program's memory)" if reason == "pressure" else
             f"{r.device} over its budget")
    if snap.eviction == "lru":
        return f"{done} {cause}: least recently used (idle {snap.now - r.last_used:.0f} s)"
    return f"{done} {cause}: cheapest to lose, {r.rate * 60:.2f} requests/min x {back_s:.2f} s to bring back"


def _changing(snap: Snapshot, devices: Iterable[str]) -> bool:
    """Whether loads, copies or unloads are under way on these devices (their memory settles soon)."""
    names = set(devices)
    return any(r.device in names and r.state in _CHANGING for r in snap.residents)


def _busy(snap: Snapshot, devices: Iterable[str]) -> bool:
    """Whether unpinned models on these devices are answering (or waited on by) requests."""
    names = set(devices)
    return any(r.device in names and r.state is State.SERVING and not r.pinned and not r.idle
               for r in snap.residents)
