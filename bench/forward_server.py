"""The second floor: a bare grpcio server that does the least any server of the model must do per call —
parse warmd's InferRequest, run the same torch module on it, and return its output as an InferResponse. No
catalog, admission, scheduler, statistics or checks. Its distance from the echo (echo_server.py) is what the
model itself costs a call in a Python server; warmd's distance from it is warmd's own.

Run as `python bench/forward_server.py SOCKET SAFETENSORS SIZES` (or 127.0.0.1:PORT for SOCKET; SIZES like
64,128,10); ready when it answers. It serves warmd.v1.Warmd/Infer and the V2 inference.GRPCInferenceService/ModelInfer (one input,
one output), so warmd's own stub and bench/peers.py's V2 load call it as they call warmd. Its server model is
warmd's: grpc.aio on uvloop, the forward inline on the loop (on grpcio's sync server with 32 threads, the
echo's, its sequential p50 was the same: 0.98x-1.02x in one run). torch gets one thread, as warmd gives it
on 2 CPUs.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")       # before torch is imported, as warmd does

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from warmd.v1 import warmd_pb2 as pb  # noqa: E402
from warmd.v2 import inference_pb2 as v2  # noqa: E402


def mlp(weights: str, sizes: list[int]) -> torch.nn.Module:
    """The benchmark's MLP (tests/models.py's factory), with the spec's weights."""
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers[:-1])
    module.load_state_dict(load_file(weights))
    return module.eval()


def serve(where: str, weights: str, sizes: list[int]) -> None:
    import uvloop

    module = mlp(weights, sizes)

    def forward(raw: bytes, shape: list[int]) -> np.ndarray:
        x = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(shape).copy())
        with torch.inference_mode():
            return module(x).numpy()

    async def infer(request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        y = forward(request.inputs[0].raw, list(request.inputs[0].shape))
        return pb.InferResponse(model=request.model, outputs=[
            pb.Tensor(name="y", dtype="FP32", shape=list(y.shape), raw=y.tobytes())])

    async def model_infer(request: v2.ModelInferRequest, context: grpc.aio.ServicerContext) -> v2.ModelInferResponse:
        y = forward(request.raw_input_contents[0], list(request.inputs[0].shape))
        reply = v2.ModelInferResponse(model_name=request.model_name, raw_output_contents=[y.tobytes()])
        reply.outputs.add(name="y", datatype="FP32", shape=list(y.shape))
        return reply

    def service(name: str, method: str, handler: object, message: type, reply: type) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(name, {method: grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=message.FromString, response_serializer=reply.SerializeToString)})

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((
            service("warmd.v1.Warmd", "Infer", infer, pb.InferRequest, pb.InferResponse),
            service("inference.GRPCInferenceService", "ModelInfer", model_infer, v2.ModelInferRequest,
                    v2.ModelInferResponse)))
        server.add_insecure_port(where if ":" in where else f"unix:{where}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")])
