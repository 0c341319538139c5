"""Where a call's cost goes under the 32-client load: the daemon cut short, against bare echo servers, in the
same rounds (each round starts at the next server).

    git worktree add /tmp/cut HEAD && git -C /tmp/cut apply bench/results/profiles/under-load.patch
    .venv/bin/python bench/under_load.py --patched /tmp/cut [--rounds 4] [--seconds 4]

`--patched DIR` is a checkout with bench/results/profiles/under-load.patch applied: its daemon reads
WARMD_EXPERIMENT, `fixed` answering every call with the first call's response (the gRPC front alone), and
`noforward` reusing the first forward's outputs (all of warmd's Python, no torch forward); with
WARMD_EXPERIMENT_REGISTERED set, it also registers every method with the server, as warmd did before
ebda0c0. Rows: grpcio's sync echo (the floor of bench/throughput.py and peers.py), grpc.aio's echo on uvloop
(bench/grpc_servers.py's), and the patched daemon with `fixed` (its methods registered, and not),
`noforward` and nothing set (the whole call), all on Unix sockets with bench/peers.py's load. Reports
calls/s over the floor's in the same round and the server's CPU per call, as median (min-max) over the
rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from common import REPO, process, rotated, spread, wait_for, workdir, write_report
from peers import Load, throughput

from models import write_mlp

FLOOR = "grpcio sync echo (floor)"
# row -> (WARMD_EXPERIMENT, whether the methods are registered with the server as well, as before ebda0c0)
CUTS = {"warmd, fixed response, methods registered (before)": ("fixed", True),
        "warmd, fixed response (the front alone)": ("fixed", False),
        "warmd, no forward (all of warmd's Python)": ("noforward", False), "warmd, the whole call": ("", False)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patched", type=Path, required=True, help="a checkout with under-load.patch applied")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args()
    from warm import Client

    with workdir() as root, contextlib.ExitStack() as stack:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs)
        servers: dict[str, tuple[str, Path, int]] = {}
        for name, argv in ((FLOOR, [str(REPO / "bench" / "echo_server.py"), str(root / "floor.sock")]),
                           ("grpc.aio echo on uvloop", [str(REPO / "bench" / "grpc_servers.py"), "--serve", "uvloop",
                                                        f"unix:{root / 'uvloop.sock'}", "0"])):
            proc = stack.enter_context(process([sys.executable, *argv], root, f"{len(servers)}.log"))
            servers[name] = ("echo", root / ("floor.sock" if name == FLOOR else "uvloop.sock"), proc.pid)
        for name, (cut, registered) in CUTS.items():
            sock = root / f"w{len(servers)}.sock"
            proc = stack.enter_context(process(
                [sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)], root,
                f"{len(servers)}.log", {"PYTHONPATH": str(args.patched.resolve() / "daemon"), "WARMD_EXPERIMENT": cut,
                                        "WARMD_EXPERIMENT_REGISTERED": "1" if registered else None}))
            with Client(sock, timeout=60) as client:
                wait_for(lambda: client.status(), timeout=60)   # noqa: B023 - called at once
                client.load("mlp")
            servers[name] = ("v2", sock, proc.pid)
        for _, sock, _ in servers.values():     # the echo servers bind theirs a moment after they start
            wait_for(sock.exists, timeout=60)
        runs: dict[str, list[Load]] = {name: [] for name in servers}
        for r in range(args.rounds):
            for name in rotated(list(servers), r):
                kind, sock, pid = servers[name]
                runs[name].append(throughput(kind, f"unix:{sock}", "mlp", seconds=args.seconds, server_pid=pid))

    lines = ["# A call under the 32-client load, cut short (tiny MLP, Unix sockets)", "",
             f"`.venv/bin/python bench/under_load.py --patched {args.patched} --rounds {args.rounds} --seconds "
             f"{args.seconds:g}` on {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
             "median (min-max) over the rounds", "",
             "| server | calls/s | calls/s / floor, per round | server CPU µs/call |", "|---|---|---|---|"]
    for name, loads in runs.items():
        ratios = [load.rate / floor.rate for load, floor in zip(loads, runs[FLOOR])]
        cpu = [load.server_us or 0.0 for load in loads]
        lines.append(f"| {name} | {statistics.median(load.rate for load in loads):.0f} | "
                     f"{spread(ratios, lambda v: f'{v:.2f}x')} | {spread(cpu, lambda v: f'{v:.0f}')} |")
    write_report("under_load", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
