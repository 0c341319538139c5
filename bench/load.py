"""Model load throughput through the daemon, against floors measured in the same run.

    .venv/bin/python bench/load.py [--gib 2] [--runs 3] [--device cpu|cuda:0]

A torch model of --gib GiB (fp32 Linear layers, safetensors) is loaded by `warm load` and unloaded, from
the page cache and (where /proc/sys/vm/drop_caches can be written, i.e. as root) from a cold cache.
Floors: reading the file into memory with one thread and with 8 (page cache and cold).
With a CUDA device, also: the pinned host-to-device copy (the bus limit), `safetensors.torch.load_file(
device="cuda")` (the usual way), the staging loader in-process for a few reader/chunk settings, and a model
coming back from the host-RAM tier (`warm load` of a parked model).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

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


def raw_read(path: Path, threads: int = 1) -> float:
    """Read the whole file into 64 MiB buffers (one per thread); the time it took."""
    chunk = 64 * 2**20
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    offsets = list(range(0, size, chunk))

    def work(first: int) -> None:
        buf = memoryview(bytearray(chunk))
        for offset in offsets[first::threads]:
            os.preadv(fd, [buf], offset)

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    elapsed = time.monotonic() - t0
    os.close(fd)
    return elapsed


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    t0 = time.monotonic()
    result = fn()
    sync()
    elapsed = time.monotonic() - t0
    del result
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch
    from safetensors.torch import load_file, save_file

    from warm import Client

    gpu = args.device.startswith("cuda")
    layers = args.gib * 4
    size = layers * LAYER * LAYER * 4
    rows: dict[str, list[float]] = {}

    def measure(name: str, fn: Callable[[], float]) -> None:
        rows.setdefault(name, []).append(fn())

    cold = drop_caches()
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        (specs / "stack.py").write_text(FACTORY)
        # random values: zeros can hide a copy that never happened
        save_file({f"{i}.weight": torch.randn(LAYER, LAYER) for i in range(layers)}, str(specs / "big.safetensors"))
        model = (f"provider: torch\ndevice: {args.device}\nsource: {{path: big.safetensors}}\n"
                 f"options: {{factory: 'stack.py:stack', args: {{n: {layers}}}}}\n")
        (specs / "big.yaml").write_text(model)
        (specs / "other.yaml").write_text(model)
        (specs / "tiny.yaml").write_text(f"provider: torch\ndevice: {args.device}\nsource: {{path: big.safetensors}}\n"
                                         "memory: 1\noptions: {factory: 'stack.py:stack', args: {n: 0}, strict: false}\n")
        weights = specs / "big.safetensors"
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        if gpu:
            from warmd.providers.staging import load_to_device

            pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            settings = [(4, 16), (8, 16), (16, 16), (16, 32)]   # the default is 16 x 16 MiB
        sock = root / "w.sock"
        budget = {"WARMD_CPU_BUDGET": "0.9", "WARMD_GPU_BUDGET": str(int(size * 1.5)),
                  "WARMD_HOST_TIER_BUDGET": str(size * 3)}
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                     root, "warmd.log", budget):
            with Client(sock) as client:
                wait_for(lambda: client.status())
                client.load("tiny")            # torch (and CUDA) start with the first load; not what we measure
                client.unload("tiny")

                def unload(name: str) -> None:
                    client.unload(name)
                    time.sleep(1.0)            # freeing the memory (~70 ms for 4 GiB on an H100) is the unload's

                def warm_load() -> float:
                    elapsed = timed(lambda: client.load("big"))
                    unload("big")
                    return elapsed

                def from_host_tier() -> float:
                    client.load("big")
                    client.load("other")       # big no longer fits beside it: parked in host memory
                    unload("other")
                    assert {m.name: m.residency.tier for m in client.status().resident} == {"big": "host"}
                    elapsed = timed(lambda: client.load("big"))
                    unload("big")
                    return elapsed

                for _ in range(args.runs):
                    raw_read(weights)          # make sure it is in the page cache
                    measure("raw read, page cache, 1 thread", lambda: raw_read(weights))
                    measure("raw read, page cache, 8 threads", lambda: raw_read(weights, 8))
                    if gpu:
                        measure("pinned host→device copy (bus limit)",
                                lambda: timed(lambda: pinned.to(args.device, non_blocking=True), sync))
                        measure("safetensors load_file(device=cuda)",
                                lambda: timed(lambda: load_file(str(weights), device=args.device), sync))
                        for readers, mib in settings:
                            measure(f"staging loader in-process, {readers} readers x {mib} MiB",
                                    lambda: timed(lambda: load_to_device(weights, args.device, readers=readers,
                                                                         chunk=mib * 2**20), sync))
                    else:
                        measure("safetensors load_file (maps the file, reads nothing yet)",
                                lambda: timed(lambda: load_file(str(weights))))
                    measure("warm load, page cache", warm_load)
                    if gpu:
                        measure("warm load, from the host-RAM tier", from_host_tier)
                    if cold:
                        drop_caches()
                        measure("raw read, cold, 1 thread", lambda: raw_read(weights))
                        drop_caches()
                        measure("raw read, cold, 8 threads", lambda: raw_read(weights, 8))
                        drop_caches()
                        measure("warm load, cold", warm_load)
    gb = size / 1e9
    best = {state: min(statistics.median(v) for k, v in rows.items() if k.startswith(f"raw read, {state}"))
            for state in (["page cache", "cold"] if cold else ["page cache"])}
    bus = statistics.median(rows["pinned host→device copy (bus limit)"]) if gpu else None
    lines = [f"# Load throughput, {args.gib} GiB fp32 torch model ({layers} x Linear 8192x8192) to {args.device}",
             "",
             f"`.venv/bin/python bench/load.py --gib {args.gib} --runs {args.runs} --device {args.device}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs{', ' + torch.cuda.get_device_name() if gpu else ''}, "
             f"{time.strftime('%Y-%m-%d')}" + ("" if cold else " (no permission to drop caches: no cold rows)"),
             "",
             "Ratios: to the faster raw read in the same cache state" + ("; to the pinned host→device copy" if gpu
                                                                        else ""),
             "",
             "| path | median s | GB/s | vs raw read |" + (" vs bus |" if gpu else ""),
             "|---|---|---|---|" + ("---|" if gpu else "")]
    for name, values in rows.items():
        t = statistics.median(values)
        ref = best["cold" if "cold" in name else "page cache"]
        lines.append(f"| {name} | {t:.3f} | {gb / t:.2f} | {ref / t:.2f}x |" + (f" {bus / t:.2f}x |" if gpu else ""))
    write_report(f"load-{args.device.split(':')[0]}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
