"""On a real GPU (skipped without one): memory comes back after unloads (also of a model in a runner process,
its CUDA context included), and the budget holds under churn.

Run on a machine with a GPU:  .venv/bin/python -m pytest -m gpu tests/gpu -v
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nvml import has_gpu, nvml_used
from plugin_repos import runner_pids
from waiting import wait_until
from warm import Code, WarmdError

pytestmark = pytest.mark.gpu
GIB = 2**30
SLACK = 64 * 2**20       # NVML's own noise, for a runner's memory (the daemon itself holds no CUDA context then)


if not has_gpu():
    pytest.skip("no NVIDIA GPU on this machine", allow_module_level=True)


def _square_model(specs: Path, name: str, mib: int, extra: str = "") -> None:
    """A Linear(n, n) fp32 model of about `mib` MiB on cuda:0, from a zero-filled safetensors file."""
    import torch
    from safetensors.torch import save_file

    n = int((mib * 2**20 / 4) ** 0.5)
    (specs / "square.py").write_text("import torch\n\ndef square(n):\n    return torch.nn.Linear(n, n, bias=False)\n")
    save_file({"weight": torch.zeros(n, n)}, str(specs / f"{name}.safetensors"))
    (specs / f"{name}.yaml").write_text(
        f"provider: torch\ndevice: cuda:0\nkeep_alive: -1\nsource: {{path: {name}.safetensors}}\n"
        f"options: {{factory: 'square.py:square', args: {{n: {n}}}}}\n"
        f"inputs: [{{name: x, dtype: FP32, shape: [-1, {n}]}}]\n" + extra)


def test_unload_returns_gpu_memory_within_a_second(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    _square_model(specs, "tiny", 1)
    _square_model(specs, "big", 1024)
    daemon = start_daemon(specs)
    with daemon.client() as c:
        c.load("tiny")                     # the CUDA context exists from here on
        c.unload("tiny")
        baseline = nvml_used()
        c.load("big")
        loaded = nvml_used()
        assert loaded - baseline >= 0.9 * GIB
        assert abs(int(c.get("big").residency.measured_bytes) - GIB) < 0.05 * GIB
        c.unload("big")
        deadline = time.monotonic() + 1.0
        while nvml_used() > baseline + 150 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert nvml_used() <= baseline + 150 * 2**20, (baseline, nvml_used())


def test_budget_holds_under_churn(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    for i in range(4):
        _square_model(specs, f"m{i}", 512)
    daemon = start_daemon(specs, config={"gpu_budget": "1.5GiB", "keep_alive": -1})
    errors: list[str] = []
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        with daemon.client() as c:
            while not stop.is_set():
                [gpu] = [d for d in c.status().devices if d.name == "cuda:0"]
                samples.append((int(gpu.used), int(gpu.budget)))
                time.sleep(0.05)

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        with daemon.client() as c:
            for _ in range(25):
                name = f"m{rng.randrange(4)}"
                try:
                    n = int(c.get(name).inputs[0].shape[1])
                    c.infer(name, {"x": np.ones((1, n), np.float32)})
                except WarmdError as err:
                    if err.code not in (Code.INSUFFICIENT_MEMORY, Code.BUSY):
                        errors.append(f"{err.code.value}: {err.message}")

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    stop.set()
    sampler.join()
    assert not errors, errors[:5]
    assert samples and all(used <= budget for used, budget in samples), max(samples)


def test_host_tier_round_trip(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    for name in ("a", "b"):
        _square_model(specs, name, 1024)
    daemon = start_daemon(specs, config={"gpu_budget": "1.5GiB", "host_tier_budget": "4GiB"})
    with daemon.client() as c:
        n = int(c.get("a").inputs[0].shape[1])
        x = np.ones((1, n), np.float32)
        c.infer("a", {"x": x})
        c.infer("b", {"x": x})                 # a does not fit beside b: parked in host memory
        tiers = {m.name: m.residency.tier for m in c.status().resident}
        assert tiers == {"a": "host", "b": "gpu"}
        t0 = time.monotonic()
        out = c.infer("a", {"x": x}).outputs["output"]
        back_s = time.monotonic() - t0
        assert np.array_equal(out, np.zeros_like(out))
        tiers = {m.name: m.residency.tier for m in c.status().resident}
        assert tiers == {"a": "gpu", "b": "host"}
        assert back_s < 1.0, back_s            # 1 GiB over PCIe from pinned memory, not a disk read


def test_soak_gpu_memory_returns_to_baseline(start_daemon, short_tmp: Path) -> None:
    """200 load/infer/unload cycles of a 256 MiB model: NVML's used memory ends within 5% of its baseline."""
    specs = short_tmp / "specs"
    specs.mkdir()
    _square_model(specs, "m", 256)
    daemon = start_daemon(specs)
    with daemon.client() as c:
        n = int(c.get("m").inputs[0].shape[1])
        x = np.ones((1, n), np.float32)

        def cycle() -> None:
            c.infer("m", {"x": x})
            c.unload("m")

        for _ in range(10):
            cycle()
        time.sleep(0.5)
        baseline = nvml_used()
        for _ in range(200):
            cycle()
        time.sleep(0.5)
        final = nvml_used()
    assert abs(final - baseline) <= 0.05 * baseline, (baseline, final)


