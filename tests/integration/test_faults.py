"""Faults and load through the real daemon: 32 threads churning loads, unloads and inference under a tight
budget; a 500-cycle soak; SIGKILL during loads and inference; SIGTERM with a load, a download and live
streams under way; the specs folder made unreadable, deleted and recreated."""
from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from models import affine_spec, affine_specs, write_affine_weights
from waiting import rss_bytes, succeeds, wait_until
from warm import Client, Code, WarmdError

KIB = 1024
X = np.ones((1, 4), np.float32)


def test_32_threads_churn_under_a_tight_budget(start_daemon, short_tmp: Path, figures) -> None:
    specs = affine_specs(short_tmp, 1.0)
    for i in range(4):      # 150 KiB each against 400 KiB: at most two resident at a time
        (specs / f"m{i}.yaml").write_text(affine_spec("w.safetensors", extra=f"memory: {150 * KIB}\n"))
    daemon = start_daemon(specs, config={"cpu_budget": f"{400 * KIB}", "rpc_threads": 64})
    outcomes: collections.Counter[str] = collections.Counter()
    over_budget: list[tuple[int, int]] = []
    lock, stop = threading.Lock(), threading.Event()

    def sample() -> None:
        with daemon.client() as c:
            while not stop.is_set():
                [cpu] = [d for d in c.status().devices if d.name == "cpu"]
                if cpu.used > cpu.budget:
                    over_budget.append((cpu.used, cpu.budget))
                time.sleep(0.01)

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        with daemon.client() as c:
            for _ in range(25):
                name = f"m{rng.randrange(4)}" if seed % 2 else "m0"      # half on one model, half spread
                op = rng.choices(["infer", "load", "unload"], weights=[6, 2, 2])[0]
                try:
                    if op == "infer":
                        assert np.array_equal(c.infer(name, {"x": X}).outputs["y"], X)
                    elif op == "load":
                        c.load(name)
                    else:
                        c.unload(name)
                    result = "ok"
                except WarmdError as err:
                    result = err.code.value
                with lock:
                    outcomes[result] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=churn, args=(i,)) for i in range(32)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
    stop.set()
    sampler.join()
    assert not any(w.is_alive() for w in workers), "a worker is stuck: deadlock"
    assert sum(outcomes.values()) == 32 * 25
    assert set(outcomes) <= {"ok", Code.INSUFFICIENT_MEMORY.value, Code.BUSY.value}, outcomes
    assert outcomes["ok"] >= 0.9 * 32 * 25, outcomes
    assert not over_budget, over_budget[:3]
    assert daemon.proc.poll() is None
    figures(requests=32 * 25, seconds=round(time.monotonic() - t0, 1), outcomes=dict(outcomes),
            budget_exceeded=len(over_budget))


def test_soak_500_load_unload_cycles_rss_returns_to_baseline(start_daemon, short_tmp: Path, figures) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    from models import write_factory

    write_factory(specs)
    write_affine_weights(specs / "w.safetensors", 1.0, width=256)       # 257 KiB of weights per load
    (specs / "m.yaml").write_text(affine_spec("w.safetensors").replace("args: {", "args: {width: 256, ")
                                  .replace("[-1, 4]", "[-1, 256]"))
    daemon = start_daemon(specs)
    x = np.ones((1, 256), np.float32)
    with daemon.client() as c:
        def cycle() -> None:
            c.load("m")
            c.infer("m", {"x": x})
            c.unload("m")

        for _ in range(50):            # warm-up: allocator pools, imports, caches reach their size
            cycle()
        baseline = rss_bytes(daemon.proc.pid)
        for _ in range(500):
            cycle()
        final = rss_bytes(daemon.proc.pid)
    drift = (final - baseline) / baseline
    assert drift < 0.05, (baseline, final)
    figures(cycles=500, baseline_mib=round(baseline / 2**20, 1), final_mib=round(final / 2**20, 1),
            drift_pct=round(100 * drift, 2))


