"""What a runner process adds per call: the tiny torch MLP in the daemon against the same model with
`isolation: process` (its own runner, tensors through shared memory), over the Unix socket.

    .venv/bin/python bench/isolation.py [--calls 2000] [--runs 2]

Each run starts a fresh daemon serving both specs and interleaves the two call by call (so the machine's
noise hits both alike): a [1,64] float32 request, p50 and p99; then a 4 MiB request ([16384,64] float32,
a 640 KiB answer). Reports the isolated p50 over the in-process p50 and the milliseconds it adds.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from common import percentile, process, wait_for, workdir, write_report

from models import write_mlp


def one_run(calls: int) -> dict[str, dict[str, list[float]]]:
    from warm import Client

    samples: dict[str, dict[str, list[float]]] = {"small": {}, "4 MiB": {}}
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs)
        text = (specs / "mlp.yaml").read_text()
        (specs / "mlp-isolated.yaml").write_text(text + "isolation: process\n")
        sock = root / "w.sock"
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                     root, "warmd.log"):
            client = Client(sock, timeout=120)
            wait_for(lambda: client.status())
            models = ("mlp", "mlp-isolated")
            for name in models:
                client.load(name)
            inputs = {"small": np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32),
                      "4 MiB": np.random.default_rng(1).standard_normal((16384, 64), dtype=np.float32)}
            for size, x in inputs.items():
                outs = [client.infer(name, {"x": x}).outputs["y"] for name in models]
                assert np.allclose(outs[0], outs[1], atol=1e-5), "the runner answers as the daemon does"
                n = calls if size == "small" else max(20, calls // 10)
                for name in models:           # warm up both paths
                    for _ in range(min(200, n)):
                        client.infer(name, {"x": x})
                samples[size] = {name: [] for name in models}
                for i in range(n):
                    for name in (models if i % 2 else models[::-1]):
                        t0 = time.perf_counter()
                        client.infer(name, {"x": x})
                        samples[size][name].append((time.perf_counter() - t0) * 1000)
            client.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="small calls per model per run")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    lines = ["# Isolation: a runner process against the in-process path, Unix socket, tiny MLP 64-128-10", "",
             f"`.venv/bin/python bench/isolation.py --calls {args.calls} --runs {args.runs}` "
             f"on {platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}", "",
             "| run | request | in-process p50 / p99 ms | runner p50 / p99 ms | p50 ratio | added p50 ms |",
             "|---|---|---|---|---|---|"]
    for run in range(1, args.runs + 1):
        for size, by_model in one_run(args.calls).items():
            inside, outside = by_model["mlp"], by_model["mlp-isolated"]
            p50_in, p50_out = percentile(inside, 50), percentile(outside, 50)
            lines.append(f"| {run} | {size} | {p50_in:.3f} / {percentile(inside, 99):.3f} | {p50_out:.3f} / "
                         f"{percentile(outside, 99):.3f} | {p50_out / p50_in:.2f}x | {p50_out - p50_in:.3f} |")
    write_report("isolation", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
