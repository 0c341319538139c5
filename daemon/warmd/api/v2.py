"""inference.GRPCInferenceService: the Open Inference Protocol (KServe V2) on warmd's own socket and port.

Loads, unloads and inference go through the same scheduler and inference path as warmd.v1, so budgets,
pins and LRU hold whichever protocol a client speaks. Errors carry the same codes (gRPC status plus the
`warmd-error-code` trailer).
"""
from __future__ import annotations

import struct
from typing import Any, Iterator

import grpc

from warmd import __version__
from warmd.api.auth import caller
from warmd.api.calls import call_context
from warmd.api.errors import as_error, mapped, mapped_stream
from warmd.catalog import Catalog
from warmd.errors import Code, WarmdError
from warmd.inference import Inference
from warmd.providers import CallContext, InferRequest, InferResult
from warmd.scheduler import Scheduler
from warmd.shm import SharedMemoryRegistry
from warmd.spec import ModelSpec
from warmd.v2 import inference_pb2 as v2
from warmd.v2 import inference_pb2_grpc

EXTENSIONS = ["model_repository", "statistics", "system_shared_memory", "parameters"]
SHM_KEYS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
# Typed contents: which InferTensorContents field holds each datatype.
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_REPOSITORY_STATES = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING",
                      "available": "UNAVAILABLE", "failed": "UNAVAILABLE"}


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, catalog: Catalog, scheduler: Scheduler, inference: Inference,
                 shm: SharedMemoryRegistry, drain_timeout: float) -> None:
        self.catalog, self.scheduler, self.inference, self.shm = catalog, scheduler, inference, shm
        self.drain_timeout = drain_timeout

    # ---- health and metadata -------------------------------------------------------------------
    @mapped
    def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @mapped
    def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=True)     # the socket accepts only once the catalog is read

    @mapped
    def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.ServicerContext) -> v2.ModelReadyResponse:
        spec = self.catalog.get(request.name)
        ready = (spec is not None and request.version in ("", spec.version)
                 and self.scheduler.view(spec.name).state == "ready")
        return v2.ModelReadyResponse(ready=ready)

    @mapped
    def ServerMetadata(self, request: v2.ServerMetadataRequest,
                       context: grpc.ServicerContext) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="warmd", version=__version__, extensions=EXTENSIONS)

    @mapped
    def ModelMetadata(self, request: v2.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> v2.ModelMetadataResponse:
        spec = self._spec(request.name, request.version)
        meta = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(
            name=spec.name, versions=[spec.version] if spec.version else [], platform=spec.provider,
            inputs=[meta(name=d.name, datatype=d.dtype, shape=d.shape) for d in spec.inputs],
            outputs=[meta(name=d.name, datatype=d.dtype, shape=d.shape) for d in spec.outputs])

    # ---- inference -----------------------------------------------------------------------------
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
        spec = self._spec(request.model_name, request.model_version)
        tensors, text = self._inputs(request, owner)
        params = {k: _param(v) for k, v in request.parameters.items()}
        _, result = self.inference.run(spec.name, InferRequest(tensors=tensors, text=text, parameters=params,
                                                                context=ctx))
        response = v2.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request.id)
        self._outputs(request, result, owner, response)
        return response

    def _inputs(self, request: v2.ModelInferRequest, owner: str) -> tuple[dict[str, Any], list[str]]:
        from warmd import tensors as codec   # numpy: imported on the first request

        if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{len(request.raw_input_contents)} raw_input_contents for "
                             f"{len(request.inputs)} inputs; send one per input, in order, or none")
        arrays: dict[str, Any] = {}
        text: list[str] = []
        for i, tensor in enumerate(request.inputs):
            if tensor.name in arrays:
                raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r} is given twice")
            if "shared_memory_region" in tensor.parameters:
                what = f"input {tensor.name!r}"
                raw: Any = self.shm.read(owner, *self._window(tensor.parameters, what), what)
            elif request.raw_input_contents:
                raw = request.raw_input_contents[i]
            else:
                raw = None
            if tensor.datatype == "BYTES":
                text.extend(_strings(tensor, raw))
            elif raw is not None:
                arrays[tensor.name] = codec.decode(tensor.name, tensor.datatype, tensor.shape, raw)
            else:
                arrays[tensor.name] = _from_contents(tensor)
        return arrays, text

    def _outputs(self, request: v2.ModelInferRequest, result: InferResult, owner: str,
                 response: v2.ModelInferResponse) -> None:
        from warmd import tensors as codec

        wanted = list(request.outputs) or [v2.ModelInferRequest.InferRequestedOutputTensor(name=n)
                                           for n in result.tensors]
        unknown = [o.name for o in wanted if o.name not in result.tensors]
        if unknown:
            raise WarmdError(Code.INVALID_ARGUMENT, f"unknown output(s) {', '.join(unknown)}; "
                             f"{request.model_name!r} gives {', '.join(result.tensors)}")
        for out in wanted:
            dtype, data = codec.encode(out.name, result.tensors[out.name])
            tensor = response.outputs.add(name=out.name, datatype=dtype, shape=data.shape)
            if "shared_memory_region" in out.parameters:
                what = f"output {out.name!r}"
                self.shm.write(owner, *self._window(out.parameters, what), data, what)
                for key in SHM_KEYS:
                    if key in out.parameters:
                        tensor.parameters[key].CopyFrom(out.parameters[key])
                response.raw_output_contents.append(b"")   # positions stay aligned with `outputs`
            else:
                response.raw_output_contents.append(data.tobytes())

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
        specs = [self._spec(request.name, request.version)] if request.name else self.catalog.specs()
        return v2.ModelStatisticsResponse(model_stats=[self._statistics(s) for s in specs])

    def _statistics(self, spec: ModelSpec) -> v2.ModelStatistics:
        s = self.inference.stats(spec.name)
        duration = v2.StatisticDuration
        stats = v2.ModelStatistics(
            name=spec.name, version=spec.version, last_inference=s.last_inference_ms,
            inference_count=s.inference_count, execution_count=s.execution_count,
            inference_stats=v2.InferStatistics(success=duration(count=s.success_count, ns=s.success_ns),
                                               fail=duration(count=s.fail_count, ns=s.fail_ns),
                                               queue=duration(count=s.queue_count, ns=s.queue_ns)))
        resident = self.scheduler.view(spec.name).resident
        if resident is not None:
            kind = "CPU_PINNED" if resident.tier == "host" else "GPU" if resident.device.startswith("cuda") else "CPU"
            index = int(resident.device.split(":")[1]) if ":" in resident.device else 0
            stats.memory_usage.add(type=kind, id=index, byte_size=resident.bytes)
        return stats

    # ---- model repository ----------------------------------------------------------------------
    @mapped
    def RepositoryIndex(self, request: v2.RepositoryIndexRequest,
                        context: grpc.ServicerContext) -> v2.RepositoryIndexResponse:
        response = v2.RepositoryIndexResponse()
        for spec in self.catalog.specs():
            view = self.scheduler.view(spec.name)
            if request.ready and view.state != "ready":
                continue
            response.models.add(name=spec.name, version=spec.version, state=_REPOSITORY_STATES[view.state],
                                reason=view.error.message if view.error else "")
        return response

    @mapped
    def RepositoryModelLoad(self, request: v2.RepositoryModelLoadRequest,
                            context: grpc.ServicerContext) -> v2.RepositoryModelLoadResponse:
        if request.parameters:
            raise WarmdError(Code.INVALID_ARGUMENT, "load parameters (config overrides, files) are not supported; "
                             "warmd loads models from their spec files")
        spec = self._spec(request.model_name)
        _, future = self.scheduler.start_load(spec.name)
        future.result()
        return v2.RepositoryModelLoadResponse()

    @mapped
    def RepositoryModelUnload(self, request: v2.RepositoryModelUnloadRequest,
                              context: grpc.ServicerContext) -> v2.RepositoryModelUnloadResponse:
        spec = self._spec(request.model_name)
        self.scheduler.unload(spec.name, wait_s=self.drain_timeout)
        return v2.RepositoryModelUnloadResponse()

    # ---- system shared memory ------------------------------------------------------------------
    @mapped
    def SystemSharedMemoryStatus(self, request: v2.SystemSharedMemoryStatusRequest,
                                 context: grpc.ServicerContext) -> v2.SystemSharedMemoryStatusResponse:
        response = v2.SystemSharedMemoryStatusResponse()
        for region in self.shm.status(caller(context), request.name):
            response.regions[region.name].CopyFrom(v2.SystemSharedMemoryStatusResponse.RegionStatus(
                name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size))
        return response

    @mapped
    def SystemSharedMemoryRegister(self, request: v2.SystemSharedMemoryRegisterRequest,
                                   context: grpc.ServicerContext) -> v2.SystemSharedMemoryRegisterResponse:
        self.shm.register(caller(context), request.name, request.key, request.offset, request.byte_size)
        return v2.SystemSharedMemoryRegisterResponse()

    @mapped
    def SystemSharedMemoryUnregister(self, request: v2.SystemSharedMemoryUnregisterRequest,
                                     context: grpc.ServicerContext) -> v2.SystemSharedMemoryUnregisterResponse:
        self.shm.unregister(caller(context), request.name)
        return v2.SystemSharedMemoryUnregisterResponse()

    # ---- helpers -------------------------------------------------------------------------------
    def _spec(self, name: str, version: str = "") -> ModelSpec:
        spec = self.catalog.require(name, listed_by="RepositoryIndex lists them")
        if version and version != spec.version:
            raise WarmdError(Code.MODEL_NOT_FOUND, f"model {name!r} has version {spec.version or '(none)'!r}, "
                             f"not {version!r}; leave the version empty for the current one")
        return spec


