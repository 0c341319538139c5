"""warmd.v1.Warmd: the daemon's own API, as translation between its messages and the application layer.

Each method reads its request into a call of `App` (warmd.app) and writes the answer back as protobuf; no
rule of the daemon lives here. ListModels keeps each model's message serialized while what it shows is
unchanged (a catalog of 10 000 specs answers from those bytes; api/serialized.py). Tensors travel as raw little-endian bytes or as windows of the caller's
shared-memory regions (the caller is told apart by its TCP token, api/auth.caller).
"""
from __future__ import annotations

import json
import weakref
from typing import Any, Iterator

import grpc

from warmd.api.auth import caller
from warmd.api.aio import inline_first
from warmd.api.calls import call_context
from warmd.api.errors import mapped, mapped_stream
from warmd.api.serialized import Serialized, field_bytes
from warmd.app import App, Inferred, ModelInfo, Provenance, Target, select_outputs
from warmd.app.views import Discovered, PluginInfo
from warmd.errors import Code, WarmdError
from warmd.providers import CallContext, InferRequest
from warmd.roles import Choice
from warmd.scheduler import Resident, eviction_proto
from warmd.spec import SpecFileError, TensorDecl
from warmd.v1 import MODEL_STATES, warmd_pb2_grpc
from warmd.v1 import warmd_pb2 as pb

_STATE_NAMES = {value: name for name, value in MODEL_STATES.items()}


