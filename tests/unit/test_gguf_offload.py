"""Partial GPU offload of GGUF models, decided by the scheduler on simulated GPUs: the real llama-cpp
provider and a tiny GGUF file, the real Catalog and Scheduler, devices whose memory is only accounted.

A simulated GPU keeps the tensors in host memory (llama.cpp runs on the CPU), so what is checked is the
decision: how many layers go to the GPU, what counts against the GPU and against the CPU."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")

from gguf_models import TinyLlama, write_tiny_llama  # noqa: E402
from test_scheduler import Recording  # noqa: E402
from warmd.catalog import Catalog  # noqa: E402
from warmd.devices import Device  # noqa: E402
from warmd.errors import Code, WarmdError  # noqa: E402
from warmd.events import EventBus  # noqa: E402
from warmd.providers.llama_cpp import LlamaCppProvider  # noqa: E402
from warmd.scheduler import Scheduler  # noqa: E402
from warmd.store import Store  # noqa: E402

MB = 2**20
SHAPE = TinyLlama(layers=4, hidden=256, ff=512, seed=3)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("offload") / "m.gguf", SHAPE)


def _world(tmp_path: Path, gguf: Path, gpu_budget: int, specs: dict[str, str]):  # type: ignore[no-untyped-def]
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "w").write_bytes(b"")
    for name, text in specs.items():
        (folder / f"{name}.yaml").write_text(text)
    providers = {"llama-cpp": LlamaCppProvider, "recording": Recording}
    bus = EventBus()
    catalog = Catalog(folder, [folder, gguf.parent], providers, bus)
    catalog.rescan()
    inventory = {"cpu": Device("cpu", 1024 * MB, 512 * MB, torch_device="cpu"),
                 "cuda:0": Device("cuda:0", 1024 * MB, gpu_budget, torch_device="cpu", simulated=True)}
    scheduler = Scheduler(catalog, Store(tmp_path / "data", bus), providers, bus, 300.0, inventory)
    scheduler.start()
    return scheduler


def _spec(gguf: Path, layers: str = "auto") -> str:
    return (f"provider: llama-cpp\ntask: chat\ndevice: cuda:0\nsource: {{path: {gguf}}}\n"
            f"options: {{n_ctx: 512, n_gpu_layers: {layers}}}\n")


def _split(gguf: Path):  # type: ignore[no-untyped-def]
    from warmd.spec import ModelSpec, Source

    spec = ModelSpec(name="m", file=gguf, source=Source("path", str(gguf)), provider="llama-cpp", task="chat",
                     options={"n_ctx": 512})
    return LlamaCppProvider.estimate(spec, gguf), LlamaCppProvider.layers(spec, gguf)


def _used(scheduler: Scheduler) -> dict[str, int]:
    return {d.name: used for d, used, _ in scheduler.device_usage()}


def test_a_model_that_fits_goes_wholly_onto_the_gpu(tmp_path: Path, gguf: Path) -> None:
    total, split = _split(gguf)
    scheduler = _world(tmp_path, gguf, 512 * MB, {"m": _spec(gguf)})
    try:
        with scheduler.acquire("m") as r:
            assert r.device == "cuda:0" and r.offloaded == (SHAPE.layers + 1, SHAPE.layers + 1)
            assert r.host_bytes == split.host       # token embeddings and llama-cpp-python's arrays
        used = _used(scheduler)
        assert used["cuda:0"] == r.bytes and used["cpu"] == r.host_bytes
        assert abs(r.bytes + r.host_bytes - total) / total < 0.01
    finally:
        scheduler.shutdown(5)


def test_auto_offloads_the_layers_that_fit_after_evicting_idle_models(tmp_path: Path, gguf: Path) -> None:
    total, split = _split(gguf)
    full = total - split.host_bytes(len(split.sizes))
    # room for everything but the two lowest blocks, once the idle 4 MB model is gone
    budget = full - split.sizes[-1] - split.sizes[-2] + MB // 2
    filler = f"provider: recording\ndevice: cuda:0\nsource: {{path: w}}\nmemory: {4 * MB}\noptions: {{value: f}}\n"
    scheduler = _world(tmp_path, gguf, budget, {"m": _spec(gguf), "filler": filler})
    try:
        with scheduler.acquire("filler"):
            pass
        with scheduler.acquire("m") as r:
            assert r.offloaded == (len(split.sizes) - 2, len(split.sizes))
            assert r.host_bytes == split.host_bytes(len(split.sizes) - 2)
        assert ("unload", "filler", "f") in Recording.log          # the idle model made room
        used = _used(scheduler)
        assert used["cuda:0"] == r.bytes <= budget and used["cpu"] == r.host_bytes
    finally:
        scheduler.shutdown(5)


def test_not_one_layer_fitting_runs_it_on_the_cpu_and_a_fixed_count_must_fit(tmp_path: Path, gguf: Path) -> None:
    total, split = _split(gguf)
    tiny = total - split.host_bytes(0) + split.sizes[0] // 2     # less than the first offloaded layer needs
    scheduler = _world(tmp_path, gguf, tiny, {"m": _spec(gguf), "fixed": _spec(gguf, "3")})
    try:
        with scheduler.acquire("m") as r:
            assert r.device == "cpu" and r.offloaded == (0, len(split.sizes)) and r.host_bytes == 0
        with pytest.raises(WarmdError) as info:
            with scheduler.acquire("fixed"):
                pass
        assert info.value.code is Code.INSUFFICIENT_MEMORY
        assert _used(scheduler)["cuda:0"] == 0                    # a refused load reserves nothing
    finally:
        scheduler.shutdown(5)


def test_the_dry_run_shows_the_split_and_the_evictions_that_the_load_then_makes(tmp_path: Path, gguf: Path) -> None:
    total, split = _split(gguf)
    layers = len(split.sizes)
    budget = total - split.host_bytes(layers - 1) + MB // 2          # all but the lowest block, once filler goes
    filler = f"provider: recording\ndevice: cuda:0\nsource: {{path: w}}\nmemory: {4 * MB}\noptions: {{value: f}}\n"
    scheduler = _world(tmp_path, gguf, budget, {"m": _spec(gguf), "filler": filler})
    try:
        with scheduler.acquire("filler"):
            pass
        run = scheduler.plan_load("m")
        assert (run.action, run.device, run.gpu_layers, run.total_layers) == ("load", "cuda:0", layers - 1, layers)
        assert run.host_bytes == split.host_bytes(layers - 1) and run.need == total - run.host_bytes
        assert [(m.action, m.name) for m in run.moves] == [("unload", "filler")]
        assert f"{layers - 1} of {layers} layers on a GPU" in run.message
        assert scheduler.view("filler").state == "ready"                    # the dry run did nothing
        with scheduler.acquire("m") as r:
            assert r.offloaded == (run.gpu_layers, run.total_layers) and r.host_bytes == run.host_bytes
    finally:
        scheduler.shutdown(5)
