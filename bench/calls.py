"""How fast the daemon lets go: cancel of a streamed generation until its slot is free again, and a
`busy` refusal under overload, each against a floor measured in the same run.

    .venv/bin/python bench/calls.py [--trials 30]

Model: a tiny random GPT-2 (transformers provider, real tokenizer) with max_in_flight 1, max_queue 0.
- cancel: read 3 tokens of a 20000-token stream, close it, then call until the slot is free; the floor is one
  generation step (a token), the least a cancel between steps can take. Goal: <= 100 ms.
- busy: while the slot is taken, a second call is refused; the floor is a `model_not_found` round trip
  (the cheapest refusal the daemon can give).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from common import percentile, process, wait_for, workdir, write_report

from models import write_tiny_transformer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    from warm import Client, WarmdError

    def refused(fn) -> float:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            fn()
        except WarmdError:
            return time.perf_counter() - t0
        raise AssertionError("the call was expected to be refused")

    cancel, step, busy, floor = [], [], [], []
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        write_tiny_transformer(root / "gpt2", "gpt2")
        (specs / "gpt.yaml").write_text(f"provider: transformers\ntask: text-generation\ndevice: cpu\n"
                                        f"source: {{path: {root / 'gpt2'}}}\nmax_in_flight: 1\nmax_queue: 0\n"
                                        "keep_alive: -1\n")
        (root / "config.yaml").write_text(f"path_roots: [{root}]\n")
        sock = root / "w.sock"
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock),
                      "--config", str(root / "config.yaml")], root, "warmd.log"):
            with Client(sock, timeout=60) as c:
                wait_for(lambda: c.status())
                c.load("gpt")
                one = {"max_new_tokens": 1}
                for _ in range(args.trials):
                    t0 = time.perf_counter()
                    c.infer("gpt", text=["x"], parameters={"max_new_tokens": 41})
                    t1 = time.perf_counter()
                    c.infer("gpt", text=["x"], parameters=one)
                    step.append(((t1 - t0) - (time.perf_counter() - t1)) / 40)   # per token, call cost removed
                    stream = c.infer_stream("gpt", text=["go on"], parameters={"max_new_tokens": 20000})
                    for i, _ in enumerate(stream):
                        if i == 2:
                            break
                    busy.append(refused(lambda: c.infer("gpt", text=["x"], parameters=one)))
                    floor.append(refused(lambda: c.infer("nope", text=["x"])))
                    t0 = time.perf_counter()
                    stream.close()
                    while True:
                        try:
                            c.infer("gpt", text=["x"], parameters=one)
                            break
                        except WarmdError:
                            time.sleep(0.001)
                    cancel.append(time.perf_counter() - t0)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:.1f} | {percentile(values, 99) * 1e3:.1f}"

    lines = ["# Cancel and backpressure", "",
             f"`.venv/bin/python bench/calls.py --trials {args.trials}` on {platform.machine()}, {os.cpu_count()} "
             f"CPUs, {time.strftime('%Y-%m-%d')}", "",
             "| what | p50 ms | p99 ms | ratio (p50) |", "|---|---|---|---|",
             f"| one generation step (floor for a cancel between steps) | {ms(step)} | 1.00x |",
             f"| cancel mid-stream until the slot serves again | {ms(cancel)} | "
             f"{statistics.median(cancel) / statistics.median(step):.1f}x step |",
             f"| `model_not_found` round trip (floor for a refusal) | {ms(floor)} | 1.00x |",
             f"| `busy` while the slot is taken | {ms(busy)} | "
             f"{statistics.median(busy) / statistics.median(floor):.2f}x |", "",
             f"Cancel goal <= 100 ms: p50 {statistics.median(cancel) * 1e3:.0f} ms, p99 "
             f"{percentile(cancel, 99) * 1e3:.0f} ms."]
    write_report("calls", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
