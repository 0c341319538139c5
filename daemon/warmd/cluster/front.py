"""`cluster`: the provider through which a daemon serves a spec placed on a Ray Serve cluster.

A cluster-placed spec (warmd.cluster.Placement) is an ordinary model to the daemon: the scheduler holds it
(0 bytes, on no local device), admission, statistics and every front treat it as any other. Its provider
forwards each request through a Serve deployment handle with the model's name as the multiplexed id, so
Ray routes it to a replica that holds the model (loading it there first when none does):

- `load()` joins the cluster (once per process) and has the model loaded on a replica: its errors come
  back with their codes, as a local load's would (the deployment's router, warmd.cluster.routing, sends
  the model's next requests to that replica);
- `infer()` sends tensors, texts and parameters as they are (no re-encoding) and raises the replica's
  error code as its own; a caller's cancel cancels the request on the replica, its deadline travels with it;
  a streaming caller gets the replica's text and progress as they come;
- `unload()` lets go of the handle: on the cluster, Ray's LRU decides when a model leaves a replica;
- `location()` names the replicas that hold the model (`warm ps`), from the cluster's registry.

Ray is imported on the first load, never at import.
"""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from warmd import cluster
from warmd.errors import Code, WarmdError
from warmd.providers.base import InferRequest, InferResult, Provider
from warmd.spec import ModelSpec

LOAD_TIMEOUT_S = 600.0       # a first load may download the model's files on the replica's node
LOCATION_TTL_S = 1.0         # how long `warm ps` reuses one registry snapshot
_shared: Any = None          # the process's one DeploymentHandle (see _deployment)
_shared_lock = threading.Lock()
REGISTRY_TIMEOUT_S = 2.0     # `warm ps` waits at most this long for the registry
_snapshot: tuple[float, dict[str, Any] | None] = (0.0, None)
_snapshot_lock = threading.Lock()


class ClusterProvider(Provider):
    name = cluster.PROVIDER
    in_process = False
    # The spec's options are its own provider's, checked by that provider when the file was parsed.
    options_schema = {"type": "object"}

    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        return 0

    def load(self) -> int:
        self._handle = _deployment(self.spec.source.ref).options(multiplexed_model_id=self.spec.source.model)
        _reply(self._handle.load.remote(), LOAD_TIMEOUT_S, None)
        return 0

    def infer(self, request: InferRequest) -> InferResult:
        ctx = request.context
        timeout = max(0.001, ctx.deadline - time.monotonic()) if ctx.deadline is not None else None
        body = {"tensors": request.tensors, "text": request.text, "parameters": request.parameters,
                "timeout_s": timeout}
        if ctx.streaming:
            reply = self._stream(body, request)
        else:
            reply = _reply(self._handle.infer.remote(body), timeout, request)
        return InferResult(tensors=reply["tensors"], json=reply["json"])

    def _stream(self, body: dict[str, Any], request: InferRequest) -> dict[str, Any]:
        ctx = request.context
        pieces = self._handle.options(stream=True).stream.remote(body)
        ctx.on_cancel(pieces.cancel)
        with _ray_errors(ctx):
            for piece in pieces:
                if "text" in piece:
                    ctx.emit(piece["text"])
                elif "progress" in piece:
                    ctx.progress(*piece["progress"])
                else:
                    return _checked(piece)
        raise WarmdError(Code.UNAVAILABLE, "the cluster's stream ended without a result; retry")

    def unload(self) -> None:
        self._handle = None

    def location(self) -> str:
        replicas = _registry()
        if replicas is None:
            return "cluster (its registry did not answer; `warmd cluster status` asks again)"
        held = [f"replica {replica} (node {entry['node'][:8]})" for replica, entry in sorted(replicas.items())
                if self.spec.name in entry["models"]]
        return ", ".join(held) or "cluster (no replica holds it now)"


def _deployment(address: str):  # type: ignore[no-untyped-def]
    """The process's one handle to the warmd deployment: one router, which learns where each model is."""
    global _shared
    with _shared_lock:
        if _shared is None:
            cluster.connect(address)
            from ray import serve

            try:
                _shared = serve.get_deployment_handle(cluster.DEPLOYMENT, app_name=cluster.APP)
            except Exception as exc:  # noqa: BLE001 - Serve raises several kinds for "not there"
                raise WarmdError(Code.UNAVAILABLE, f"the Ray cluster {address} runs no warmd application "
                                 f"({type(exc).__name__}: {exc}); `warmd cluster deploy` it") from None
        return _shared


def _reply(response: Any, timeout: float | None, request: InferRequest | None) -> dict[str, Any]:
    """The replica's reply to `response` (a DeploymentResponse), its error raised with its code."""
    if request is not None:
        request.context.on_cancel(response.cancel)
    with _ray_errors(request.context if request is not None else None):
        return _checked(response.result(timeout_s=timeout))


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        code, message = reply["error"]
        raise WarmdError(Code(code), message)
    return reply


@contextlib.contextmanager
def _ray_errors(ctx: Any) -> Iterator[None]:
    """Ray's own failures (a replica that died, a cancel, a timeout, back-pressure) as warmd codes."""
    from ray import exceptions
    from ray.serve import exceptions as serve_exceptions

    try:
        yield
    except WarmdError:
        raise
    except Exception as exc:
        if ctx is not None and ctx.cancelled.is_set():
            raise WarmdError(Code.CANCELLED, "the caller cancelled the request") from None
        if isinstance(exc, TimeoutError):
            raise WarmdError(Code.DEADLINE_EXCEEDED, "the request ran past its deadline on the cluster") from None
        if isinstance(exc, serve_exceptions.BackPressureError):
            raise WarmdError(Code.BUSY, f"the cluster's replicas are full ({exc}); retry later") from None
        if isinstance(exc, (exceptions.RayActorError, exceptions.ActorUnavailableError)):
            raise WarmdError(Code.UNAVAILABLE, "the cluster replica serving the request stopped; retry "
                             "(Ray Serve replaces it)") from None
        if isinstance(exc, exceptions.RayError):
            first = (str(exc).splitlines() or [""])[0]
            raise WarmdError(Code.UNAVAILABLE, f"the cluster failed the request: {type(exc).__name__}: {first}") \
                from None
        raise


def _registry() -> dict[str, Any] | None:
    """The registry's snapshot of the live replicas and their models, at most LOCATION_TTL_S old; None when
    it did not answer within REGISTRY_TIMEOUT_S (a busy or unreachable cluster: unknown, not "nowhere")."""
    global _snapshot
    with _snapshot_lock:
        taken, replicas = _snapshot
        if time.monotonic() - taken < LOCATION_TTL_S:
            return replicas
        import ray

        try:
            actor = ray.get_actor(cluster.REGISTRY, namespace=cluster.NAMESPACE)
            replicas = ray.get(actor.snapshot.remote(), timeout=REGISTRY_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - `warm ps` says so rather than fail
            replicas = None
        _snapshot = (time.monotonic(), replicas)
        return replicas
