"""A catalog's scale: 100, 1 000 and 10 000 spec files (and an empty folder, the baseline).

    .venv/bin/python bench/catalog_scale.py [--sizes 100,1000,10000] [--calls 20] [--checkout DIR]

For each size, a fresh daemon on a folder of that many specs (bench/ready.py's spec, each its own name and a
package source, so each has local files to look at) and measures:
- ready: process start until ListModels lists them all, at the first start and at a later one (the same
  state folders, one file edited in between: the others passed before, warmd.validated);
- ListModels: p50 and max of `--calls` calls (the goal: <= 50 ms at 10 000);
- edit -> catalog.changed: one spec file rewritten (another description) until the Watch stream has its
  `catalog.changed` (it includes the catalog's debounce, `reload_debounce`, 0.25 s by default);
- memory per spec: the daemon's RSS once ready, minus the empty folder's, over the number of specs.
Per-spec figures (ms or KiB per 1 000 specs) show whether each grows at most linearly.
`--checkout DIR` runs another checkout's daemon/ instead (a before/after; written to catalog_scale-baseline.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

from common import REPO, compile_daemon, process, wait_for, workdir, write_report
from peers import tree_rss
from ready import SPEC


def measure(root: Path, count: int, calls: int, env: dict[str, str | None]) -> dict[str, float]:
    from warm import Client

    specs = root / f"specs-{count}"
    specs.mkdir()
    for i in range(count):
        (specs / f"model-{i:05d}.yaml").write_text(SPEC.format(i=i, g=i % 7))
    sock = root / "w.sock"
    start = time.monotonic()
    with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                 root, f"warmd-{count}.log", env) as daemon:
        with Client(sock, timeout=120) as client:
            ready = wait_for(lambda: sock.exists() and len(client.list().models) == count, timeout=600,
                             interval=0.01) - start
            time.sleep(1.0)                     # let the first rescan's garbage go before reading the RSS
            rss = tree_rss(daemon.pid)
            latencies = []
            for _ in range(calls):
                t0 = time.perf_counter()
                client.list()
                latencies.append(time.perf_counter() - t0)
            edit = edit_to_changed(client, specs, count) if count else 0.0
    later = time.monotonic()          # the same folders again: every file but the edited one passed before
    with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                 root, f"warmd-{count}-later.log", env):
        with Client(sock, timeout=120) as client:
            ready_later = wait_for(lambda: sock.exists() and len(client.list().models) == count, timeout=600,
                                   interval=0.01) - later
    return {"ready": ready, "ready_later": ready_later, "list_p50": statistics.median(latencies),
            "list_max": max(latencies), "edit": edit, "rss": rss}


def edit_to_changed(client, specs: Path, count: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds from rewriting one spec file to its catalog.changed on a Watch stream."""
    target = count // 2
    events: queue.Queue = queue.Queue()
    stream = client.watch(kinds=["catalog.changed"], model=f"model-{target:05d}")

    def follow() -> None:
        with contextlib.suppress(Exception):           # the stream ends with the daemon
            for _ in stream:
                events.put(time.monotonic())
    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.5)                             # the stream is subscribed
    path = specs / f"model-{target:05d}.yaml"
    t0 = time.monotonic()
    path.write_text(path.read_text().replace("spec ", "edited spec ", 1))
    return events.get(timeout=120) - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--checkout", type=Path, help="run another checkout's daemon/ (e.g. main's)")
    args = parser.parse_args()
    env: dict[str, str | None] = {"PYTHONPATH": str(args.checkout.resolve() / "daemon")} if args.checkout else {}
    compile_daemon(args.checkout.resolve() if args.checkout else REPO)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {}
    with workdir() as root:
        base = measure(root, 0, args.calls, env)
        for count in sizes:
            rows[count] = measure(root, count, args.calls, env)
            print(count, rows[count], flush=True)
    per_k = lambda value, count: value / count * 1000  # noqa: E731
    lines = [f"# Catalog scale: {', '.join(map(str, sizes))} spec files", "",
             f"`.venv/bin/python bench/catalog_scale.py --sizes {args.sizes} --calls {args.calls}"
             f"{' --checkout ' + str(args.checkout) if args.checkout else ''}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}. "
             f"Empty folder: ready {base['ready']:.2f} s (later start {base['ready_later']:.2f} s), RSS {base['rss'] / 2**20:.0f} MiB, ListModels "
             f"{base['list_p50'] * 1e3:.1f} ms.", "",
             "| specs | ready | ready per 1 000 specs | later start: ready | per 1 000 specs | ListModels p50 | "
             "max | p50 per 1 000 specs | edit → catalog.changed | RSS | RSS per spec |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for count, r in rows.items():
        lines.append(f"| {count} | {r['ready']:.2f} s | {per_k(r['ready'], count):.2f} s | "
                     f"{r['ready_later']:.2f} s | {per_k(r['ready_later'], count):.2f} s | "
                     f"{r['list_p50'] * 1e3:.1f} ms | {r['list_max'] * 1e3:.1f} ms | "
                     f"{per_k(r['list_p50'], count) * 1e3:.1f} ms | {r['edit']:.2f} s | {r['rss'] / 2**20:.0f} MiB | "
                     f"{(r['rss'] - base['rss']) / count / 1024:.1f} KiB |")
    write_report("catalog_scale-baseline" if args.checkout else "catalog_scale", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
