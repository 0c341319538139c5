"""Model load throughput through the daemon, against raw reads of the same file in the same run.

    .venv/bin/python bench/load.py [--gib 2] [--runs 3]

A torch model of --gib GiB (fp32 Linear layers, safetensors) is loaded by `warm load` and unloaded, from
the page cache and (where /proc/sys/vm/drop_caches can be written, i.e. as root) from a cold cache. The
floors: reading the file into memory (page cache) and from disk (cold), and `safetensors.torch.load_file`.
On this CPU-only machine the flow ends in host memory; on a GPU machine the same command loads to cuda:0
when the spec says `device: cuda` (--device).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

from common import process, wait_for, workdir, write_report

LAYER = 8192                 # one Linear(8192, 8192) fp32 = 256 MiB
FACTORY = ("import torch\n\ndef stack(n):\n"
           "    return torch.nn.Sequential(*[torch.nn.Linear(8192, 8192, bias=False) for _ in range(n)])\n")


def drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def raw_read(path: Path) -> float:
    buf = bytearray(64 * 2**20)
    view = memoryview(buf)
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.monotonic() - t0


def safetensors_read(path: Path) -> float:
    from safetensors.torch import load_file

    t0 = time.monotonic()
    state = load_file(str(path))
    elapsed = time.monotonic() - t0
    del state
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch
    from safetensors.torch import save_file

    from warm import Client

    layers = args.gib * 4
    size = layers * LAYER * LAYER * 4
    mapped = "safetensors load_file (maps the file, reads nothing yet)"
    rows: dict[str, list[float]] = {"raw read, page cache": [], mapped: [], "warm load, page cache": []}
    cold = drop_caches()
    if cold:
        rows.update({"raw read, cold": [], "warm load, cold": []})
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        (specs / "stack.py").write_text(FACTORY)
        save_file({f"{i}.weight": torch.zeros(LAYER, LAYER) for i in range(layers)}, str(specs / "big.safetensors"))
        (specs / "big.yaml").write_text(f"provider: torch\ndevice: {args.device}\nsource: {{path: big.safetensors}}\n"
                                        f"options: {{factory: 'stack.py:stack', args: {{n: {layers}}}}}\n")
        (specs / "tiny.yaml").write_text(f"provider: torch\ndevice: {args.device}\nsource: {{path: big.safetensors}}\n"
                                         "memory: 1\noptions: {factory: 'stack.py:stack', args: {n: 0}, strict: false}\n")
        weights = specs / "big.safetensors"
        sock = root / "w.sock"
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                     root, "warmd.log", {"WARMD_CPU_BUDGET": "0.9"}):
            with Client(sock) as client:
                wait_for(lambda: client.status())
                client.load("tiny")            # torch is imported by the first load; not what we measure
                client.unload("tiny")

                def warm_load() -> float:
                    t0 = time.monotonic()
                    client.load("big")
                    elapsed = time.monotonic() - t0
                    client.unload("big")
                    return elapsed

                for _ in range(args.runs):
                    raw_read(weights)          # make sure it is in the page cache
                    rows["raw read, page cache"].append(raw_read(weights))
                    rows[mapped].append(safetensors_read(weights))
                    rows["warm load, page cache"].append(warm_load())
                    if cold:
                        drop_caches()
                        rows["raw read, cold"].append(raw_read(weights))
                        drop_caches()
                        rows["warm load, cold"].append(warm_load())
    gb = size / 1e9
    floor = {"page cache": statistics.median(rows["raw read, page cache"])}
    if cold:
        floor["cold"] = statistics.median(rows["raw read, cold"])
    lines = [f"# Load throughput, {args.gib} GiB fp32 torch model ({layers} x Linear 8192x8192) to {args.device}",
             "",
             f"`.venv/bin/python bench/load.py --gib {args.gib} --runs {args.runs} --device {args.device}` on "
             f"{platform.machine()}, {time.strftime('%Y-%m-%d')}" + ("" if cold else
                                                                    " (no permission to drop caches: no cold rows)"),
             "",
             "| path | median s | GB/s | ratio to raw read (same cache state) |",
             "|---|---|---|---|"]
    for name, values in rows.items():
        t = statistics.median(values)
        ref = floor["cold" if name.endswith("cold") else "page cache"]
        lines.append(f"| {name} | {t:.2f} | {gb / t:.2f} | {ref / t:.2f}x |")
    write_report('load', lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
