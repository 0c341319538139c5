"""What Python the gRPC event loop runs per call under the 32-client load: cProfile on the loop thread of a
daemon cut short, calls 3001-9000 of the load (the first 3000 warm it up).

    git worktree add /tmp/cut HEAD && git -C /tmp/cut apply bench/results/profiles/under-load.patch
    .venv/bin/python bench/loop_profile.py --patched /tmp/cut [--top 25]

`--patched DIR` is a checkout with bench/results/profiles/under-load.patch applied (see bench/under_load.py):
its daemon profiles its loop into WARMD_EXPERIMENT_PROFILE. Each variant of bench/under_load.py's (a fixed
response with the methods registered as before ebda0c0 and without, no forward, the whole call) runs in a
daemon of its own, one after another, with bench/peers.py's load on the Unix socket. Reports Python function
calls and cProfile's own time per gRPC call, and the functions with most own time. cProfile's own cost is in
its times (a few times a call's real one): compare the variants' counts and orders, not their µs with
bench/under_load.py's.
"""
from __future__ import annotations

import argparse
import os
import platform
import pstats
import re
import sys
import time
from pathlib import Path

from common import process, wait_for, workdir, write_report
from peers import throughput
from under_load import CUTS

from models import write_mlp

PROFILED = 6000     # calls 3001-9000 of the load (the patch's _tick)
MAX_LOADS = 40      # 2 minutes of load: the 9000th call comes within a few loads, even with cProfile on


def profile(root: Path, patched: Path, cut: str, registered: bool, out: Path) -> pstats.Stats:
    """Run the load on one cut daemon until its loop wrote `out`; its stats."""
    from warm import Client

    sock = root / f"{out.stem}.sock"
    env = {"PYTHONPATH": str(patched.resolve() / "daemon"), "WARMD_EXPERIMENT": cut,
           "WARMD_EXPERIMENT_REGISTERED": "1" if registered else None, "WARMD_EXPERIMENT_PROFILE": str(out)}
    with process([sys.executable, "-m", "warmd", "serve", "--specs", str(root / "specs"), "--socket", str(sock)],
                 root, f"{out.stem}.log", env) as proc, Client(sock, timeout=60) as client:
        wait_for(lambda: client.status(), timeout=60)
        client.load("mlp")
        for _ in range(MAX_LOADS):  # cProfile slows the loop: load until its 9000th call
            throughput("v2", f"unix:{sock}", "mlp", seconds=3, server_pid=proc.pid)
            if out.exists():
                break
        else:
            raise SystemExit(f"{patched} wrote no loop profile after {MAX_LOADS} loads of 3 s: apply "
                             "bench/results/profiles/under-load.patch to it (see this script's docstring)")
    return pstats.Stats(str(out))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patched", type=Path, required=True, help="a checkout with under-load.patch applied")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    lines = ["# The event loop's Python per call under the 32-client load (cProfile, tiny MLP, Unix socket)", "",
             f"`.venv/bin/python bench/loop_profile.py --patched {args.patched} --top {args.top}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
             f"{PROFILED} calls profiled per variant", "",
             "| variant | Python calls per call | cProfile own time, µs per call |", "|---|---|---|"]
    tops: list[str] = []
    with workdir() as root:
        (root / "specs").mkdir()
        write_mlp(root / "specs")
        for i, (name, (cut, registered)) in enumerate(CUTS.items()):
            stats = profile(root, args.patched, cut, registered, root / f"loop{i}.prof")
            rows = stats.stats.items()   # type: ignore[attr-defined]
            calls = sum(row[1] for _, row in rows) / PROFILED
            own = sum(row[2] for _, row in rows) / PROFILED * 1e6
            lines.append(f"| {name} | {calls:.0f} | {own:.0f} |")
            tops += ["", f"## {name}", "", "| calls per call | own µs per call | function |", "|---|---|---|"]
            for (file, line, func), row in sorted(rows, key=lambda item: -item[1][2])[:args.top]:
                where = re.sub(r".*/(site-packages|daemon|python3\.\d+)/", "", file)
                tops.append(f"| {row[1] / PROFILED:.2f} | {row[2] / PROFILED * 1e6:.2f} | `{where}:{line} {func}` |")
    write_report("profiles/loop", lines + tops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
