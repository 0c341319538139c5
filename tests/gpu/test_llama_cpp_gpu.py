"""GGUF models on a real GPU (skipped without one, and without a CUDA build of llama-cpp-python:
`WARMD_LLAMA_CUDA=1 bash .ci/setup`): full offload, `n_gpu_layers: auto` offloading what the budget allows,
`warm ps` showing layers on the GPU, the measured device bytes against NVML.

    .venv/bin/python -m pytest -m gpu tests/gpu/test_llama_cpp_gpu.py -v
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
llama_cpp = pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")

from gguf_models import TinyLlama, write_tiny_llama  # noqa: E402
from nvml import has_gpu, nvml_used  # noqa: E402


if not has_gpu():
    pytest.skip("no NVIDIA GPU on this machine", allow_module_level=True)
if not llama_cpp.llama_supports_gpu_offload():
    pytest.skip("llama-cpp-python is a CPU build: WARMD_LLAMA_CUDA=1 bash .ci/setup", allow_module_level=True)

MIB = 2**20
SHAPE = TinyLlama(layers=8, hidden=1024, ff=4096, heads=8, kv_heads=8, seed=7)   # ~400 MiB of F32


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gpu-gguf") / "m.gguf", SHAPE)


def _spec(specs: Path, gguf: Path, name: str, layers: str = "auto") -> None:
    (specs / f"{name}.yaml").write_text(
        f"provider: llama-cpp\ntask: chat\ndevice: cuda:0\nkeep_alive: -1\nsource: {{path: {gguf}}}\n"
        f"options: {{n_ctx: 2048, n_gpu_layers: {layers}}}\n")


def _ps(daemon) -> dict:  # type: ignore[no-untyped-def]
    return {m["name"]: m["residency"] for m in json.loads(daemon.warm("ps", "--json").stdout)}


def test_full_offload_puts_every_layer_on_the_gpu(start_daemon, short_tmp: Path, gguf: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, gguf, "m")
    daemon = start_daemon(specs, config={"path_roots": [str(gguf.parent)]})
    with daemon.client() as c:
        before = nvml_used()
        out = c.infer("m", text=["hello there"], parameters={"max_tokens": 16, "seed": 1}).json
        grew = nvml_used() - before
    assert out["usage"]["completion_tokens"] == 16
    r = _ps(daemon)["m"]
    assert r["device"] == "cuda:0" and r["gpu_layers"] == r["total_layers"] == SHAPE.layers + 1
    measured = int(r["measured_bytes"])
    assert 0.9 * measured <= grew, (measured, grew)      # NVML saw at least what llama.cpp reports (+ context)
    assert abs(int(r["estimated_bytes"]) - measured) / measured < 0.05
    assert f"{SHAPE.layers + 1}/{SHAPE.layers + 1} on GPU" in daemon.warm("ps").stdout


def test_auto_offloads_what_the_budget_allows(start_daemon, short_tmp: Path, gguf: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, gguf, "m")
    total = SHAPE.layers * (2 * SHAPE.hidden ** 2 + 2 * SHAPE.hidden ** 2 + 3 * SHAPE.ff * SHAPE.hidden) * 4
    daemon = start_daemon(specs, config={"path_roots": [str(gguf.parent)], "gpu_budget": f"{total // 2}"})
    with daemon.client() as c:
        c.infer("m", text=["hello"], parameters={"max_tokens": 4})
        [gpu] = [d for d in c.status().devices if d.name == "cuda:0"]
    r = _ps(daemon)["m"]
    assert 0 < r["gpu_layers"] < r["total_layers"], r
    assert int(gpu.used) <= int(gpu.budget)
