"""The second floor: a bare grpcio server that does the least any server of the model must do per call —
parse warmd's InferRequest, run the same torch module on it, and return its output as an InferResponse. No
catalog, admission, scheduler, statistics or checks. Its distance from the echo (echo_server.py) is what the
model itself costs a call in a Python server; warmd's distance from it is warmd's own.

Run as `python bench/forward_server.py SOCKET SAFETENSORS SIZES` (SIZES like 64,128,10); ready when it
answers. It serves the method warmd.v1.Warmd/Infer, so warmd's own stub calls it. Its server model is
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

    async def infer(request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        tensor = request.inputs[0]
        x = torch.from_numpy(np.frombuffer(tensor.raw, dtype=np.float32).reshape(tuple(tensor.shape)).copy())
        with torch.inference_mode():
            y = module(x).numpy()
        return pb.InferResponse(model=request.model, outputs=[
            pb.Tensor(name="y", dtype="FP32", shape=list(y.shape), raw=y.tobytes())])

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("warmd.v1.Warmd", {
            "Infer": grpc.unary_unary_rpc_method_handler(infer, request_deserializer=pb.InferRequest.FromString,
                                                         response_serializer=pb.InferResponse.SerializeToString)}),))
        server.add_insecure_port(f"unix:{where}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")])
