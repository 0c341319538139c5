"""Throughput with 32 concurrent clients, tiny MLP, with and without dynamic batching, against a bare grpcio
echo server under the same load (the floor: what the transport alone sustains), all on Unix sockets.

    .venv/bin/python bench/throughput.py [--clients 32] [--seconds 5]

The load is bench/peers.py's: threads in 4 client processes (one process's GIL would cap them first), each
with its own channel, sending V2 ModelInfer requests ([1,64] float32) back to back; the echo server gets
the same request bytes. Servers are measured one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from common import process, wait_for, workdir, write_report
from peers import throughput

from models import write_mlp

ECHO = Path(__file__).resolve().parent / "echo_server.py"

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
            results["bare grpcio echo (floor)"] = throughput("echo", f"unix:{esock}", "", clients=args.clients,
                                                             seconds=args.seconds)
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(wsock)],
                     root, "warmd.log", {"WARMD_RPC_THREADS": str(args.clients * 2)}):
            with Client(wsock, timeout=60) as c:
                wait_for(lambda: c.status())
                c.load("mlp")
                c.load("batched")
            for name, model in (("warmd, no batching", "mlp"),
                                ("warmd, dynamic batching (max_batch 32, 1 ms)", "batched")):
                results[name] = throughput("v2", f"unix:{wsock}", model, clients=args.clients, seconds=args.seconds)
    floor = results["bare grpcio echo (floor)"]
    lines = [f"# Throughput, {args.clients} concurrent clients, tiny MLP 64-128-10, [1,64] float32", "",
             f"`.venv/bin/python bench/throughput.py --clients {args.clients} --seconds {args.seconds:g}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; clients in 4 processes on "
             "the same machine (they share its CPUs with the server)", "",
             "| server | calls/s | ratio to the floor |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {rate / floor:.2f}x |" for name, rate in results.items()]
    write_report("throughput", lines)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
