"""inference.GRPCInferenceService: the Open Inference Protocol (KServe V2) on warmd's own socket and port.

A translation between the protocol's messages and the application layer (warmd.app), as warmd.v1's: loads,
unloads and inference are the same calls, so budgets, pins and LRU hold whichever protocol a client speaks. Errors carry the same codes (gRPC status plus the
`warmd-error-code` trailer); where Triton's clients look for a phrase of Triton's ("failed to load",
"Request for unknown model", ...), the message carries it.

Tensors: raw contents or typed contents, never both in one request (the protocol's rule). A BYTES input is
a tensor (an object array of bytes) when the spec declares it with dtype BYTES, else text (UTF-8) for text
models. A `shared_memory_region` names a system or a CUDA region (one namespace per caller); a CUDA input
reaches a provider that takes device tensors in place, other providers through one copy to the host.
"""
from __future__ import annotations

from typing import Any, Iterator

import grpc

from warmd import __version__
from warmd.api import model_config
from warmd.api.auth import caller
from warmd.api.aio import inline_first
from warmd.api.calls import call_context
from warmd.api.errors import as_error, mapped, mapped_stream
from warmd.app import App, Target, select_outputs
from warmd.app.views import Statistics
from warmd.devices import gpu_index
from warmd.errors import Code, WarmdError
from warmd.providers import CallContext, InferRequest, InferResult
from warmd.spec import ModelSpec
from warmd.v2 import inference_pb2 as v2
from warmd.v2 import inference_pb2_grpc

EXTENSIONS = ["model_repository", "model_configuration", "statistics", "system_shared_memory",
              "cuda_shared_memory", "parameters"]