def test_transformers_generation_streams_on_the_gpu_and_gives_memory_back(start_daemon, short_tmp: Path) -> None:
    from models import write_tiny_transformer

    write_tiny_transformer(short_tmp / "gpt2", "gpt2")
    specs = short_tmp / "specs"
    specs.mkdir()
    (specs / "gpt.yaml").write_text(f"provider: transformers\ntask: text-generation\ndevice: cuda:0\n"
                                    f"source: {{path: {short_tmp / 'gpt2'}}}\n")
    daemon = start_daemon(specs, config={"path_roots": [str(short_tmp)]})
    with daemon.client() as c:
        def generate() -> list:
            chunks = list(c.infer_stream("gpt", text=["hello there"], parameters={"max_new_tokens": 16}))
            assert c.get("gpt").residency.device == "cuda:0"
            c.unload("gpt")
            return chunks

        generate()        # once first: CUDA libraries and kernels the context keeps (cuBLAS workspaces...)
        time.sleep(0.5)
        baseline = nvml_used()
        chunks = generate()
        texts = [ch.text for ch in chunks if ch.text]
        assert len(texts) >= 8 and chunks[-1].result.json["text"] == "".join(texts)
        deadline = time.monotonic() + 1.0
        while nvml_used() > baseline + 150 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert nvml_used() <= baseline + 150 * 2**20, (baseline, nvml_used())


def _isolated_square(specs: Path, mib: int) -> int:
    """A Linear(n, n) fp32 model of about `mib` MiB on cuda:0 in a runner process; returns n."""
    import torch
    from safetensors.torch import save_file

    n = int((mib * 2**20 / 4) ** 0.5)
    (specs / "square.py").write_text("import torch\n\ndef square(n):\n    return torch.nn.Linear(n, n, bias=False)\n")
    save_file({"weight": torch.eye(n)}, str(specs / "big.safetensors"))
    (specs / "big.yaml").write_text(
        f"provider: torch\ndevice: cuda:0\nkeep_alive: -1\nisolation: process\nsource: {{path: big.safetensors}}\n"
        f"options: {{factory: 'square.py:square', args: {{n: {n}}}}}\n"
        f"inputs: [{{name: x, dtype: FP32, shape: [-1, {n}]}}]\n")
    return n


def test_unload_kills_the_runner_and_its_gpu_memory_comes_back(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    n = _isolated_square(specs, 1024)
    daemon = start_daemon(specs)
    baseline = nvml_used()
    x = np.ones((1, n), np.float32)
    with daemon.client() as c:
        assert np.array_equal(c.infer("big", {"x": x}).outputs["output"], x)
        loaded = nvml_used()
        assert loaded - baseline >= 0.9 * GIB           # the weights and the runner's CUDA context
        assert not c.status().torch_imported            # all of it in the runner
        c.unload("big")
        wait_until(lambda: nvml_used() <= baseline + SLACK, timeout=5)

        # a runner killed from outside (the OOM killer, a crash): the memory is back, the next call reloads
        c.infer("big", {"x": x})
        [pid] = runner_pids(daemon.proc.pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: nvml_used() <= baseline + SLACK, timeout=5)
        t0 = time.monotonic()
        while True:
            try:
                assert np.array_equal(c.infer("big", {"x": x}).outputs["output"], x)
                break
            except WarmdError as err:           # a request can meet the runner's death before the reaper does
                assert err.code == Code.PROVIDER_FAILED and "-9 (SIGKILL)" in err.message
                assert time.monotonic() - t0 < 30
        assert nvml_used() - baseline >= 0.9 * GIB
