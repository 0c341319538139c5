"""Cluster mode against the local daemon: what serving a model through Ray Serve costs, in one run.

    .venv/bin/python bench/cluster.py [--calls 500] [--seconds 5] [--runs 2]

One local Ray (2 CPUs, tests/raycluster.py) with `warmd cluster deploy` of one replica; the tiny MLP
(64->128->10, [1,64] float32, max_in_flight 32) served from the same specs folder by two daemons: one
local, one a cluster front (`placement: cluster` in its config). Measured per run, the paths in turn:

- per-call p50/p99 of sequential V2 ModelInfer calls over each daemon's Unix socket (the same client);
- throughput of 32 concurrent clients (threads in 4 processes, bench/peers.py's load);
- the Ray hop alone: a driver calling the deployment handle with the model as multiplexed id, the same
  payload the front sends (routing, the replica actor call, the provider, the reply), no warmd front.

The table (every run, and ratios) goes to bench/results/cluster.md. Everything it starts it stops.
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

from common import percentile, process, wait_for, workdir, write_report
from peers import V2, latency, throughput

from conftest import isolated_env
from models import write_mlp
from raycluster import LocalRay

HANDLE = r'''
import json, sys, time
import numpy as np
from warmd.cluster import front
handle = front._deployment(sys.argv[1]).options(multiplexed_model_id="mlp")
body = {"tensors": {"x": np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)}, "text": [],
        "parameters": {}, "timeout_s": None}
for _ in range(20):
    handle.infer.remote(body).result()
out = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    handle.infer.remote(body).result()
    out.append(time.perf_counter() - t0)
print(json.dumps(out))
'''


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per path and run")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run per path and run")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    runs = []
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs, "mlp")
        (specs / "mlp.yaml").write_text((specs / "mlp.yaml").read_text() + "max_in_flight: 32\n")
        with LocalRay(cpus=2, env=isolated_env(root)) as ray_cluster:
            subprocess.run([sys.executable, "-m", "warmd", "cluster", "deploy", "--address", ray_cluster.address,
                            "--specs", str(specs), "--replicas", "1", "--models-per-replica", "1"],
                           env=ray_cluster.env, check=True, capture_output=True, timeout=300)
            (root / "front.yaml").write_text(f"cluster: '{ray_cluster.address}'\nplacement: cluster\n")
            local_sock, front_sock = root / "local.sock", root / "front.sock"
            (root / "l").mkdir()
            with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(local_sock)],
                         root / "l", "local.log"), \
                    process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket",
                             str(front_sock), "--config", str(root / "front.yaml")], root, "front.log",
                            ray_cluster.variables):
                local, front = V2(f"unix:{local_sock}"), V2(f"unix:{front_sock}")
                for client in (local, front):
                    wait_for(lambda c=client: c.infer("mlp") or True, timeout=300, interval=0.2)
                for _ in range(args.runs):
                    runs.append(measure(args, ray_cluster, local, front, local_sock, front_sock))
            subprocess.run([sys.executable, "-m", "warmd", "cluster", "delete", "--address", ray_cluster.address],
                           env=ray_cluster.env, capture_output=True, timeout=120)
    report(runs, args)
    return 0


def measure(args: argparse.Namespace, ray_cluster: LocalRay, local: V2, front: V2, local_sock: Path,
            front_sock: Path) -> dict:
    """One run: both daemons' per-call times and throughput, and the Ray hop alone."""
    handle = subprocess.run([sys.executable, "-c", HANDLE, ray_cluster.address, str(args.calls)],
                            env={**os.environ, **ray_cluster.variables}, capture_output=True, text=True,
                            timeout=300, check=True)
    return {
        "load": os.getloadavg()[0],            # what else the machine was doing (1-minute load average)
        "local": latency(local, "mlp", args.calls),
        "front": latency(front, "mlp", args.calls),
        "handle": json.loads(handle.stdout.strip().splitlines()[-1]),
        "local_tput": throughput("v2", f"unix:{local_sock}", "mlp", seconds=args.seconds),
        "front_tput": throughput("v2", f"unix:{front_sock}", "mlp", seconds=args.seconds),
    }


def report(runs: list[dict], args: argparse.Namespace) -> None:
    import ray

    ms = lambda xs, q: f"{percentile(xs, q) * 1000:.2f} ms"  # noqa: E731
    lines = ["# Cluster mode: the tiny MLP through a Ray Serve cluster front against the local daemon", "",
             f"`.venv/bin/python bench/cluster.py --calls {args.calls} --seconds {args.seconds:g} --runs {args.runs}`"
             f" on {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, Ray {ray.__version__}; "
             "one local Ray (2 CPUs), one replica; V2 ModelInfer [1,64] float32 over each daemon's Unix socket.", "",
             "| run | load average | local p50 | p99 | front p50 | p99 | front / local p50 | Ray hop alone p50 "
             "| Ray hop / front p50 | local calls/s, 32 clients | front calls/s | front / local calls/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lp, fp, hp = (percentile(r[k], 50) for k in ("local", "front", "handle"))
        lines.append(f"| {i} | {r['load']:.1f} | {ms(r['local'], 50)} | {ms(r['local'], 99)} | {ms(r['front'], 50)} | "
                     f"{ms(r['front'], 99)} | {fp / lp:.2f}x | {ms(r['handle'], 50)} | {hp / fp:.2f} | "
                     f"{r['local_tput']:.0f} | {r['front_tput']:.0f} | {r['front_tput'] / r['local_tput']:.2f}x |")
    lines += ["", "Load average: the machine's 1-minute load average when the run began (2 CPUs; above 2, other "
              "programs were competing for them).", "",
              "The Ray hop alone is a Python driver calling the deployment handle (routing by the warmd router, "
              "the replica actor call, the provider, the reply) with the payload the front sends; the rest of the "
              "front's time is the local daemon's own path (V2, admission, statistics)."]
    write_report("cluster", lines)


if __name__ == "__main__":
    sys.exit(main())
