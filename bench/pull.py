"""Pull throughput and resume, against a hub-compatible server on 127.0.0.1 (tests/hubserver.py).

    .venv/bin/python bench/pull.py [--mib 512] [--runs 3]

1. Throughput: `warm pull` of a repo (one LFS file of --mib MiB plus small files) through the daemon,
   against huggingface_hub's own `snapshot_download` of the same repo into a fresh cache, alternating.
   Ratio = warmd throughput / snapshot_download throughput (goal >= 0.95).
2. Resume: the daemon is SIGKILLed at 80% of the file, restarted, and pulls again; the bytes the hub
   served after the restart, as a share of the file (goal <= 10%; the floor is the missing 20%).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, process, wait_for, workdir, write_report
from hubserver import Hub

FILE = "model.safetensors"


def hub_env(hub: Hub, cache: Path) -> dict[str, str | None]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": None}


def daemon_pull(root: Path, hub: Hub) -> float:
    specs = root / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "big.yaml").write_text("provider: torch\nsource: {hf: bench/big}\noptions: {factory: 'x:y'}\n")
    (specs / "small.yaml").write_text("provider: torch\nsource: {hf: bench/small}\noptions: {factory: 'x:y'}\n")
    sock = root / "w.sock"
    with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)],
                 root, "warmd.log", hub_env(hub, root / "hf")):
        from warm import Client

        with Client(sock) as client:
            wait_for(lambda: client.status())
            client.pull("small")    # warm-up: the daemon imports huggingface_hub on its first download
        # The caller runs in its own process, as snapshot_download does: this process serves the hub.
        code = ("import sys, time; from warm import Client; c = Client(sys.argv[1]); t = time.monotonic(); "
                "c.pull('big'); print(time.monotonic() - t)")
        out = subprocess.run([sys.executable, "-c", code, str(sock)], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])


def hf_pull(cache: Path, endpoint: str) -> float:
    code = ("import time, sys; from huggingface_hub import snapshot_download; t=time.monotonic(); "
            "snapshot_download('bench/big'); print(time.monotonic()-t)")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def resume_after_kill(hub: Hub, size: int) -> tuple[float, int, int]:
    """SIGKILL the daemon at 80% of the file, restart, pull again.

    Returns:
        (share of the file on disk at the kill, bytes served after the restart, bytes served twice).
    """
    with workdir() as root:
        specs = root / "specs"
        specs.mkdir()
        (specs / "big.yaml").write_text("provider: torch\nsource: {hf: bench/big}\noptions: {factory: 'x:y'}\n")
        cache = root / "hf"
        blobs = cache / "models--bench--big" / "blobs"
        sock = root / "w.sock"
        hub.rate[FILE] = 200 * 2**20
        start = hub.served_bytes(FILE)
        args = [sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock)]
        from warm import Client, WarmdError

        with process(args, root, "first.log", hub_env(hub, cache)) as first:
            with Client(sock) as client:
                wait_for(lambda: client.status())
                threading.Thread(target=lambda: _quiet(client.pull, "big", WarmdError), daemon=True).start()
                wait_for(lambda: any(p.stat().st_size >= 0.8 * size for p in blobs.glob("*.part")),
                         timeout=120, interval=0.001)
                first.kill()
                first.wait()
        kept = max(p.stat().st_size for p in blobs.glob("*.part"))
        hub.rate.pop(FILE)
        before = hub.served_bytes(FILE)
        with process(args, root, "second.log", hub_env(hub, cache)):
            with Client(sock) as client:
                wait_for(lambda: client.status())
                client.pull("big")
        after_restart = hub.served_bytes(FILE) - before
        twice = hub.served_bytes(FILE) - start - size
        return kept / size, after_restart, twice


def _quiet(fn, arg, exc_type) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(arg)
    except exc_type:
        pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * 2**20
    payload = os.urandom(size)
    warmd_s, hf_s = [], []
    with Hub() as hub:
        hub.add_repo("bench/big", {FILE: payload, "config.json": b'{"model_type": "bench"}', "README.md": b"bench"})
        hub.add_repo("bench/small", {"config.json": b"{}"})
        for _ in range(args.runs):
            with workdir() as root:
                warmd_s.append(daemon_pull(root, hub))
            with tempfile.TemporaryDirectory() as cache:
                hf_s.append(hf_pull(Path(cache), hub.endpoint))
        kept_share, after_restart, twice = resume_after_kill(hub, size)
    w, h = statistics.median(warmd_s), statistics.median(hf_s)
    mb = size / 1e6
    lines = [f"# Pull throughput and resume, {args.mib} MiB LFS file from a local hub",
             "",
             f"`.venv/bin/python bench/pull.py --mib {args.mib} --runs {args.runs}` on {platform.machine()}, "
             f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
             "",
             "| client | median s | MB/s | ratio to snapshot_download |",
             "|---|---|---|---|",
             f"| warm pull (daemon) | {w:.2f} | {mb / w:.0f} | {h / w:.2f}x |",
             f"| huggingface_hub snapshot_download | {h:.2f} | {mb / h:.0f} | 1.00x |",
             "",
             f"Resume: the daemon was SIGKILLed with {kept_share:.1%} of the file on disk; after the restart the "
             f"hub served {after_restart / size:.1%} of the file (the missing part), so {twice / size:.2%} of the "
             f"file was fetched twice (goal <= 10%; huggingface_hub would fetch the whole file again)."]
    write_report('pull', lines)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    sys.exit(main())