def _error_message(err: WarmdError) -> str:
    return f"[{err.code.value}] {err.message}"


def _param(value: v2.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _from_contents(tensor: v2.ModelInferRequest.InferInputTensor) -> Any:
    import numpy as np

    from warmd import tensors as codec

    shape, count = codec.checked_shape(tensor.name, tensor.shape)
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


def _strings(tensor: v2.ModelInferRequest.InferInputTensor, raw: Any) -> list[str]:
    """BYTES elements as text: typed bytes_contents, or raw 4-byte-length-prefixed elements."""
    from warmd import tensors as codec

    if raw is None:
        items = list(tensor.contents.bytes_contents)
    else:
        items, data, at = [], bytes(raw), 0
        while at < len(data):
            if at + 4 > len(data):
                raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: BYTES element header cut off")
            (size,) = struct.unpack_from("<I", data, at)
            if at + 4 + size > len(data):
                raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: BYTES element longer than the data")
            items.append(data[at + 4:at + 4 + size])
            at += 4 + size
    _, count = codec.checked_shape(tensor.name, tensor.shape)
    if len(items) != count:
        raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: shape {list(tensor.shape)} needs {count} "
                         f"BYTES elements, got {len(items)}")
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError:
        raise WarmdError(Code.INVALID_ARGUMENT, f"input {tensor.name!r}: BYTES elements must be UTF-8 text") from None