def test_sigkill_during_load_and_during_inference_then_restart(start_daemon, short_tmp: Path, figures) -> None:
    specs = affine_specs(short_tmp, 2.0)
    (specs / "slowload.yaml").write_text(affine_spec("w.safetensors", load_delay=5.0))
    (specs / "slowinfer.yaml").write_text(affine_spec("w.safetensors", delay=5.0))
    daemon = start_daemon(specs)
    errors: list[Code] = []

    def call(fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
        except WarmdError as err:
            errors.append(err.code)

    with daemon.client() as c:
        c.load("slowinfer")
        threads = [threading.Thread(target=call, args=(lambda: c.load("slowload"),)),
                   threading.Thread(target=call, args=(lambda: c.infer("slowinfer", {"x": X}),))]
        for t in threads:
            t.start()
        wait_until(lambda: {m.name: m.state for m in c.list().models}.get("slowload") == 2)   # LOADING
        daemon.kill()
        for t in threads:
            t.join(timeout=30)
    assert errors == [Code.UNAVAILABLE, Code.UNAVAILABLE]      # clients hear it, nothing hangs
    restarted = start_daemon(specs, root=short_tmp)
    with restarted.client() as c:
        assert not c.status().resident                          # nothing half-loaded survives
        assert np.array_equal(c.infer("slowinfer", {"x": X}, ).outputs["y"], 2 * X)
    leftovers = [p for p in short_tmp.rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert not leftovers, leftovers
    figures(kills=2, client_errors=[e.value for e in errors], recovered=True)


def test_sigterm_with_a_load_a_download_and_streams_under_way(start_daemon, short_tmp: Path, hub,
                                                             figures) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "slowload.yaml").write_text(affine_spec("w.safetensors", load_delay=2.0))
    hub.add_repo("org/big", {"model.safetensors": os.urandom(8 * 2**20), "config.json": b"{}"})
    hub.rate["model.safetensors"] = 2 * 2**20                   # 4 s: still running at SIGTERM
    (specs / "big.yaml").write_text("provider: torch\nsource: {hf: org/big}\noptions: {factory: 'x.py:f'}\n")
    daemon = start_daemon(specs, config={"drain_timeout": "5s"},
                          env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None})
    results: dict[str, object] = {}

    def run(key: str, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            results[key] = fn()
        except WarmdError as err:
            results[key] = err.code

    client = daemon.client()
    watch = client.watch()
    threads = [threading.Thread(target=run, args=("load", lambda: client.load("slowload"))),
               threading.Thread(target=run, args=("pull", lambda: client.pull("big"))),
               threading.Thread(target=run, args=("watch", lambda: sum(1 for _ in watch)))]
    for t in threads:
        t.start()
    wait_until(lambda: hub.served_bytes("model.safetensors") > 0)
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    stop_s = time.monotonic() - t0
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), results
    assert isinstance(results["watch"], int)                    # the stream ended cleanly
    assert results["pull"] in (Code.UNAVAILABLE, Code.CANCELLED), results
    assert not daemon.socket.exists()
    assert not [p for p in short_tmp.rglob("*") if p.name.endswith(".tmp")]
    assert not _children(daemon.proc.pid)
    figures(stop_seconds=round(stop_s, 2), exit_code=0,
            **{k: v.value if isinstance(v, Code) else "finished" for k, v in results.items() if k != "watch"})


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@contextlib.contextmanager
def _unreadable(folder: Path) -> Iterator[None]:
    """Make `folder` unreadable to the daemon: chmod 0 for a normal user. Root reads any folder, so there
    the folder is swapped for a file of the same name: listing it fails with an OSError just the same."""
    if os.geteuid() != 0:
        os.chmod(folder, 0)
        try:
            yield
        finally:
            os.chmod(folder, 0o700)
        return
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("not a folder")
    try:
        yield
    finally:
        folder.unlink()
        aside.rename(folder)


def test_unreadable_specs_folder_is_reported_and_recovers(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    with daemon.client() as c:
        with _unreadable(specs):
            wait_until(lambda: c.list().rejected, timeout=15)
            assert c.status().pid == daemon.proc.pid
        wait_until(lambda: not c.list().rejected, timeout=15)


def test_specs_folder_deleted_and_recreated(start_daemon, short_tmp: Path, figures) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    with daemon.client() as c:
        c.infer("a", {"x": X})
        files = {p.name: p.read_bytes() for p in specs.iterdir()}
        for p in specs.iterdir():
            p.unlink()
        specs.rmdir()
        wait_until(lambda: not c.list().models, timeout=15)
        assert c.list().rejected[0].file == str(specs)         # the folder itself is the problem
        specs.mkdir()
        for name, data in files.items():
            (specs / name).write_bytes(data)
        wait_until(lambda: [m.name for m in c.list().models] == ["a"], timeout=15)
        assert np.array_equal(c.infer("a", {"x": X}).outputs["y"], X)
    figures(recovered=True)


def test_client_reconnects_after_a_restart(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    client = Client(daemon.socket, timeout=30)
    assert client.infer("a", {"x": X}).outputs["y"].shape == (1, 4)
    daemon.kill()
    with pytest.raises(WarmdError) as info:
        client.status()
    assert info.value.code is Code.UNAVAILABLE
    start_daemon(specs, root=short_tmp)
    wait_until(lambda: succeeds(client.status), timeout=20)          # the same client object, no new one
    assert client.infer("a", {"x": X}).outputs["y"].shape == (1, 4)
    client.close()

