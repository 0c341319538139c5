"""A resident model version and its one state machine.

Every version of a model the scheduler holds (or is about to hold) is one `Resident` in exactly one
`State`. What a state holds decides the accounting: device bytes count against the device's budget,
host bytes against the host tier's. A model split between a GPU and host memory layer by layer (llama.cpp)
holds `host_bytes` on the CPU besides: they count against the CPU's budget in every state that holds its
device (such a model is never parked: llama.cpp cannot move a loaded model between devices).

    state        device  host   meaning
    LOADING      yes     -      bytes reserved on its device while the provider loads from disk
    SERVING      yes     -      on its device, taking requests
    PARKING      yes     yes    being copied device -> host (evicted into the host tier)
    PARKED       -       yes    in pinned host memory; a request brings it back
    UNPARKING    yes     yes    being copied host -> device (bytes reserved on the device)
    DRAINING     yes     -      retired: no new requests; unloads when its last request returns
    UNLOADING    yes     -      the provider is unloading it from its device
    DISCARDING   -       yes    the provider is unloading it from the host tier
    GONE         -       -      nothing left

Allowed transitions (anything else is a bug: `move` raises `IllegalTransition` and logs it):

    LOADING    -> SERVING     loaded
               -> UNLOADING   loaded, but its spec changed meanwhile, it was cancelled, or the daemon stops
               -> GONE        the load failed or was cancelled before the provider ran
    SERVING    -> PARKING     evicted from a GPU, the host tier has room
               -> DRAINING    evicted, expired, unloaded, replaced by a new version, removed
    PARKING    -> PARKED      the copy landed
               -> UNLOADING   the copy failed: unloaded instead
    PARKED     -> UNPARKING   a request wants it back
               -> DISCARDING  the host tier needs the room, it expired, its spec went away
    UNPARKING  -> SERVING     the copy landed
               -> PARKED      no room on the device after all, or the copy failed
    DRAINING   -> UNLOADING   its last request returned
    UNLOADING  -> GONE
    DISCARDING -> GONE

A retirement asked for while a copy is under way (PARKING, UNPARKING) is kept in `pending_retire` and
carried out when the copy lands. Residents change only under the scheduler's lock.
"""
from __future__ import annotations

import enum
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from warmd.devices import is_gpu

if TYPE_CHECKING:      # the providers import torch lazily, but keep this module light for the policy
    from warmd.policy import Move
    from warmd.providers import Provider
    from warmd.spec import ModelSpec

log = logging.getLogger(__name__)


class State(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    PARKING = "parking"
    PARKED = "parked"
    UNPARKING = "unparking"
    DRAINING = "draining"
    UNLOADING = "unloading"
    DISCARDING = "discarding"
    GONE = "gone"

    @property
    def holds_device(self) -> bool:
        """Whether a resident in this state counts against its device's budget."""
        return self in _HOLDS_DEVICE

    @property
    def holds_host(self) -> bool:
        """Whether a resident in this state counts against the host tier's budget."""
        return self in _HOLDS_HOST


_HOLDS_DEVICE = frozenset({State.LOADING, State.SERVING, State.PARKING, State.UNPARKING, State.DRAINING,
                           State.UNLOADING})
_HOLDS_HOST = frozenset({State.PARKING, State.PARKED, State.UNPARKING, State.DISCARDING})
TRANSITIONS: dict[State, frozenset[State]] = {
    State.LOADING: frozenset({State.SERVING, State.UNLOADING, State.GONE}),
    State.SERVING: frozenset({State.PARKING, State.DRAINING}),
    State.PARKING: frozenset({State.PARKED, State.UNLOADING}),
    State.PARKED: frozenset({State.UNPARKING, State.DISCARDING}),
    State.UNPARKING: frozenset({State.SERVING, State.PARKED}),
    State.DRAINING: frozenset({State.UNLOADING}),
    State.UNLOADING: frozenset({State.GONE}),
    State.DISCARDING: frozenset({State.GONE}),
    State.GONE: frozenset(),
}
_keys = itertools.count(1)


class IllegalTransition(RuntimeError):
    """A resident was asked to move between states the machine does not allow: a scheduler bug."""


@dataclass(eq=False)
class Resident:
    """One version of a model, from its reservation to its unload."""

    spec: ModelSpec
    device: str
    estimated_bytes: int
    keep_alive: float
    parkable: bool = False
    provider: Provider | None = None      # set once LOADING is over
    measured_bytes: int = 0
    pinned: bool = False
    state: State = State.LOADING
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    host_bytes: int = 0                   # split between a GPU and the host: what it keeps in host memory
    offloaded: tuple[int, int] = (0, 0)   # split: (layers on the GPU, layers in all); planned, then loaded
    reason: str = ""                      # why it left SERVING (shown on its events)
    eviction: Move | None = None          # the policy's decision, when the policy evicted it
    pending_retire: str = ""              # a retirement to carry out once a copy lands
    key: int = field(default_factory=lambda: next(_keys))

    def move(self, to: State) -> None:
        """Change state, checking the transition against `TRANSITIONS`.

        Raises:
            IllegalTransition: the machine does not allow it (a bug; logged loudly).
        """
        if to not in TRANSITIONS[self.state]:
            log.error("illegal residency transition of %s: %s -> %s", self.spec.name, self.state.name, to.name)
            raise IllegalTransition(f"{self.spec.name}: {self.state.name} -> {to.name} is not allowed")
        self.state = to

    @property
    def serving(self) -> bool:
        return self.state is State.SERVING

    @property
    def moving(self) -> bool:
        """Between tiers: neither serves nor can be evicted."""
        return self.state in (State.PARKING, State.UNPARKING)

    @property
    def tier(self) -> str:
        """"host" while its weights are in host memory (parked, or on their way back), else "device"."""
        return "host" if self.state in (State.PARKED, State.UNPARKING, State.DISCARDING) else "device"

    @property
    def shown_tier(self) -> str:
        """The tier as users see it: "gpu", "cpu", or "host" (parked in host memory)."""
        return "host" if self.tier == "host" else "gpu" if is_gpu(self.device) else "cpu"

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
