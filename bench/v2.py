"""The Open Inference Protocol through tritonclient, against warmd's own API, in the same run.

    .venv/bin/python bench/v2.py [--calls 1000] [--rounds 5]

1. Infer latency, tiny MLP (64->128->10, [1,64] float32), sequential calls: tritonclient's gRPC client on
   V2 ModelInfer against `warm.Client.infer` on warmd.v1 Infer. Rounds alternate between the two.
2. A 4 MiB float32 input and its 4 MiB output (a y = 2x model) through system shared memory against the
   same bytes inside the request and response (both through tritonclient; goal: shared memory >= 5x faster).
3. GPU only (skipped without CUDA, or without cuda-python in the tritonclient environment): a 64 MiB
   float32 input and output of y = 2x on cuda:0 through CUDA shared memory (the app's tensor already on the
   GPU; device to device in the daemon) against the same bytes inside the messages.

tritonclient runs in `.venv-tritonclient` (made by .ci/setup), in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from common import REPO, percentile, process, wait_for, workdir, write_report

from models import write_mlp

TRITON_PYTHON = REPO / ".venv-tritonclient" / "bin" / "python"
DOUBLE = "import torch\n\nclass Double(torch.nn.Module):\n    def forward(self, x):\n        return x * 2\n"

# Runs in the tritonclient environment: argv = socket, what ("mlp" or "big"), calls. Prints JSON seconds.
TRITON_SIDE = r'''
import json, os, sys, time
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
sock, what, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = grpcclient.InferenceServerClient(url=f"unix:{sock}")
def timed(fn):
    fn(); fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return out
result = {}
if what == "mlp":
    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    inp = grpcclient.InferInput("x", [1, 64], "FP32"); inp.set_data_from_numpy(x)
    result["triton"] = timed(lambda: client.infer("mlp", [inp]).as_numpy("y"))
elif what == "big":
    x = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    size = x.nbytes
    raw_in = grpcclient.InferInput("x", list(x.shape), "FP32"); raw_in.set_data_from_numpy(x)
    def raw():
        y = client.infer("double", [raw_in]).as_numpy("y")
        assert y[0, 0] == 2 * x[0, 0]
    result["raw"] = timed(raw)
    key = f"/warmd-bench-{os.getpid()}"
    h_in = shm.create_shared_memory_region("in", key + "-in", size)
    h_out = shm.create_shared_memory_region("out", key + "-out", size)
    try:
        client.register_system_shared_memory("in", key + "-in", size)
        client.register_system_shared_memory("out", key + "-out", size)
        shm_in = grpcclient.InferInput("x", list(x.shape), "FP32"); shm_in.set_shared_memory("in", size)
        shm_out = grpcclient.InferRequestedOutput("y"); shm_out.set_shared_memory("out", size)
        def shared():
            shm.set_shared_memory_region(h_in, [x])       # the app writes its frame, then calls
            client.infer("double", [shm_in], outputs=[shm_out])
            y = shm.get_contents_as_numpy(h_out, np.float32, list(x.shape))
            assert y[0, 0] == 2 * x[0, 0]
        result["shm"] = timed(shared)
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)
if what == "cuda":
    import tritonclient.utils.cuda_shared_memory as cudashm
    x = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)     # 64 MiB
    size = x.nbytes
    raw_in = grpcclient.InferInput("x", list(x.shape), "FP32"); raw_in.set_data_from_numpy(x)
    def raw():
        y = client.infer("double_gpu", [raw_in]).as_numpy("y")
        assert y[0, 0] == 2 * x[0, 0]
    result["raw"] = timed(raw)
    h_in = cudashm.create_shared_memory_region("cin", size, 0)
    h_out = cudashm.create_shared_memory_region("cout", size, 0)
    cudashm.set_shared_memory_region(h_in, [x])                # the app's tensor, on the GPU already
    client.register_cuda_shared_memory("cin", cudashm.get_raw_handle(h_in), 0, size)
    client.register_cuda_shared_memory("cout", cudashm.get_raw_handle(h_out), 0, size)
    dev_in = grpcclient.InferInput("x", list(x.shape), "FP32"); dev_in.set_shared_memory("cin", size)
    dev_out = grpcclient.InferRequestedOutput("y"); dev_out.set_shared_memory("cout", size)
    result["cuda"] = timed(lambda: client.infer("double_gpu", [dev_in], outputs=[dev_out]))
    y = cudashm.get_contents_as_numpy(h_out, np.float32, list(x.shape))
    assert np.array_equal(y, 2 * x)
    client.unregister_cuda_shared_memory()
    cudashm.destroy_shared_memory_region(h_in)
    cudashm.destroy_shared_memory_region(h_out)
print(json.dumps(result))
'''
RAW64, CUDA64 = "64 MiB in + out, raw bytes in the messages (cuda:0)", "64 MiB in + out, CUDA shared memory"


def triton_side(sock, what: str, calls: int) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    proc = subprocess.run([str(TRITON_PYTHON), "-c", TRITON_SIDE, str(sock), what, str(calls)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout)


def cuda_ready() -> str:
    """Why the GPU part cannot run here ("" when it can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    probe = subprocess.run([str(TRITON_PYTHON), "-c", "import tritonclient.utils.cuda_shared_memory"],
                           capture_output=True, text=True)
    return "" if probe.returncode == 0 else "no cuda-python in .venv-tritonclient (tritonclient[cuda])"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000, help="tiny-model calls per round and client")
    parser.add_argument("--big-calls", type=int, default=50, help="4 MiB calls per round and path")
    parser.add_argument("--cuda-calls", type=int, default=20, help="64 MiB calls per round and path (GPU only)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not TRITON_PYTHON.exists():
        sys.exit(f"{TRITON_PYTHON} is missing: run `bash .ci/setup`")
    from safetensors.numpy import save_file

    from warm import Client

    samples: dict[str, list[float]] = {"tritonclient, V2 ModelInfer": [], "warm.Client, warmd.v1 Infer": [],
                                       "4 MiB in + out, raw bytes in the messages": [],
                                       "4 MiB in + out, system shared memory": []}
    skipped = cuda_ready()
    if not skipped:
        samples.update({RAW64: [], CUDA64: []})
    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs)
        (specs / "double.py").write_text(DOUBLE)
        save_file({}, str(specs / "double.safetensors"))         # y = 2x has no weights
        (specs / "double.yaml").write_text("provider: torch\ndevice: cpu\nsource: {path: double.safetensors}\n"
                                           "options: {factory: 'double.py:Double'}\n"
                                           "inputs: [{name: x, dtype: FP32, shape: [-1, -1]}]\n"
                                           "outputs: [{name: y, dtype: FP32, shape: [-1, -1]}]\n")
        if not skipped:
            gpu = (specs / "double.yaml").read_text().replace("device: cpu", "device: cuda:0")
            (specs / "double_gpu.yaml").write_text(gpu)
        sock = root / "w.sock"
        env = {"WARMD_KEEP_ALIVE": "-1", "WARMD_MAX_MESSAGE_BYTES": str(256 * 2**20)}   # 64 MiB as bytes
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                     root, "warmd.log", env):
            with Client(sock, timeout=60) as client:
                wait_for(lambda: client.status())
                for name in ("mlp", "double") if skipped else ("mlp", "double", "double_gpu"):
                    client.load(name)
                for _ in range(args.rounds):
                    samples["tritonclient, V2 ModelInfer"] += triton_side(sock, "mlp", args.calls)["triton"]
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        client.infer("mlp", {"x": x})
                        samples["warm.Client, warmd.v1 Infer"].append(time.perf_counter() - t0)
                    big = triton_side(sock, "big", args.big_calls)
                    samples["4 MiB in + out, raw bytes in the messages"] += big["raw"]
                    samples["4 MiB in + out, system shared memory"] += big["shm"]
                    if not skipped:
                        dev = triton_side(sock, "cuda", args.cuda_calls)
                        samples[RAW64] += dev["raw"]
                        samples[CUDA64] += dev["cuda"]
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    own, raw = p50["warm.Client, warmd.v1 Infer"], p50["4 MiB in + out, raw bytes in the messages"]
    lines = ["# Open Inference Protocol (tritonclient) against warmd's own API",
             "",
             f"`.venv/bin/python bench/v2.py --calls {args.calls} --big-calls {args.big_calls} --cuda-calls "
             f"{args.cuda_calls} --rounds {args.rounds}` on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{time.strftime('%Y-%m-%d')}; "
             "Unix socket, sequential calls, rounds alternating between clients",
             "",
             "| path | p50 ms | p99 ms | ratio (p50) |",
             "|---|---|---|---|"]
    for name, values in samples.items():
        ref, ref_name = ((raw, "raw") if name.startswith("4 MiB") else (p50[RAW64], "raw") if name.startswith("64 MiB")
                         else (own, "warm.Client"))
        lines.append(f"| {name} | {p50[name] * 1e3:.3f} | {percentile(values, 99) * 1e3:.3f} | "
                     f"{p50[name] / ref:.2f}x {ref_name} |")
    lines += ["", f"Shared memory is **{raw / p50['4 MiB in + out, system shared memory']:.1f}x** faster than raw "
              "bytes for a 4 MiB input and output (goal >= 5x)."]
    if skipped:
        lines += ["", f"CUDA shared memory (64 MiB on cuda:0): skipped, {skipped}."]
    else:
        lines += ["", f"CUDA shared memory is **{p50[RAW64] / p50[CUDA64]:.1f}x** faster than raw bytes for a "
                  "64 MiB input and output of a model on cuda:0 (device to device, no host copy)."]
    write_report("v2", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