SHM_KEYS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
# Typed contents: which InferTensorContents field holds each datatype.
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_NONE_ON_DEVICE: frozenset[str] = frozenset()
_REPOSITORY_STATES = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING",
                      "available": "UNAVAILABLE", "failed": "UNAVAILABLE"}


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self.regions = app.regions

    # ---- health and metadata -------------------------------------------------------------------
    @mapped
    def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @mapped
    def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=True)     # the socket accepts only once the catalog is read

    @mapped
    def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.ServicerContext) -> v2.ModelReadyResponse:
        spec = self.app.find(request.name)
        ready = spec is not None and request.version in ("", spec.version) and self.app.view(spec).state == "ready"
        return v2.ModelReadyResponse(ready=ready)

    @mapped
    def ServerMetadata(self, request: v2.ServerMetadataRequest,
                       context: grpc.ServicerContext) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="warmd", version=__version__, extensions=EXTENSIONS)

    @mapped
    def ModelMetadata(self, request: v2.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> v2.ModelMetadataResponse:
        spec = self._target(request.name, request.version).spec
        meta = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(
            name=spec.name, versions=[spec.version] if spec.version else [], platform=spec.provider,
            inputs=[meta(name=d.name, datatype=d.dtype, shape=d.shape) for d in spec.inputs],
            outputs=[meta(name=d.name, datatype=d.dtype, shape=d.shape) for d in spec.outputs])

    @mapped
    def ModelConfig(self, request: v2.ModelConfigRequest, context: grpc.ServicerContext) -> v2.ModelConfigResponse:
        return v2.ModelConfigResponse(config=self._config(self._target(request.name, request.version)))

    def _config(self, target: Target) -> v2.ModelConfig:
        return model_config.synthesize(target.spec, self.app.view(target.spec), target.batchable)

    # ---- inference -----------------------------------------------------------------------------
    @inline_first
    @mapped
    def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.ServicerContext) -> v2.ModelInferResponse:
        return self._infer(request, caller(context), call_context(context))

    @mapped_stream
    def ModelStreamInfer(self, requests: Iterator[v2.ModelInferRequest],
                         context: grpc.ServicerContext) -> Iterator[v2.ModelStreamInferResponse]:
        owner, ctx = caller(context), call_context(context)
        for request in requests:
            try:
                yield v2.ModelStreamInferResponse(infer_response=self._infer(request, owner, ctx))
            except Exception as exc:  # noqa: BLE001 - one bad request (or bug) does not end the stream
                yield v2.ModelStreamInferResponse(error_message=_error_message(as_error("ModelStreamInfer", exc)))

    def _infer(self, request: v2.ModelInferRequest, owner: str, ctx: CallContext) -> v2.ModelInferResponse:
        target = self._target(request.model_name, request.model_version)
        spec, on_device = target.spec, target.device_tensors
        tensors, text = self._inputs(spec, request, owner, on_device)
        params = {k: _param(v) for k, v in request.parameters.items()} if request.parameters else {}
        device_outputs = frozenset(o.name for o in request.outputs if self._cuda_window(o, owner)) \
            if on_device else _NONE_ON_DEVICE
        inferred = self.app.infer(target, InferRequest(tensors=tensors, text=text, parameters=params, context=ctx,
                                                       device_outputs=device_outputs))
        response = v2.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request.id)
        self._outputs(request, inferred.result, owner, response)
        return response

    def _inputs(self, spec: ModelSpec, request: v2.ModelInferRequest, owner: str,
                on_device: bool) -> tuple[dict[str, Any], list[str]]:
        if request.raw_input_contents:
            typed = next((t.name for t in request.inputs if t.contents.ListFields()), None)
            if typed is not None:
                raise WarmdError(Code.INVALID_ARGUMENT, f"contents field must not be specified when using "
                                 f"raw_input_contents for {typed!r} for model {spec.name!r}; send every input "
                                 "raw or every input typed")
            if len(request.raw_input_contents) != len(request.inputs):
                raise WarmdError(Code.INVALID_ARGUMENT, f"{len(request.raw_input_contents)} raw_input_contents "
                                 f"for {len(request.inputs)} inputs; send one per input, in order, or none")
        raws = request.raw_input_contents
        arrays: dict[str, Any] = {}
        text: list[str] = []
        for i, tensor in enumerate(request.inputs):
            if tensor.name in arrays:
                raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r} is given twice")
            value = self._input(tensor, raws[i] if raws else None, owner, on_device)
            if tensor.datatype == "BYTES" and not any(d.name == tensor.name and d.dtype == "BYTES"
                                                      for d in spec.inputs):
                text.extend(_text(tensor.name, value))
            else:
                arrays[tensor.name] = value
        return arrays, text

    def _input(self, tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None, owner: str,
               on_device: bool) -> Any:
        """One input as an array (numpy, or a torch tensor on the GPU when `on_device`)."""
        import warmd.tensors as codec   # numpy: imported on the first request

        if "shared_memory_region" in tensor.parameters:
            region, offset, size = self._window(tensor.parameters, f"input {tensor.name!r}")
            return self.regions.read_input(owner, tensor.name, tensor.datatype, tensor.shape, region, offset, size,
                                           on_device)
        if raw is not None:
            return codec.decode(tensor.name, tensor.datatype, tensor.shape, raw)
        return _from_contents(tensor)

    def _outputs(self, request: v2.ModelInferRequest, result: InferResult, owner: str,
                 response: v2.ModelInferResponse) -> None:
        import warmd.tensors as codec

        asked = {o.name: o for o in request.outputs}
        for name in select_outputs(request.model_name, result, asked):
            value, out = result.tensors[name], asked.get(name)
            if out is None or "shared_memory_region" not in out.parameters:
                dtype, data = codec.encode(name, value)
                response.outputs.add(name=name, datatype=dtype, shape=data.shape)
                response.raw_output_contents.append(codec.wire_bytes(dtype, data))
                continue
            dtype, shape = self.regions.write_output(owner, name, value, *self._window(out.parameters,
                                                                                       f"output {name!r}"))
            tensor = response.outputs.add(name=name, datatype=dtype, shape=shape)
            for key in SHM_KEYS:
                if key in out.parameters:
                    tensor.parameters[key].CopyFrom(out.parameters[key])
            response.raw_output_contents.append(b"")   # positions stay aligned with `outputs`

    def _cuda_window(self, out: v2.ModelInferRequest.InferRequestedOutputTensor, owner: str) -> bool:
        """Whether a requested output goes to one of `owner`'s CUDA regions."""
        region = out.parameters.get("shared_memory_region")
        return region is not None and self.regions.is_cuda(owner, region.string_param)

    def _window(self, params: Any, what: str) -> tuple[str, int, int]:
        """(region, offset, byte_size) named by a tensor's shared_memory_* parameters."""
        if "shared_memory_byte_size" not in params:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{what}: shared_memory_byte_size is required")
        offset = params["shared_memory_offset"].int64_param if "shared_memory_offset" in params else 0
        return (params["shared_memory_region"].string_param, offset,
                params["shared_memory_byte_size"].int64_param)

    # ---- statistics ----------------------------------------------------------------------------
    @mapped
    def ModelStatistics(self, request: v2.ModelStatisticsRequest,
                        context: grpc.ServicerContext) -> v2.ModelStatisticsResponse:
        specs = [self._target(request.name, request.version).spec] if request.name else None
        return v2.ModelStatisticsResponse(model_stats=[_statistics(s) for s in self.app.statistics(specs)])

    # ---- model repository ----------------------------------------------------------------------
    @mapped
    def RepositoryIndex(self, request: v2.RepositoryIndexRequest,
                        context: grpc.ServicerContext) -> v2.RepositoryIndexResponse:
        response = v2.RepositoryIndexResponse()
        for model in self.app.models(state="ready" if request.ready else ""):
            response.models.add(name=model.name, version=model.spec.version, state=_REPOSITORY_STATES[model.state],
                                reason=model.view.error.message if model.view.error else "")
        return response

    @mapped
    def RepositoryModelLoad(self, request: v2.RepositoryModelLoadRequest,
                            context: grpc.ServicerContext) -> v2.RepositoryModelLoadResponse:
        try:
            self._load(request.model_name, request.parameters)
        except WarmdError as err:
            raise WarmdError(err.code, f"failed to load {request.model_name!r}: {err.message}") from None
        return v2.RepositoryModelLoadResponse()

    def _load(self, name: str, params: Any) -> None:
        """Load `name`, with the `config` override if given; a refused override changes nothing."""
        files = sorted(k for k in params if k.startswith("file:"))
        if files:
            raise WarmdError(Code.INVALID_ARGUMENT, f"file overrides ({files[0][:40]}...) are refused: warmd never "
                             "writes model files from a request; put them next to the spec and point its source "
                             "at them")
        unknown = sorted(set(params) - {"config"})
        if unknown:
            raise WarmdError(Code.INVALID_ARGUMENT, f"unknown load parameter(s) {', '.join(unknown)}; warmd takes "
                             "`config` (a ModelConfig override in JSON)")
        target = self._target(name)
        fields: dict[str, Any] = {}
        if "config" in params:
            value = params["config"]
            text = value.bytes_param.decode("utf-8", "replace") if value.WhichOneof("parameter_choice") == \
                "bytes_param" else value.string_param
            fields = model_config.override(target.spec, text, self._config(target))
        # without `config`: back to the spec file, as Triton rereads its repository; undone when the load fails
        with self.app.load(target.name, config=fields) as load:
            load.result()

    @mapped
    def RepositoryModelUnload(self, request: v2.RepositoryModelUnloadRequest,
                              context: grpc.ServicerContext) -> v2.RepositoryModelUnloadResponse:
        target = self._target(request.model_name)
        self.app.unload(target.name, reset_config=True)    # a config override lasts until the next load or unload
        return v2.RepositoryModelUnloadResponse()

    # ---- system shared memory ------------------------------------------------------------------
    @mapped
    def SystemSharedMemoryStatus(self, request: v2.SystemSharedMemoryStatusRequest,
                                 context: grpc.ServicerContext) -> v2.SystemSharedMemoryStatusResponse:
        response = v2.SystemSharedMemoryStatusResponse()
        for region in self.regions.system_status(caller(context), request.name):
            response.regions[region.name].CopyFrom(v2.SystemSharedMemoryStatusResponse.RegionStatus(
                name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size))
        return response

    @mapped
    def SystemSharedMemoryRegister(self, request: v2.SystemSharedMemoryRegisterRequest,
                                   context: grpc.ServicerContext) -> v2.SystemSharedMemoryRegisterResponse:
        self.regions.register_system(caller(context), request.name, request.key, request.offset, request.byte_size)
        return v2.SystemSharedMemoryRegisterResponse()

    @mapped
    def SystemSharedMemoryUnregister(self, request: v2.SystemSharedMemoryUnregisterRequest,
                                     context: grpc.ServicerContext) -> v2.SystemSharedMemoryUnregisterResponse:
        self.regions.unregister_system(caller(context), request.name)
        return v2.SystemSharedMemoryUnregisterResponse()

    # ---- CUDA shared memory --------------------------------------------------------------------
    @mapped
    def CudaSharedMemoryStatus(self, request: v2.CudaSharedMemoryStatusRequest,
                               context: grpc.ServicerContext) -> v2.CudaSharedMemoryStatusResponse:
        response = v2.CudaSharedMemoryStatusResponse()
        for region in self.regions.cuda_status(caller(context), request.name):
            response.regions[region.name].CopyFrom(v2.CudaSharedMemoryStatusResponse.RegionStatus(
                name=region.name, device_id=region.device_id, byte_size=region.byte_size))
        return response

    @mapped
    def CudaSharedMemoryRegister(self, request: v2.CudaSharedMemoryRegisterRequest,
                                 context: grpc.ServicerContext) -> v2.CudaSharedMemoryRegisterResponse:
        self.regions.register_cuda(caller(context), request.name, request.raw_handle, request.device_id,
                                   request.byte_size)
        return v2.CudaSharedMemoryRegisterResponse()

    @mapped
    def CudaSharedMemoryUnregister(self, request: v2.CudaSharedMemoryUnregisterRequest,
                                   context: grpc.ServicerContext) -> v2.CudaSharedMemoryUnregisterResponse:
        self.regions.unregister_cuda(caller(context), request.name)
        return v2.CudaSharedMemoryUnregisterResponse()

    # ---- helpers -------------------------------------------------------------------------------
    def _target(self, name: str, version: str = "") -> Target:
        """The model (at `version`, when given: a spec serves one version), looked up once."""
        try:
            target = self.app.target(name, listed_by="RepositoryIndex lists them")
        except WarmdError as err:     # Triton's phrase first: its clients look for it
            raise WarmdError(err.code, f"Request for unknown model: {err.message}") from None
        if version and version != target.spec.version:
            raise WarmdError(Code.MODEL_NOT_FOUND, f"failed to get model version from specified version string "
                             f"{version!r}: model {name!r} has version {target.spec.version or '(none)'!r}; leave "
                             "the version empty for the current one")
        return target


