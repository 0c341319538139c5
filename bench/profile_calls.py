"""Where a call's time goes: py-spy on the daemon while 32 clients (bench/peers.py's load) call it, and
who uses the machine's CPUs meanwhile (the daemon, the load's client processes, everything else).

    .venv/bin/python bench/profile_calls.py [--seconds 4] [--transport unix|tcp] [--tag NAME] [--checkout DIR]

Needs py-spy beside the interpreter (`.venv/bin/python -m pip install py-spy`; it reads the daemon's memory: run as root or with
ptrace allowed). Writes bench/results/profiles/<tag>-<transport>.svg (a flame graph of the daemon's running
threads) and <tag>-<transport>.md: the calls/s, CPU microseconds per call of the daemon and of everything
else, and the frames sampled most (own time and with their callees), of the running threads and of the
thread holding the GIL (`py-spy --gil`: where Python itself is the bottleneck).

Server CPU per call is the figure a shared machine disturbs least: calls/s moves with whatever else runs,
the daemon's CPU time per call much less.
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import RESULTS, process, wait_for, workdir, write_report
from peers import throughput, tree_cpu

from models import write_mlp
from waiting import free_port

PROFILES = RESULTS / "profiles"
TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


def py_spy(pid: int, seconds: float, out: Path, fmt: str, gil: bool) -> None:
    """Sample `pid` for `seconds`: the thread holding the GIL (`gil`), or every thread not idle."""
    subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "250",
                    "--duration", str(int(seconds)), "--format", fmt, "--output", str(out), "--nonblocking",
                    *(["--gil"] if gil else [])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=seconds + 60, check=True)


def top_frames(collapsed: Path, count: int = 15) -> tuple[list[str], list[str]]:
    """(own, inclusive) rows of the frames that were sampled most, as `share | frame` table rows."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].rsplit(":", 1)[0].rsplit("/", 2)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")[1:]]      # first frame: the thread
        total += int(n)
        if frames:
            own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    rows = lambda c: [f"| {v / total:.1%} | `{k}` |" for k, v in c.most_common(count)]  # noqa: E731
    return rows(own), rows(inclusive)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--transport", choices=("unix", "tcp"), default="unix")
    parser.add_argument("--tag", default="now", help="names the output files (e.g. before, after)")
    parser.add_argument("--checkout", type=Path, help="run the daemon of another checkout's daemon/ (e.g. main's)")
    args = parser.parse_args()
    PROFILES.mkdir(parents=True, exist_ok=True)
    name = f"{args.tag}-{args.transport}"
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs, "mlp")
        port = free_port()
        sock = root / "w.sock"
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock),
                      "--tcp", f"127.0.0.1:{port}"], root, "warmd.log",
                     {"PYTHONPATH": str(args.checkout.resolve() / "daemon")} if args.checkout else None) as daemon:
            token_file = root / "config" / "warmd" / "token"
            wait_for(lambda: token_file.is_file() and token_file.read_text().strip(), timeout=120)
            from warm import Client

            with Client(sock, timeout=120) as client:
                client.load("mlp")
            address, token = (f"unix:{sock}", "") if args.transport == "unix" else \
                (f"127.0.0.1:{port}", token_file.read_text().strip())
            throughput("v2", address, "mlp", token, seconds=1)            # warm up every path
            rate: list[float] = []
            load = threading.Thread(target=lambda: rate.append(
                throughput("v2", address, "mlp", token, seconds=3 * args.seconds + 3).rate))
            before = (time.monotonic(), tree_cpu(daemon.pid), machine_busy())
            load.start()
            time.sleep(1)
            for fmt, out, gil in (("raw", root / "gil.txt", True), ("raw", root / "active.txt", False),
                                  ("flamegraph", PROFILES / f"{name}.svg", False)):
                py_spy(daemon.pid, args.seconds, out, fmt, gil)
            load.join()
            wall, daemon_cpu, busy = (b - a for b, a in zip(
                (time.monotonic(), tree_cpu(daemon.pid), machine_busy()), before))
            gil_own, gil_inclusive = top_frames(root / "gil.txt")
            active_own, active_inclusive = top_frames(root / "active.txt")
    calls = rate[0] * (3 * args.seconds + 3)
    lines = [f"# Profile of the call path: {args.tag}, {args.transport}, 32 clients, tiny MLP", "",
             f"`.venv/bin/python bench/profile_calls.py --transport {args.transport} --tag {args.tag} --seconds "
             f"{args.seconds:g}{' --checkout ' + str(args.checkout) if args.checkout else ''}` on {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')} "
             f"(calls/s moves with whatever else runs; CPU per call much less), daemon from "
             f"{args.checkout or 'this checkout'}. Flame graph of the running threads: [{name}.svg]({name}.svg).", "",
             "| calls/s | daemon CPU µs/call | everything else (clients, other users) CPU µs/call | daemon share of busy CPU |",
             "|---|---|---|---|",
             f"| {rate[0]:.0f} | {daemon_cpu / calls * 1e6:.0f} | {(busy - daemon_cpu) / calls * 1e6:.0f} | "
             f"{daemon_cpu / busy:.0%} |", "",
             "Frames of the threads that run (holding the GIL or in C code without it, e.g. torch's kernels), "
             "own time:", "", "| share | frame |", "|---|---|", *active_own, "", "The same, with their callees:", "",
             "| share | frame |", "|---|---|", *active_inclusive, "",
             "Frames holding the GIL, own time:", "", "| share | frame |", "|---|---|", *gil_own, "",
             "Frames holding the GIL, with their callees:", "", "| share | frame |", "|---|---|", *gil_inclusive]
    write_report(f"profiles/{name}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
