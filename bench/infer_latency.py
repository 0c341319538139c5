"""Infer latency over the Unix socket: warmd serving a tiny torch MLP vs a bare grpcio echo server.

    .venv/bin/python bench/infer_latency.py [--calls 2000] [--baseline DIR]

The same kind of socket, the same payload ([1,64] float32), sequential calls, measured in one run with
the servers interleaved call by call. Reports p50/p99 and the ratio warmd / echo (goal <= 1.25x).
`--baseline DIR` adds a second warmd run from another checkout's daemon/ (e.g. `git worktree add DIR main`,
or `git archive main daemon | tar -x -C DIR`), interleaved with the others: before/after a change in one run.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from common import percentile, process, wait_for, workdir, write_report
from echo_server import METHOD

from models import write_mlp

ECHO = Path(__file__).resolve().parent / "echo_server.py"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="calls per server")
    parser.add_argument("--baseline", type=Path, help="another checkout whose daemon/ to run beside this one")
    args = parser.parse_args()

    from warm import Client
    from warmd import tensors
    from warmd.v1 import warmd_pb2 as pb
    from warmd.v1 import warmd_pb2_grpc

    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    request = pb.InferRequest(model="mlp", inputs=[tensors.to_proto("x", x)])
    payload = request.SerializeToString()
    samples: dict[str, list[float]] = {"echo": [], "warmd (stub)": [], "warmd (warm.Client)": []}
    if args.baseline:
        samples["baseline warmd (stub)"] = []

    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs)
        wsock, esock, bsock = root / "w.sock", root / "e.sock", root / "b.sock"
        with contextlib.ExitStack() as servers:
            servers.enter_context(process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket",
                                           str(wsock)], root, "warmd.log"))
            servers.enter_context(process([sys.executable, str(ECHO), str(esock)], root, "echo.log"))
            if args.baseline:     # its own state folders: the two daemons share nothing but the specs
                (root / "b").mkdir()
                servers.enter_context(process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs),
                                               "--socket", str(bsock)], root / "b", "warmd.log",
                                              {"PYTHONPATH": str(args.baseline.resolve() / "daemon")}))
            echo_ch = grpc.insecure_channel(f"unix:{esock}")
            echo = echo_ch.unary_unary(METHOD)
            wait_for(lambda: echo(b"x", timeout=1) == b"x")
            client = Client(wsock, timeout=60)
            wait_for(lambda: client.status())
            client.load("mlp")
            stub = warmd_pb2_grpc.WarmdStub(grpc.insecure_channel(f"unix:{wsock}"))
            reference = client.infer("mlp", {"x": x}).outputs["y"]
            assert reference.shape == (1, 10)

            calls = {
                "echo": lambda: echo(payload),
                "warmd (stub)": lambda: stub.Infer(request),
                "warmd (warm.Client)": lambda: client.infer("mlp", {"x": x}),
            }
            if args.baseline:
                with Client(bsock, timeout=60) as baseline:
                    wait_for(lambda: baseline.status())
                    baseline.load("mlp")
                    assert (baseline.infer("mlp", {"x": x}).outputs["y"] == reference).all()
                base = warmd_pb2_grpc.WarmdStub(grpc.insecure_channel(f"unix:{bsock}"))
                calls["baseline warmd (stub)"] = lambda: base.Infer(request)
            for fn in calls.values():          # warm up every path
                for _ in range(200):
                    fn()
            # Interleave call by call (rotating the order), so this VM's noise hits every server alike.
            names = list(calls)
            for i in range(args.calls):
                for name in names[i % len(names):] + names[:i % len(names)]:
                    t0 = time.perf_counter()
                    calls[name]()
                    samples[name].append((time.perf_counter() - t0) * 1000)
            client.close()

    floor = percentile(samples["echo"], 50)
    lines = ["# Infer latency, Unix socket, tiny MLP 64-128-10, [1,64] float32",
             "",
             f"`.venv/bin/python bench/infer_latency.py --calls {args.calls}"
             f"{' --baseline ' + str(args.baseline) if args.baseline else ''}` "
             f"on {platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}",
             "",
             "| server | p50 ms | p99 ms | p50 / echo p50 |",
             "|---|---|---|---|"]
    for name, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        lines.append(f"| {name} | {p50:.3f} | {p99:.3f} | {p50 / floor:.2f}x |")
    write_report('infer_latency-baseline' if args.baseline else 'infer_latency', lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