class WarmdService(warmd_pb2_grpc.WarmdServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        # Provenance per resident version, built once: responses are on the hot path.
        self._provenance: weakref.WeakKeyDictionary[Resident, pb.ModelSignature] = weakref.WeakKeyDictionary()
        self._listed: dict[str, tuple[tuple, bytes]] = {}     # model name -> (what it showed, its field bytes)
        # The last unfiltered listing: (App.listing_version's value, its bytes in runs between the names of
        # models in the scheduler's views, which are serialized again on every call).
        self._listing: tuple[Any, list[bytes | str]] = (None, [])

    # ---- models --------------------------------------------------------------------------------
    @mapped
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> Serialized:
        unfiltered = not (request.task or request.tag or request.state or request.include_discovered)
        listing = self.app.listing_version() if unfiltered else None
        if listing is not None and listing[0] == self._listing[0]:
            # Nothing outside the scheduler's views changed: their models from the kept bytes, the rest anew.
            try:
                return Serialized(b"".join(part if isinstance(part, bytes) else self._listed_bytes(self.app.model(part))
                                           for part in self._listing[1]))
            except WarmdError:
                pass        # one of those went from the catalog since: list everything again
        models = self.app.models(request.task, request.tag, _STATE_NAMES.get(request.state, ""))
        discovered = self.app.discovered() if request.include_discovered else []
        listed = [self._listed_bytes(m) for m in models]
        if len(self._listed) > len(models) and not (request.task or request.tag or request.state):
            names = {m.name for m in models}
            self._listed = {n: v for n, v in self._listed.items() if n in names}    # forget removed models
        rest = pb.ListModelsResponse(rejected=[spec_error(e) for e in self.app.rejected()],
                                     discovered=[discovered_proto(d) for d in discovered]).SerializeToString()
        if listing is not None:
            self._listing = (listing[0], _parts(models, listed, rest, listing[1]))
        return Serialized(b"".join(listed) + rest)

    def _listed_bytes(self, m: ModelInfo) -> bytes:
        """The model as ListModelsResponse's field `models`, serialized once while what it shows is unchanged
        (its spec, state, errors and files); a resident model's figures change with every request."""
        shown = (m.spec, m.view, m.file_error, m.files)
        known = self._listed.get(m.name)
        if known is not None and known[0] == shown:
            return known[1]
        data = field_bytes(1, model_proto(m).SerializeToString())
        if m.resident is None:
            self._listed[m.name] = (shown, data)
        return data

    @mapped
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        info = self.app.show(request.name)
        model = model_proto(info)
        model.downloads.extend(pb.DownloadRecord(**r) for r in info.downloads)
        return model

    @mapped
    def RemoveModel(self, request: pb.RemoveModelRequest, context: grpc.ServicerContext) -> pb.RemoveModelResponse:
        removed = self.app.remove(request.name)
        return pb.RemoveModelResponse(freed_bytes=removed.freed_bytes, removed=[str(p) for p in removed.paths])

    @mapped
    def PinModel(self, request: pb.PinModelRequest, context: grpc.ServicerContext) -> pb.Model:
        return model_proto(self.app.pin(request.name, request.pinned))

    @mapped
    def AddModel(self, request: pb.AddModelRequest, context: grpc.ServicerContext) -> pb.AddModelResponse:
        added = self.app.add(request.source, request.name, request.revision)
        return pb.AddModelResponse(file=str(added.file), name=added.name, provider=added.provider, task=added.task)

    @mapped_stream
    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        keep_alive = request.keep_alive_s if request.HasField("keep_alive_s") else None
        with self.app.load(request.name, keep_alive=keep_alive) as load:
            yield from load.events(context.is_active)

    @mapped_stream
    def PullModel(self, request: pb.PullModelRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        with self.app.pull(request.name) as pull:
            yield from pull.events(context.is_active)

    @mapped
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.CancelJobResponse:
        self.app.cancel(request.job_id)
        return pb.CancelJobResponse(cancelled=True)

    @mapped
    def PlanLoad(self, request: pb.PlanLoadRequest, context: grpc.ServicerContext) -> pb.LoadPlan:
        run = self.app.plan_load(request.name)
        return pb.LoadPlan(model=run.model, action=run.action, device=run.device, bytes=run.need,
                           free_bytes=run.free, evictions=[eviction_proto(0.0, m) for m in run.moves],
                           download=run.download, policy=self.app.settings.eviction, message=run.message,
                           gpu_layers=run.gpu_layers, total_layers=run.total_layers, host_bytes=run.host_bytes)

    @mapped
    def ListEvictions(self, request: pb.ListEvictionsRequest,
                      context: grpc.ServicerContext) -> pb.ListEvictionsResponse:
        return pb.ListEvictionsResponse(evictions=[eviction_proto(t, m) for t, m in self.app.evictions(request.model)])

    @mapped
    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext) -> pb.Model:
        info = self.app.unload(request.name)
        return model_proto(info) if info is not None else pb.Model(name=request.name, state=pb.AVAILABLE)

    @mapped
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        st = self.app.status()
        s = st.settings
        return pb.StatusResponse(
            version=st.version, pid=st.pid, started_at=st.started_at, socket=str(s.socket), tcp=s.tcp,
            specs_dir=str(s.specs_dir), config_file=str(s.config_file or ""), log_file=str(s.log_file),
            torch_imported=st.torch_imported, resident=[model_proto(m) for m in st.resident],
            models=st.models, rejected=st.rejected, offline=s.offline, downloads=s.downloads,
            hf_cache=str(st.hf_cache), plugins_dir=str(s.plugins_dir),
            jobs=[pb.JobInfo(id=j.id, kind=j.kind, model=j.model, progress=j.last, message=j.last_message)
                  for j in st.jobs],
            plugins=[plugin_proto(p) for p in st.plugins],
            devices=[pb.DeviceStatus(name=u.device.name, total=u.device.total, budget=u.device.budget, used=u.used,
                                     free=-1 if u.free is None else u.free, reserve=u.device.reserve,
                                     simulated=u.device.simulated)
                     for u in st.devices])

    @mapped_stream
    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        stream = self.app.watch(request.kinds, request.model)
        context.add_callback(stream.close)
        yield from stream.events(context.is_active)

    # ---- inference -----------------------------------------------------------------------------
    @inline_first
    @mapped
    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        owner = caller(context)
        target = self.app.target(request.model)
        inferred = self.app.infer(target, self._infer_request(target, request, owner, call_context(context)),
                                  _keep_alive(request))
        return self._infer_response(request, inferred, owner)

    @mapped_stream
    def InferStream(self, request: pb.InferRequest, context: grpc.ServicerContext) -> Iterator[pb.InferChunk]:
        owner = caller(context)
        target = self.app.target(request.model)
        call = self._infer_request(target, request, owner, call_context(context))
        for chunk in self.app.infer_stream(target, call, _keep_alive(request)):
            if chunk.result is not None:
                yield pb.InferChunk(result=self._infer_response(request, chunk.result, owner))
            elif chunk.progress is not None:
                done, total, unit = chunk.progress
                yield pb.InferChunk(progress=pb.Progress(phase="infer", done=done, total=total, unit=unit))
            else:
                yield pb.InferChunk(text=chunk.text)

    def _infer_request(self, target: Target, request: pb.InferRequest, owner: str, ctx: CallContext) -> InferRequest:
        import warmd.tensors as codec   # numpy: imported on the first request, not at start-up

        inputs: dict[str, Any] = {}
        for t in request.inputs:
            if t.name in inputs:
                raise WarmdError(Code.INVALID_ARGUMENT, f"input {t.name!r} is given twice")
            if t.HasField("region"):
                inputs[t.name] = self.app.regions.read_input(owner, t.name, t.dtype, t.shape, t.region.region,
                                                             t.region.offset, t.region.byte_size,
                                                             target.device_tensors)
            else:
                inputs[t.name] = codec.from_proto(t)
        return InferRequest(tensors=inputs, text=list(request.text),
                            parameters=parse_parameters(request.parameters_json), context=ctx)

    def _infer_response(self, request: pb.InferRequest, inferred: Inferred, owner: str) -> pb.InferResponse:
        import warmd.tensors as codec

        result, regions = inferred.result, request.output_regions
        outputs = []
        for name in select_outputs(request.model, result, request.outputs, regions):
            if name in regions:
                ref = regions[name]
                dtype, shape = self.app.regions.write_output(owner, name, result.tensors[name], ref.region,
                                                             ref.offset, ref.byte_size)
                outputs.append(pb.Tensor(name=name, dtype=dtype, shape=shape, region=ref))
            else:
                outputs.append(codec.to_proto(name, result.tensors[name]))
        return pb.InferResponse(
            model=request.model, outputs=outputs, json=json.dumps(result.json) if result.json is not None else "",
            signature=self._signature(inferred.resident))

    def _signature(self, resident: Resident) -> pb.ModelSignature:
        found = self._provenance.get(resident)
        if found is None:
            found = self._provenance[resident] = pb.ModelSignature(**vars(Provenance.of(resident)))
        return found

    # ---- roles and profiles --------------------------------------------------------------------
    @mapped
    def ResolveRole(self, request: pb.ResolveRoleRequest, context: grpc.ServicerContext) -> pb.RoleChoice:
        return _choice(self.app.resolve_role(request.role, request.profile))

    @mapped
    def ListProfiles(self, request: pb.ListProfilesRequest, context: grpc.ServicerContext) -> pb.ListProfilesResponse:
        active, names, choices = self.app.active_profile()
        return pb.ListProfilesResponse(active=active, profiles=names, roles=[_choice(c) for c in choices])

    @mapped
    def UseProfile(self, request: pb.UseProfileRequest, context: grpc.ServicerContext) -> pb.UseProfileResponse:
        return pb.UseProfileResponse(roles=[_choice(c) for c in self.app.use_profile(request.name)])

    @mapped
    def ChooseRoleModel(self, request: pb.ChooseRoleModelRequest, context: grpc.ServicerContext) -> pb.RoleChoice:
        return _choice(self.app.choose_role(request.role, request.model))

    # ---- tokens and shared memory --------------------------------------------------------------
    @mapped
    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext) -> pb.CreateTokenResponse:
        token, info = self.app.create_token(request.name, request.scope)
        return pb.CreateTokenResponse(token=token, info=pb.TokenInfo(name=info.name, scope=info.scope,
                                                                     created=info.created))

    @mapped
    def ListTokens(self, request: pb.ListTokensRequest, context: grpc.ServicerContext) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(tokens=[pb.TokenInfo(name=t.name, scope=t.scope, created=t.created)
                                             for t in self.app.list_tokens()])

    @mapped
    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.RevokeTokenResponse:
        self.app.revoke_token(request.name)
        return pb.RevokeTokenResponse()

    @mapped
    def RegisterRegion(self, request: pb.RegisterRegionRequest,
                       context: grpc.ServicerContext) -> pb.RegisterRegionResponse:
        self.app.regions.register_system(caller(context), request.name, request.key, request.offset,
                                         request.byte_size)
        return pb.RegisterRegionResponse()

    @mapped
    def UnregisterRegion(self, request: pb.UnregisterRegionRequest,
                         context: grpc.ServicerContext) -> pb.UnregisterRegionResponse:
        self.app.regions.unregister_system(caller(context), request.name)
        return pb.UnregisterRegionResponse()

    # ---- plugins -------------------------------------------------------------------------------
    @mapped_stream
    def InstallPlugin(self, request: pb.InstallPluginRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        with self.app.install_plugin(request.source, request.name, request.draft, request.accept) as install:
            yield from install.events(context.is_active)

    @mapped_stream
    def UpdatePlugin(self, request: pb.UpdatePluginRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        with self.app.update_plugin(request.name) as update:
            yield from update.events(context.is_active)

    @mapped
    def RemovePlugin(self, request: pb.RemovePluginRequest, context: grpc.ServicerContext) -> pb.RemovePluginResponse:
        return pb.RemovePluginResponse(removed=self.app.remove_plugin(request.name))

    @mapped
    def ListPlugins(self, request: pb.ListPluginsRequest, context: grpc.ServicerContext) -> pb.ListPluginsResponse:
        return pb.ListPluginsResponse(plugins=[plugin_proto(p) for p in self.app.plugin_list()])


# ---- messages ----------------------------------------------------------------------------------
def _parts(models: list[ModelInfo], listed: list[bytes], rest: bytes, asked: frozenset[str]) -> list[bytes | str]:
    """A listing as runs of bytes joined once, with the names in `asked` between them (see ListModels)."""
    parts: list[bytes | str] = []
    run: list[bytes] = []
    for m, data in zip(models, listed):
        if m.name in asked:
            parts += [b"".join(run), m.name]
            run = []
        else:
            run.append(data)
    return [*parts, b"".join(run) + rest]


def model_proto(m: ModelInfo) -> pb.Model:
    spec, files = m.spec, m.files
    model = pb.Model(
        name=spec.name, version=spec.version, description=spec.description, tags=list(spec.tags),
        task=spec.task, provider=spec.provider, source=m.source, device=spec.device, precision=spec.precision,
        pin=m.pinned, keep_alive_s=m.keep_alive, preload=spec.preload, file=str(spec.file),
        signature=spec.signature, state=MODEL_STATES[m.state], downloadable=m.downloadable,
        error_code=m.error_code, error=m.error,
        inputs=[tensor_spec(d) for d in spec.inputs], outputs=[tensor_spec(d) for d in spec.outputs],
        files=pb.Files(state=files.state, bytes_on_disk=files.bytes_on_disk, revision=files.revision,
                       bytes_total=files.bytes_total))
    r = m.resident
    if r is not None:
        model.residency.CopyFrom(pb.Residency(
            device=r.device, estimated_bytes=r.estimated_bytes, measured_bytes=r.measured_bytes,
            loaded_at=r.loaded_at, last_used=r.last_used, expires_at=r.expires_at, in_flight=r.in_flight,
            pinned=r.pinned, tier=r.shown_tier, gpu_layers=r.offloaded[0], total_layers=r.offloaded[1],
            location=m.location))
    return model


def plugin_proto(info: PluginInfo) -> pb.Plugin:
    p, record = info.plugin, info.plugin.record
    plugin = pb.Plugin(name=p.name, provider=p.provider, folder=str(p.folder), error=p.error, state=info.state,
                       isolated=info.isolated, models=info.models)
    if record is not None:
        gate = {k: v for k, v in record.gate.items() if k in pb.GateResult.DESCRIPTOR.fields_by_name}
        plugin.MergeFrom(pb.Plugin(source=record.source, commit=record.commit, gate=pb.GateResult(**gate)))
    return plugin


def spec_error(err: SpecFileError) -> pb.SpecError:
    return pb.SpecError(file=str(err.file), code=err.code.value, field=err.field, line=err.line,
                        message=err.message)


def tensor_spec(d: TensorDecl) -> pb.TensorSpec:
    return pb.TensorSpec(name=d.name, dtype=d.dtype, shape=list(d.shape))


def discovered_proto(d: Discovered) -> pb.Discovered:
    return pb.Discovered(repo_id=d.repo_id, revisions=list(d.revisions), size_on_disk=d.size_on_disk, path=d.path,
                         source=d.source)


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
