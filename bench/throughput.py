"""Throughput with 32 concurrent clients, tiny MLP, with and without dynamic batching, against a bare grpcio
echo server under the same load (the floor: what the transport alone sustains).

    .venv/bin/python bench/throughput.py [--clients 32] [--seconds 5]

Clients are threads in 4 client processes (one process's GIL would cap them first), each with its own
channel, sending [1,64] float32 requests back to back. Servers are measured one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, process, wait_for, workdir, write_report
from echo_server import METHOD

from models import write_mlp

ECHO = Path(__file__).resolve().parent / "echo_server.py"
PROCESSES = 4

# One client process: argv = target kind (echo|warmd), socket, model, threads, seconds. Prints calls done.
CLIENT = r'''
import sys, threading, time
import grpc, numpy as np
kind, sock, model, threads, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
sys.path[:0] = [sys.argv[6] + "/daemon", sys.argv[6] + "/clients"]
from warmd import tensors
from warmd.v1 import warmd_pb2 as pb
payload = pb.InferRequest(model=model, inputs=[tensors.to_proto("x", np.ones((1, 64), np.float32))])
done = [0] * threads
stop = time.monotonic() + seconds
def run(k):
    channel = grpc.insecure_channel(f"unix:{sock}")
    if kind == "echo":
        call = channel.unary_unary(METHOD)
        body = payload.SerializeToString()
        while time.monotonic() < stop:
            call(body, timeout=30); done[k] += 1
    else:
        from warmd.v1 import warmd_pb2_grpc
        stub = warmd_pb2_grpc.WarmdStub(channel)
        while time.monotonic() < stop:
            stub.Infer(payload, timeout=30); done[k] += 1
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sum(done))
'''


def load(kind: str, sock: Path, model: str, clients: int, seconds: float) -> float:
    """Calls per second sustained by `clients` concurrent clients."""
    per = clients // PROCESSES
    code = CLIENT.replace("METHOD", repr(METHOD))
    procs = [subprocess.Popen([sys.executable, "-c", code, kind, str(sock), model, str(per), str(seconds), str(REPO)],
                              stdout=subprocess.PIPE, text=True) for _ in range(PROCESSES)]
    total = sum(int(p.communicate(timeout=seconds + 120)[0].strip()) for p in procs)
    return total / seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from warm import Client

    results: dict[str, float] = {}
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs, "mlp")
        write_mlp(specs, "batched")
        base = (specs / "mlp.yaml").read_text() + f"max_in_flight: {args.clients}\n"
        (specs / "mlp.yaml").write_text(base)
        (specs / "batched.yaml").write_text(base + f"max_batch: {args.clients}\nmax_delay_ms: 1\n")
        wsock, esock = root / "w.sock", root / "e.sock"
        with process([sys.executable, str(ECHO), str(esock)], root, "echo.log"):
            wait_for(lambda: esock.exists())
            time.sleep(0.5)
            results["bare grpcio echo (floor)"] = load("echo", esock, "", args.clients, args.seconds)
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(wsock)],
                     root, "warmd.log", {"WARMD_RPC_THREADS": str(args.clients * 2)}):
            with Client(wsock, timeout=60) as c:
                wait_for(lambda: c.status())
                c.load("mlp")
                c.load("batched")
            results["warmd, no batching"] = load("warmd", wsock, "mlp", args.clients, args.seconds)
            results["warmd, dynamic batching (max_batch 32, 1 ms)"] = load("warmd", wsock, "batched", args.clients,
                                                                          args.seconds)
    floor = results["bare grpcio echo (floor)"]
    lines = [f"# Throughput, {args.clients} concurrent clients, tiny MLP 64-128-10, [1,64] float32", "",
             f"`.venv/bin/python bench/throughput.py --clients {args.clients} --seconds {args.seconds:g}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; clients in {PROCESSES} "
             "processes on the same machine (they share its CPUs with the server)", "",
             "| server | calls/s | ratio to the floor |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {rate / floor:.2f}x |" for name, rate in results.items()]
    write_report("throughput", lines)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
