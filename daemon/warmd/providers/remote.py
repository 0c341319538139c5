"""`remote`: a model that lives behind another Open Inference Protocol (KServe V2) gRPC endpoint: another
warmd, Triton, MLServer, KServe. The spec's source names it:

    source: {remote: "gpu-box:7071", model: llama, token_env: GPU_BOX_TOKEN}

Tensors go as raw contents; `text` as a BYTES input named "text"; parameters as V2 parameters. Errors come
back with the remote's code (a warmd remote) or its status. Cancelling the local call cancels the remote
one. Nothing is held locally: it counts 0 bytes against any budget. `warm ls` shows the endpoint's health
(`remote ready`, `remote live` when the server answers but the model is not loaded there, `remote
unreachable`), probed with a short timeout and cached for a few seconds.

JSON results (labels, generated text of a warmd remote) do not cross V2; only tensors do.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from warmd.errors import Code, WarmdError, from_rpc_error
from warmd.providers.base import InferRequest, InferResult, Provider
from warmd.spec import ModelSpec

PROBE_TIMEOUT_S = 0.5
HEALTH_TTL_S = 3.0
_health: dict[tuple[str, str], tuple[float, str]] = {}
_health_lock = threading.Lock()


def _target(spec: ModelSpec) -> tuple[str, str, tuple]:
    src = spec.source
    token = os.environ.get(src.token_env, "") if src.token_env else ""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return src.ref, src.model or spec.name, metadata


def health(spec: ModelSpec) -> str:
    """"ready", "live" or "unreachable", cached for HEALTH_TTL_S."""
    from warmd.v2 import inference_pb2 as v2
    from warmd.v2 import inference_pb2_grpc

    address, model, metadata = _target(spec)
    key = (address, model)
    with _health_lock:
        cached = _health.get(key)
    if cached and time.monotonic() - cached[0] < HEALTH_TTL_S:
        return cached[1]
    state = "unreachable"
    try:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            if stub.ServerLive(v2.ServerLiveRequest(), timeout=PROBE_TIMEOUT_S, metadata=metadata).live:
                ready = stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=PROBE_TIMEOUT_S,
                                        metadata=metadata).ready
                state = "ready" if ready else "live"
    except grpc.RpcError:
        pass
    with _health_lock:
        _health[key] = (time.monotonic(), state)
    return state


class RemoteProvider(Provider):
    name = "remote"
    in_process = False
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400}},
    }

    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        return 0

    def load(self) -> int:
        from warmd.v2 import inference_pb2 as v2
        from warmd.v2 import inference_pb2_grpc

        if self.spec.source.kind != "remote":
            raise WarmdError(Code.SPEC_INVALID, "provider remote needs `source: {remote: HOST:PORT, model: NAME}`")
        address, self._model, self._metadata = _target(self.spec)
        self._channel = grpc.insecure_channel(address)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            self._stub.ServerLive(v2.ServerLiveRequest(), timeout=5, metadata=self._metadata)
        except grpc.RpcError as err:
            self._channel.close()
            raise WarmdError(Code.UNAVAILABLE, f"remote endpoint {address} does not answer: "
                             f"{from_rpc_error(err).message}") from None
        return 0

    def infer(self, request: InferRequest) -> InferResult:
        import warmd.tensors as codec
        from warmd.v2 import inference_pb2 as v2

        call = v2.ModelInferRequest(model_name=self._model)
        for name, array in request.tensors.items():
            dtype, data = codec.encode(name, array)
            call.inputs.add(name=name, datatype=dtype, shape=data.shape)
            call.raw_input_contents.append(codec.wire_bytes(dtype, data))
        if request.text:
            call.inputs.add(name="text", datatype="BYTES", shape=[len(request.text)])
            call.raw_input_contents.append(codec.serialize_bytes(t.encode() for t in request.text))
        for key, value in request.parameters.items():
            _set_param(call.parameters[key], key, value)
        ctx = request.context
        timeout = self.spec.options.get("timeout_s")
        if ctx.deadline is not None:
            left = max(0.001, ctx.deadline - time.monotonic())
            timeout = min(timeout, left) if timeout else left
        future = self._stub.ModelInfer.future(call, timeout=timeout, metadata=self._metadata)
        ctx.on_cancel(future.cancel)
        try:
            reply = future.result()
        except grpc.FutureCancelledError:
            raise WarmdError(Code.CANCELLED, "the caller cancelled the request") from None
        except grpc.RpcError as err:
            remote = from_rpc_error(err)
            raise WarmdError(remote.code, f"remote {self.spec.source.ref}: {remote.message}") from None
        out = {t.name: codec.decode(t.name, t.datatype, t.shape, raw)
               for t, raw in zip(reply.outputs, reply.raw_output_contents)}
        return InferResult(tensors=out)

    def unload(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()


def _set_param(param: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise WarmdError(Code.INVALID_ARGUMENT, f"parameter {key!r}: V2 carries booleans, numbers and strings, "
                         f"not {type(value).__name__}")
