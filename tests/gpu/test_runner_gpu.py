"""On a real GPU (skipped without one): a model in a runner process (`isolation: process`) gives its GPU
memory back when it is unloaded, its CUDA context included, and a runner killed under it frees it too.

Run on a machine with a GPU:  .venv/bin/python -m pytest -m gpu tests/gpu -v
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from plugin_repos import runner_pids
from waiting import wait_until
from warm import Code, WarmdError

pytestmark = pytest.mark.gpu
GIB = 2**30
SLACK = 64 * 2**20       # NVML's own noise; the daemon itself never touches the GPU here


def _nvml_used(index: int = 0) -> int:
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used


def _has_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - no driver, no GPU
        return False


if not _has_gpu():
    pytest.skip("no NVIDIA GPU on this machine", allow_module_level=True)


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
    baseline = _nvml_used()
    x = np.ones((1, n), np.float32)
    with daemon.client() as c:
        assert np.array_equal(c.infer("big", {"x": x}).outputs["output"], x)
        loaded = _nvml_used()
        assert loaded - baseline >= 0.9 * GIB           # the weights and the runner's CUDA context
        assert not c.status().torch_imported            # all of it in the runner
        c.unload("big")
        wait_until(lambda: _nvml_used() <= baseline + SLACK, timeout=5)

        # a runner killed from outside (the OOM killer, a crash): the memory is back, the next call reloads
        c.infer("big", {"x": x})
        [pid] = runner_pids(daemon.proc.pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _nvml_used() <= baseline + SLACK, timeout=5)
        t0 = time.monotonic()
        while True:
            try:
                assert np.array_equal(c.infer("big", {"x": x}).outputs["output"], x)
                break
            except WarmdError as err:           # a request can meet the runner's death before the reaper does
                assert err.code == Code.PROVIDER_FAILED and "-9 (SIGKILL)" in err.message
                assert time.monotonic() - t0 < 30
        assert _nvml_used() - baseline >= 0.9 * GIB
