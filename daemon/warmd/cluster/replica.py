"""The Ray Serve deployment that runs warmd's models on a cluster. It imports Ray: only cluster replicas and
`warmd cluster deploy | status | delete` import this module.

Rules held here:
- A spec means what it means locally: each replica parses the specs folder `deploy` shipped with it (Ray's
  runtime_env working_dir, so relative `path:` sources and factory files travel too) with warmd's own
  parser, resolves files through warmd's Store (verified downloads into the node's Hugging Face cache,
  url sources into its data folder) and loads them with the spec's provider.
- Residency is Ray's: the multiplexed loader (`serve.multiplexed`) keeps at most `models_per_replica`
  models per replica and evicts the least recently used one; an evicted model's provider is unloaded.
  A request names its model as the multiplexed id; the deployment's router (warmd.cluster.routing) sends
  it to a replica that holds the model.
- Replies are plain data, never exceptions: {"tensors", "json"} or {"error": [code, message]}, so a
  stable code crosses the cluster unchanged; whatever a provider raises is classified as it is locally.
- Every replica registers with the registry (a detached actor) and reports each load and eviction: the
  one record of which replica holds which model, read by `warmd cluster status` and the front's `warm ps`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from warmd import paths
from warmd.cluster import DEPLOYMENT, NAMESPACE, REGISTRY
from warmd.errors import Code, WarmdError, at_boundary
from warmd.events import EventBus
from warmd.providers import PROVIDERS, CallContext, InferRequest, Provider
from warmd.spec import ModelSpec

log = logging.getLogger("warmd.cluster")


@ray.remote(num_cpus=0)
class Registry:
    """Which replica holds which model (on which of its devices), and how often it loaded each model."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict[str, Any]] = {}

    def joined(self, replica: str, actor: str, pid: int, node: str) -> None:
        self.replicas[replica] = {"actor": actor, "pid": pid, "node": node, "models": [], "loads": {},
                                  "devices": {}}

    def loaded(self, replica: str, model: str, device: str) -> None:
        entry = self.replicas[replica]
        entry["models"].append(model)
        entry["loads"][model] = entry["loads"].get(model, 0) + 1
        entry["devices"][model] = device

    def evicted(self, replica: str, model: str) -> None:
        entry = self.replicas.get(replica)
        if entry is not None and model in entry["models"]:
            entry["models"].remove(model)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The live replicas (a dead one's record is dropped: Serve starts another in its place)."""
        for replica, entry in list(self.replicas.items()):
            try:
                ray.get_actor(entry["actor"], namespace="serve")
            except ValueError:
                del self.replicas[replica]
        return self.replicas


def registry():  # type: ignore[no-untyped-def]
    """The registry actor, created on first use; it outlives replicas (`warmd cluster delete` ends it)."""
    return Registry.options(name=REGISTRY, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


class Loaded:
    """One model held by a replica. Ray's multiplexer calls `__del__` when its LRU evicts the model."""

    def __init__(self, spec: ModelSpec, provider: Provider, on_evict: Any) -> None:
        self.spec, self.provider, self._on_evict = spec, provider, on_evict
        self._held = True

    def __del__(self) -> None:
        if self._held:        # once: Ray calls it on eviction, Python again when the object goes
            self._held = False
            self.provider.unload()
            self._on_evict(self.spec.name)


@serve.deployment(name=DEPLOYMENT)
class WarmdModels:
    """One replica: the specs it was deployed with, warmd's store, and an LRU of loaded models."""

    def __init__(self, models_per_replica: int, path_roots: list[str]) -> None:
        from warmd.catalog import is_spec_file
        from warmd.spec import parse_spec_file
        from warmd.store import Store

        root = Path.cwd()      # the specs folder, unpacked here by Ray (runtime_env working_dir)
        roots = [Path(p) for p in path_roots] + [root]
        self.specs = {s.name: s for s in (parse_spec_file(f, root, roots, PROVIDERS)
                                          for f in sorted(root.iterdir()) if is_spec_file(f))}
        self.store = Store(paths.default_data_dir(), EventBus())   # the node's data folder and HF cache
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.registry = registry()
        ray.get(self.registry.joined.remote(self.replica, ray.get_runtime_context().get_actor_name(), os.getpid(),
                                            ray.get_runtime_context().get_node_id()))

        async def load(name: str) -> Loaded:
            return await asyncio.get_running_loop().run_in_executor(None, self._build, name)

        self._model = serve.multiplexed(max_num_models_per_replica=models_per_replica)(load)

    def _build(self, name: str) -> Loaded:
        spec = self.specs.get(name)
        if spec is None:
            raise WarmdError(Code.MODEL_NOT_FOUND, f"the cluster's specs define no model {name!r}; deploy the "
                             "specs folder that has it (`warmd cluster deploy --specs DIR`)")
        files = self.store.ensure(spec)
        device = _device(spec)
        cls = PROVIDERS[spec.provider]
        if not cls.supports(spec, device):
            raise WarmdError(Code.UNSUPPORTED_PROVIDER, f"provider {spec.provider} cannot run on {device}")
        provider = cls(spec, files, device)
        provider.load()
        ray.get(self.registry.loaded.remote(self.replica, name, device))
        return Loaded(spec, provider, lambda model: self.registry.evicted.remote(self.replica, model))

    async def load(self) -> dict[str, Any]:
        """Make sure the request's model is loaded here: {} or {"error"}."""
        name = serve.get_multiplexed_model_id()
        try:
            await self._model(name)
        except Exception as exc:  # noqa: BLE001 - the reply carries every failure as a code
            return _error(at_boundary(exc, Code.PROVIDER_FAILED, f"load of {name!r}", log))
        return {}

    async def infer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one request on the request's model: `payload` holds "tensors" (numpy arrays by name), "text",
        "parameters" and "timeout_s" (the caller's deadline, or None). Returns {"tensors", "json"} or {"error"}."""
        request = _request(payload)
        return await self._run(request)

    async def stream(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """As `infer`, yielding {"text"} and {"progress"} as the provider reports them, then the reply."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        request = _request(payload, lambda kind, value: loop.call_soon_threadsafe(pieces.put_nowait, {kind: value}))
        run = asyncio.ensure_future(self._run(request))
        run.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            yield run.result()
        finally:
            run.cancel()

    async def _run(self, request: InferRequest) -> dict[str, Any]:
        from warmd.inference import provider_error

        name = serve.get_multiplexed_model_id()
        try:
            model = await self._model(name)
        except Exception as exc:  # noqa: BLE001
            return _error(at_boundary(exc, Code.PROVIDER_FAILED, f"load of {name!r}", log))
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, model.provider.infer, request)
        except asyncio.CancelledError:
            request.context.cancel()      # the caller went away: the provider stops at its next check
            raise
        except WarmdError as err:
            return _error(err)
        except Exception as exc:  # noqa: BLE001 - the same boundary as a local daemon's
            return _error(provider_error(model.spec, request, exc))
        return {"tensors": result.tensors, "json": result.json}


def application(replicas: int, models_per_replica: int, gpus_per_replica: float, path_roots: list[Path],
                max_ongoing_requests: int = 64):  # type: ignore[no-untyped-def]
    """The Serve application `warmd cluster deploy` runs (see WarmdModels); the specs folder comes with the
    deploying driver's working_dir."""
    from ray.serve.config import RequestRouterConfig

    from warmd.cluster.routing import Router

    return WarmdModels.options(
        num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
        graceful_shutdown_wait_loop_s=0.2,     # a stopping replica leaves as soon as its requests are done
        ray_actor_options={"num_cpus": 1, "num_gpus": gpus_per_replica},
        request_router_config=RequestRouterConfig(request_router_class=Router),
    ).bind(models_per_replica, [str(p) for p in path_roots])


def _device(spec: ModelSpec) -> str:
    """The spec's device among the GPUs Ray gave this replica (`--gpus-per-replica`), else the CPU."""
    gpus = len(ray.get_gpu_ids())
    if spec.device == "cpu" or (spec.device == "auto" and not gpus):
        return "cpu"
    index = int(spec.device.partition(":")[2] or 0) if spec.device.startswith("cuda") else 0
    if index >= gpus:
        raise WarmdError(Code.DEVICE_UNAVAILABLE, f"{spec.name} asks for {spec.device}; this replica has "
                         f"{gpus} GPU(s): deploy with --gpus-per-replica, or set `device: auto` or `cpu`")
    return f"cuda:{index}"


def _request(payload: dict[str, Any], sink: Any = None) -> InferRequest:
    timeout = payload.get("timeout_s")
    context = CallContext(deadline=time.monotonic() + timeout if timeout else None, sink=sink)
    return InferRequest(tensors=payload["tensors"], text=payload["text"], parameters=payload["parameters"],
                        context=context)


def _error(err: WarmdError) -> dict[str, Any]:
    return {"error": [err.code.value, err.message]}
