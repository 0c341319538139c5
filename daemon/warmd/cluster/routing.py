"""The request router of the warmd deployment: Ray Serve's multiplexed routing, remembering its own choices.
It runs wherever a handle to the deployment routes requests (the front daemon), and imports Ray.

Ray learns which replica holds a model from that replica, through its controller, a few hundred ms after
the load began. Its default router sends a request for a model nobody is known to hold to a replica with
the fewest models; the next request for it, if the news has not arrived yet, goes to the fewest-models
replica again after one short back-off, which may be another one: the model is loaded twice, and with a
small LRU another model is evicted for nothing. A small model loads faster than the news travels.

This router holds, per model:
- a model Ray knows is held somewhere: one of the replicas holding it (as Ray's router does);
- a model nobody is known to hold: the replica this router last sent it to, while that replica lives (it is
  loading it, or holds it and Ray has not said so yet); else one with the fewest models, counting the
  models this router sent there that Ray has not reported yet (two new models in a row go to two empty
  replicas, not by chance to the same one), remembered.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)


class Router(FIFOMixin, MultiplexMixin, RequestRouter):
    """Ray's multiplexed routing, plus the replica each unreported model was sent to (see the module)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._sent: dict[str, ReplicaID] = {}     # model -> the replica its last request went to

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        model = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if not model:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        pending_request.routing_context.should_backoff = True   # type: ignore[union-attr]
        return [[self._replicas[r] for r in self._choice(model)]]

    def _choice(self, model: str) -> list[ReplicaID]:
        held = self._multiplexed_model_id_to_replica_ids.get(model, set()) & self._replica_id_set
        if held:
            self._sent.pop(model, None)           # Ray knows now
            return random.sample(sorted(held, key=str), min(2, len(held)))
        sent = self._sent.get(model)
        if sent in self._replicas:
            return [sent]
        fewest = self._fewest()
        return random.sample(fewest, min(2, len(fewest)))

    def _fewest(self) -> list[ReplicaID]:
        """The replicas with the fewest models: those Ray reports, plus those sent there it has not reported."""
        unreported = Counter(r for m, r in self._sent.items() if not self._multiplexed_model_id_to_replica_ids.get(m))
        counts = {rid: len(replica.multiplexed_model_ids) + unreported[rid] for rid, replica in self._replicas.items()}
        least = min(counts.values(), default=0)
        return sorted((rid for rid, n in counts.items() if n == least), key=str)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        model = pending_request.metadata.multiplexed_model_id
        if model and not self._multiplexed_model_id_to_replica_ids.get(model):
            self._sent[model] = replica_id