def _statistics(found: Statistics) -> v2.ModelStatistics:
    spec, s, resident = found.spec, found.stats, found.resident
    duration = v2.StatisticDuration
    stats = v2.ModelStatistics(
        name=spec.name, version=spec.version, last_inference=s.last_inference_ms,
        inference_count=s.inference_count, execution_count=s.execution_count,
        inference_stats=v2.InferStatistics(success=duration(count=s.success_count, ns=s.success_ns),
                                           fail=duration(count=s.fail_count, ns=s.fail_ns),
                                           queue=duration(count=s.queue_count, ns=s.queue_ns)))
    if resident is not None:
        index = gpu_index(resident.device)
        kind = "CPU_PINNED" if resident.tier == "host" else "CPU" if index is None else "GPU"
        stats.memory_usage.add(type=kind, id=index or 0, byte_size=resident.bytes)
    return stats


def _error_message(err: WarmdError) -> str:
    return f"[{err.code.value}] {err.message}"


def _param(value: v2.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _from_contents(tensor: v2.ModelInferRequest.InferInputTensor) -> Any:
    import numpy as np

    import warmd.tensors as codec

    shape, count = codec.checked_shape(tensor.name, tensor.shape)
    if tensor.datatype == "BYTES":
        return codec.bytes_tensor(tensor.name, shape, list(tensor.contents.bytes_contents))
    if tensor.datatype not in _CONTENTS:
        raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: {tensor.datatype} has no typed contents "
                         "field; send it in raw_input_contents (FP16 and BF16 are raw only)")
    dtype = codec.numpy_dtype(tensor.name, tensor.datatype)
    values = getattr(tensor.contents, _CONTENTS[tensor.datatype])
    if len(values) != count:
        raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: shape {list(shape)} needs {count} "
                         f"elements, got {len(values)} in contents.{_CONTENTS[tensor.datatype]}")
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: a value is out of range for "
                         f"{tensor.datatype}") from None


def _text(name: str, items: Any) -> list[str]:
    """BYTES elements as text, for models that take text."""
    try:
        return [item.decode("utf-8") for item in items.reshape(-1)]
    except UnicodeDecodeError:
        raise WarmdError(Code.INVALID_ARGUMENT, f"input {name!r}: BYTES elements must be UTF-8 text (declare it "
                         "in the spec's inputs with dtype BYTES for a model that takes bytes)") from None
