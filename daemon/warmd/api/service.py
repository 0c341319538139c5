"""warmd.v1.Warmd: the daemon's own API, translating requests to catalog/scheduler calls."""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator

import grpc

from warmd import __version__
from warmd.adapters.install import Installer, Operation
from warmd.api.auth import TokenStore, caller
from warmd.api.calls import call_context
from warmd.api.errors import mapped, mapped_stream
from warmd.catalog import Catalog
from warmd.config import Settings
from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.inference import Inference
from warmd.plugins import Plugins, PluginState
from warmd.roles import Choice, Profiles
from warmd.providers import CallContext, InferRequest, InferResult
from warmd.scheduler import ModelView, Resident, Scheduler
from warmd.shm import SharedMemoryRegistry
from warmd.spec import ModelSpec, SpecFileError, TensorDecl
from warmd.store import Store, hub
from warmd.v1 import warmd_pb2 as pb
from warmd.v1 import warmd_pb2_grpc

_STATES = {"available": pb.AVAILABLE, "loading": pb.LOADING, "ready": pb.READY,
           "unloading": pb.UNLOADING, "failed": pb.FAILED}
POLL_S = 0.1


class WarmdService(warmd_pb2_grpc.WarmdServicer):
    def __init__(self, settings: Settings, catalog: Catalog, scheduler: Scheduler, store: Store,
                 bus: EventBus, inference: Inference, shm: SharedMemoryRegistry, tokens: TokenStore,
                 plugins: Plugins, profiles: Profiles, installer: Installer) -> None:
        self.settings, self.catalog, self.scheduler, self.store, self.bus = settings, catalog, scheduler, store, bus
        self.inference, self.shm, self.tokens, self.plugins, self.profiles = inference, shm, tokens, plugins, profiles
        self.installer = installer
        self.started_at = time.time()
        # Provenance per resident version, built once: responses are on the hot path.
        self._provenance: weakref.WeakKeyDictionary[Resident, pb.ModelSignature] = weakref.WeakKeyDictionary()

    @mapped
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        models = [self._model(s) for s in self.catalog.specs()
                  if (not request.task or s.task == request.task) and (not request.tag or request.tag in s.tags)]
        if request.state:
            models = [m for m in models if m.state == request.state]
        rejected = [spec_error(e) for e in self.catalog.rejected()]
        discovered = []
        if request.include_discovered:
            named = {s.source.ref for s in self.catalog.specs() if s.source.kind == "hf"}
            discovered = [pb.Discovered(**d) for d in hub.discover(named)]
        return pb.ListModelsResponse(models=models, rejected=rejected, discovered=discovered)

    @mapped
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        spec = self._spec(request.name)
        model = self._model(spec)
        if model.files.state in ("missing", "partial") and not model.files.bytes_total:
            model.files.bytes_total = self.store.probe_size(spec)
        model.downloads.extend(pb.DownloadRecord(**r) for r in self.store.downloads.history(request.name))
        return model

    @mapped
    def RemoveModel(self, request: pb.RemoveModelRequest, context: grpc.ServicerContext) -> pb.RemoveModelResponse:
        spec = self._spec(request.name)
        others = [s for s in self.catalog.specs() if s.name != spec.name]
        self.store.check_removable(spec, others)       # a refused rm leaves the model loaded
        self.scheduler.unload(spec.name, reason="removed", wait_s=self.settings.drain_timeout)
        if self.scheduler.view(spec.name).resident is not None:
            raise WarmdError(Code.BUSY, f"{spec.name!r} still has requests in flight; retry when they finish")
        freed, removed = self.store.remove(spec, others)
        return pb.RemoveModelResponse(freed_bytes=freed, removed=[str(p) for p in removed])

    @mapped
    def PinModel(self, request: pb.PinModelRequest, context: grpc.ServicerContext) -> pb.Model:
        self.scheduler.pin(request.name, request.pinned)
        return self._model(self._spec(request.name))

    @mapped
    def AddModel(self, request: pb.AddModelRequest, context: grpc.ServicerContext) -> pb.AddModelResponse:
        repo = request.source.removeprefix("hf://").removeprefix("hf:").strip("/")
        if not repo or request.source == repo:
            raise WarmdError(Code.INVALID_ARGUMENT, f"source {request.source!r} must look like hf://org/name "
                             "(a plugin's repository: git+URL[@REV] or the folder of a local git repository)")
        name = request.name or spec_name(repo)
        self.catalog.check_free(name)                  # refused before the hub is asked
        if self.store.offline or hub.hf_offline():
            raise WarmdError(Code.NETWORK_FORBIDDEN, "the daemon is offline; `warm add` asks the hub for metadata")
        body = hub.suggest_spec(repo, request.revision or "main")
        path = self.catalog.write_spec(name, body)
        return pb.AddModelResponse(file=str(path), name=name, provider=body["provider"], task=body["task"])

    @mapped_stream
    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        self._spec(request.name)
        keep_alive = request.keep_alive_s if request.HasField("keep_alive_s") else None
        sub = self.bus.subscribe(model=request.name)
        try:
            job, future = self.scheduler.start_load(request.name, keep_alive=keep_alive)
            finished = yield from _follow(sub, future, context, "model.loaded", job.id)
            if not finished:      # it was resident already
                yield pb.Event(time=time.time(), kind="model.loaded", model=request.name, job_id=job.id,
                               message="already resident")
        finally:
            sub.close()

    @mapped_stream
    def PullModel(self, request: pb.PullModelRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        spec = self._spec(request.name)
        sub = self.bus.subscribe(model=request.name)
        try:
            if self.store.state(spec).state in ("verified", "complete"):
                yield pb.Event(time=time.time(), kind="download.finished", model=spec.name,
                               message="already on disk")
                return
            job, future = self.store.pull(spec)
            try:
                finished = yield from _follow(sub, future, context, "download.finished", job.id)
            finally:
                self.store.downloads.leave(job.id)   # the last caller to leave early cancels it
            if not finished:      # the transfer ended between our subscribe and our join
                yield pb.Event(time=time.time(), kind="download.finished", model=spec.name, job_id=job.id)
        finally:
            sub.close()

    @mapped
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.CancelJobResponse:
        if not self.store.downloads.cancel(request.job_id):
            raise WarmdError(Code.INVALID_ARGUMENT, f"no running job {request.job_id!r}; `warm watch` shows job ids")
        return pb.CancelJobResponse(cancelled=True)

    @mapped
    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext) -> pb.Model:
        self.scheduler.unload(request.name, wait_s=self.settings.drain_timeout)
        spec = self.catalog.get(request.name)
        return self._model(spec) if spec else pb.Model(name=request.name, state=pb.AVAILABLE)

    @mapped
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        s = self.settings
        return pb.StatusResponse(
            version=__version__, pid=os.getpid(), started_at=self.started_at, socket=str(s.socket),
            tcp=s.tcp, specs_dir=str(s.specs_dir), config_file=str(s.config_file or ""),
            log_file=str(s.log_file), torch_imported="torch" in sys.modules,
            resident=[self._model(r.spec) for r in self.scheduler.resident()],
            models=len(self.catalog.specs()), rejected=len(self.catalog.rejected()),
            offline=s.offline, downloads=s.downloads, hf_cache=str(hub.cache_root()),
            plugins_dir=str(s.plugins_dir),
            jobs=[pb.JobInfo(id=j.id, kind=j.kind, model=j.model, progress=j.last, message=j.last_message)
                  for j in self.store.downloads.running()],
            plugins=[plugin_proto(p) for p in self.plugins.states()],
            devices=[pb.DeviceStatus(name=d.name, total=d.total, budget=d.budget, used=used,
                                     free=-1 if free is None else free, reserve=d.reserve, simulated=d.simulated)
                     for d, used, free in self.scheduler.device_usage()])

    @mapped
    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        owner = caller(context)
        infer_request = self._infer_request(request, owner, call_context(context))
        resident, result = self.inference.run(request.model, infer_request, _keep_alive(request))
        return self._infer_response(request, resident, result, owner)

    @mapped_stream
    def InferStream(self, request: pb.InferRequest, context: grpc.ServicerContext) -> Iterator[pb.InferChunk]:
        owner = caller(context)
        chunks: queue.Queue = queue.Queue()
        infer_request = self._infer_request(request, owner, call_context(context, lambda *c: chunks.put(c)))

        def work() -> None:
            try:
                chunks.put(("result", self.inference.run(request.model, infer_request, _keep_alive(request))))
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC's thread, which maps it
                chunks.put(("error", exc))

        threading.Thread(target=work, name=f"stream-{request.model}", daemon=True).start()
        while True:
            kind, value = chunks.get()
            if kind == "text":
                yield pb.InferChunk(text=value)
            elif kind == "progress":
                yield pb.InferChunk(progress=pb.Progress(phase="infer", done=value[0], total=value[1], unit=value[2]))
            elif kind == "error":
                raise value
            else:
                yield pb.InferChunk(result=self._infer_response(request, *value, owner))
                return

    def _infer_request(self, request: pb.InferRequest, owner: str, ctx: CallContext) -> InferRequest:
        from warmd import tensors   # numpy: imported on the first request, not at start-up

        inputs = {}
        for t in request.inputs:
            if t.name in inputs:
                raise WarmdError(Code.INVALID_ARGUMENT, f"input {t.name!r} is given twice")
            if t.HasField("region"):
                what = f"input {t.name!r}"
                raw = self.shm.read(owner, t.region.region, t.region.offset, t.region.byte_size, what)
                inputs[t.name] = tensors.decode(t.name, t.dtype, t.shape, raw)
            else:
                inputs[t.name] = tensors.from_proto(t)
        return InferRequest(tensors=inputs, text=list(request.text),
                            parameters=parse_parameters(request.parameters_json), context=ctx)

    def _infer_response(self, request: pb.InferRequest, resident: Resident, result: InferResult,
                        owner: str) -> pb.InferResponse:
        from warmd import tensors

        wanted = list(request.outputs) or list(result.tensors)
        unknown = [n for n in [*wanted, *request.output_regions] if n not in result.tensors]
        if unknown:
            raise WarmdError(Code.INVALID_ARGUMENT, f"unknown output(s) {', '.join(unknown)}; "
                             f"{request.model!r} gives {', '.join(result.tensors)}")
        outputs = []
        for name in dict.fromkeys([*wanted, *request.output_regions]):
            if name in request.output_regions:
                ref = request.output_regions[name]
                dtype, data = tensors.encode(name, result.tensors[name])
                self.shm.write(owner, ref.region, ref.offset, ref.byte_size, tensors.raw(dtype, data),
                               f"output {name!r}")
                outputs.append(pb.Tensor(name=name, dtype=dtype, shape=data.shape, region=ref))
            else:
                outputs.append(tensors.to_proto(name, result.tensors[name]))
        return pb.InferResponse(
            model=request.model, outputs=outputs, json=json.dumps(result.json) if result.json is not None else "",
            signature=self._signature(resident))

    @mapped
    def ResolveRole(self, request: pb.ResolveRoleRequest, context: grpc.ServicerContext) -> pb.RoleChoice:
        return _choice(self.profiles.resolve(request.role, request.profile))

    @mapped
    def ListProfiles(self, request: pb.ListProfilesRequest, context: grpc.ServicerContext) -> pb.ListProfilesResponse:
        active = self.profiles.active()
        return pb.ListProfilesResponse(active=active, profiles=self.profiles.names(),
                                       roles=[_choice(c) for c in self.profiles.choices(active)])

    @mapped
    def UseProfile(self, request: pb.UseProfileRequest, context: grpc.ServicerContext) -> pb.UseProfileResponse:
        return pb.UseProfileResponse(roles=[_choice(c) for c in self.profiles.use(request.name)])

    @mapped
    def ChooseRoleModel(self, request: pb.ChooseRoleModelRequest, context: grpc.ServicerContext) -> pb.RoleChoice:
        return _choice(self.profiles.choose(request.role, request.model))

    @mapped
    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext) -> pb.CreateTokenResponse:
        token = self.tokens.create(request.name, request.scope)
        info = self.tokens.lookup(token)
        return pb.CreateTokenResponse(token=token, info=pb.TokenInfo(name=info.name, scope=info.scope,
                                                                     created=info.created))

    @mapped
    def ListTokens(self, request: pb.ListTokensRequest, context: grpc.ServicerContext) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(tokens=[pb.TokenInfo(name=t.name, scope=t.scope, created=t.created)
                                             for t in self.tokens.list()])

    @mapped
    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.RevokeTokenResponse:
        self.tokens.revoke(request.name)
        return pb.RevokeTokenResponse()

    @mapped
    def RegisterRegion(self, request: pb.RegisterRegionRequest,
                       context: grpc.ServicerContext) -> pb.RegisterRegionResponse:
        self.shm.register(caller(context), request.name, request.key, request.offset, request.byte_size)
        return pb.RegisterRegionResponse()

    @mapped
    def UnregisterRegion(self, request: pb.UnregisterRegionRequest,
                         context: grpc.ServicerContext) -> pb.UnregisterRegionResponse:
        self.shm.unregister(caller(context), request.name)
        return pb.UnregisterRegionResponse()

    @mapped_stream
    def InstallPlugin(self, request: pb.InstallPluginRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        yield from self._operate(self.installer.install(request.source, request.name), "plugin.installed", context)

    @mapped_stream
    def UpdatePlugin(self, request: pb.UpdatePluginRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        yield from self._operate(self.installer.update(request.name), "plugin.updated", context)

    @mapped
    def RemovePlugin(self, request: pb.RemovePluginRequest, context: grpc.ServicerContext) -> pb.RemovePluginResponse:
        return pb.RemovePluginResponse(removed=self.installer.remove(request.name))

    @mapped
    def ListPlugins(self, request: pb.ListPluginsRequest, context: grpc.ServicerContext) -> pb.ListPluginsResponse:
        updating = self.installer.updating()
        return pb.ListPluginsResponse(plugins=[plugin_proto(p, p.name in updating) for p in self.plugins.states()])

    def _operate(self, op: Operation, final_kind: str, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        """Run a plugin operation, streaming its events; a caller who leaves cancels it."""
        sub = self.bus.subscribe(job_id=op.id)
        try:
            op.start()
            yield from _follow(sub, op.future, context, final_kind, op.id)
        finally:
            sub.close()
            if not op.future.done():
                op.cancel()

    @mapped_stream
    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        sub = self.bus.subscribe(kinds=request.kinds, model=request.model)
        context.add_callback(sub.close)
        try:
            # First, say the subscription exists: a client that waits for this misses nothing after it.
            yield pb.Event(time=time.time(), kind="watch.started")
            while context.is_active() and not sub.closed:
                event = sub.get(timeout=0.5)
                if event is not None:
                    yield event
            if sub.overflowed:
                raise WarmdError(Code.UNAVAILABLE, "this watch stream fell behind and was closed; reconnect")
        finally:
            sub.close()

    # ---- helpers -------------------------------------------------------------------------------
    def _signature(self, resident: Resident) -> pb.ModelSignature:
        found = self._provenance.get(resident)
        if found is None:
            found = self._provenance[resident] = signature(resident)
        return found

    def _spec(self, name: str) -> ModelSpec:
        return self.catalog.require(name)

    def _model(self, spec: ModelSpec) -> pb.Model:
        view = self.scheduler.view(spec.name)
        file_error = next((e for e in self.catalog.rejected() if e.file == spec.file), None)
        model = model_proto(spec, view, file_error, self.scheduler.default_keep_alive)
        files = self.store.state(spec)
        model.files.CopyFrom(pb.Files(state=files.state, bytes_on_disk=files.bytes_on_disk,
                                      revision=files.revision, bytes_total=files.bytes_total))
        return model


def spec_name(repo_id: str) -> str:
    """A valid model name from a repo id: `sentence-transformers/all-MiniLM-L6-v2` -> `all-minilm-l6-v2`."""
    base = repo_id.rsplit("/", 1)[-1].lower()
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    return (cleaned or "model")[:64]


def _follow(sub, future, context: grpc.ServicerContext, final_kind: str,  # type: ignore[no-untyped-def]
            job_id: str) -> Iterator[pb.Event]:
    """Yield the subscription's events until `future` is done; raise its error. Returns whether the
    job's own `final_kind` event was sent."""
    sent_final = False
    future.add_done_callback(lambda _: sub.wake())     # do not sit out a poll interval once it is done
    while context.is_active():
        done = future.done()
        while (event := sub.get(timeout=0 if done else POLL_S)) is not None:
            sent_final |= event.kind == final_kind and event.job_id == job_id
            yield event
        if done:
            break
    if not future.done():   # the caller left; the job goes on for the other waiters
        return sent_final
    future.result()
    return sent_final


def model_proto(spec: ModelSpec, view: ModelView, file_error: SpecFileError | None,
                default_keep_alive: float) -> pb.Model:
    model = pb.Model(
        name=spec.name, version=spec.version, description=spec.description, tags=list(spec.tags),
        task=spec.task, provider=spec.provider, source=spec.source.describe(), device=spec.device,
        precision=spec.precision, pin=spec.pin if view.pinned is None else view.pinned,
        keep_alive_s=default_keep_alive if spec.keep_alive is None else spec.keep_alive,
        preload=spec.preload, file=str(spec.file), signature=spec.signature, state=_STATES[view.state],
        inputs=[tensor_spec(d) for d in spec.inputs], outputs=[tensor_spec(d) for d in spec.outputs])
    r = view.resident
    if r is not None:
        model.residency.CopyFrom(pb.Residency(
            device=r.device, estimated_bytes=r.estimated_bytes, measured_bytes=r.measured_bytes,
            loaded_at=r.loaded_at, last_used=r.last_used, expires_at=r.expires_at, in_flight=r.in_flight,
            pinned=r.pinned, tier=r.shown_tier))
    if file_error is not None:
        model.error_code = file_error.code.value
        model.error = f"the file's latest edit was rejected, still serving the previous version: {file_error}"
    elif view.error is not None:
        stale = r is not None and r.spec.signature != spec.signature     # serving, but not this version
        model.error_code = view.error.code.value
        model.error = (f"the load of its new version failed, still serving the previous version: "
                       f"{view.error.message}" if stale else view.error.message)
    return model


def plugin_proto(state: PluginState, updating: bool = False) -> pb.Plugin:
    plugin = pb.Plugin(name=state.name, provider=state.provider, folder=str(state.folder), error=state.error,
                       state="disabled" if state.error else "updating" if updating else
                       "installed" if state.record else "loaded", isolated=state.record is not None)
    record = state.record
    if record is not None:
        gate = {k: v for k, v in record.gate.items() if k in pb.GateResult.DESCRIPTOR.fields_by_name}
        plugin.MergeFrom(pb.Plugin(source=record.source, commit=record.commit, gate=pb.GateResult(**gate),
                                   models=[Path(f).stem for f in record.specs]))
    return plugin


def spec_error(err: SpecFileError) -> pb.SpecError:
    return pb.SpecError(file=str(err.file), code=err.code.value, field=err.field, line=err.line,
                        message=err.message)


def tensor_spec(d: TensorDecl) -> pb.TensorSpec:
    return pb.TensorSpec(name=d.name, dtype=d.dtype, shape=list(d.shape))


def signature(r: Resident) -> pb.ModelSignature:
    src = r.spec.source
    return pb.ModelSignature(name=r.spec.name, version=r.spec.version, signature=r.spec.signature,
                             source=src.describe(), revision=src.revision if src.kind == "hf" else "",
                             precision=r.spec.precision, device=r.device)


def parse_parameters(text: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"parameters_json is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WarmdError(Code.INVALID_ARGUMENT, "parameters_json must be a JSON object")
    return value


def _keep_alive(request: pb.InferRequest) -> float | None:
    return request.keep_alive_s if request.HasField("keep_alive_s") else None


def _choice(choice: Choice) -> pb.RoleChoice:
    return pb.RoleChoice(role=choice.role, model=choice.model, candidates=choice.candidates, chosen=choice.chosen,
                         passed_over=[pb.PassedOver(model=m, reason=r) for m, r in choice.passed_over])
