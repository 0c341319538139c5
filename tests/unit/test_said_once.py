"""Facts the daemon states in one place, and what is built on them: device names, spec and source defaults,
the model states, the source kinds and their handlers, the providers' shared module handling and tasks."""
from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path

import pytest

from warmd.devices import Device, gpu_index, is_gpu
from warmd.errors import Code, WarmdError
from warmd.providers import PROVIDERS
from warmd.providers.base import ModuleProvider
from warmd.providers.transformers import TASKS, TransformersProvider
from warmd.spec import ModelSpec, Source, parse_spec_file, source_kinds
from warmd.store.sources import KINDS, handler, parse_reference
from warmd.v1 import MODEL_STATES
from warmd.v1 import warmd_pb2 as pb


@pytest.mark.parametrize(("name", "index"), [("cuda:0", 0), ("cuda:3", 3), ("cuda", 0), ("cpu", None),
                                             ("cudax", None), ("cuda:", None), ("gpu:1", None)])
def test_device_names_are_parsed_in_one_place(name: str, index: int | None) -> None:
    assert gpu_index(name) == index
    assert is_gpu(name) is (index is not None)
    assert Device(name, 1, 1).is_gpu is (index is not None)


def test_a_spec_that_leaves_keys_out_gets_the_dataclass_defaults(tmp_path: Path) -> None:
    (tmp_path / "w").write_bytes(b"")
    path = tmp_path / "m.yaml"
    path.write_text("provider: onnx\nsource: {path: w}\n")
    spec = parse_spec_file(path, tmp_path, [tmp_path], PROVIDERS)
    for f in dataclasses.fields(ModelSpec):
        if f.name in ("name", "file", "source", "provider", "content"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(spec, f.name) == default, f.name
    hub = tmp_path / "h.yaml"
    hub.write_text("provider: sentence-transformers\nsource: {hf: org/name}\n")
    src = parse_spec_file(hub, tmp_path, [tmp_path], PROVIDERS).source
    assert src == Source("hf", "org/name")          # revision and patterns: Source's own defaults
    assert src.describe() == "hf:org/name@main"


def test_model_states_come_from_the_proto_enum() -> None:
    assert MODEL_STATES == {pb.ModelState.Name(v).lower(): v for v in pb.ModelState.values() if v}
    assert set(MODEL_STATES) == {"available", "loading", "ready", "unloading", "failed"}


def test_one_handler_per_source_kind_the_schema_names() -> None:
    assert set(KINDS) == set(source_kinds()) == {"hf", "url", "path", "package", "remote", "ollama"}
    assert {k for k, h in KINDS.items() if h.downloadable} == {"hf", "url"}
    assert handler(Source("package", "pkg", subdir="m")).describe(Source("package", "pkg", subdir="m")) == "package:pkg/m"
    assert Source("url", "https://x/y", sha256="0" * 64).describe() == "url:https://x/y"
    assert [(k.name, ref) for k, ref in map(parse_reference, ["hf://org/n", "hf:org/n", "ollama://m:1b"])] == \
        [("hf", "org/n"), ("hf", "org/n"), ("ollama", "m:1b")]
    for text in ("org/n", "https://huggingface.co/org/n"):
        with pytest.raises(WarmdError) as err:
            parse_reference(text)
        assert err.value.code is Code.INVALID_ARGUMENT and "hf://org/name" in err.value.message
    with pytest.raises(WarmdError) as err:
        KINDS["path"].default_name("/models/x")
    assert err.value.code is Code.INVALID_ARGUMENT and "write a path spec by hand" in err.value.message
    local = ModelSpec("m", Path("/s/m.yaml"), Source("path", "/m"), "onnx")
    with pytest.raises(WarmdError) as err:
        handler(local.source).check_removable(local, [])
    assert err.value.code is Code.INVALID_ARGUMENT and "does not delete it" in err.value.message


class _Module:
    """Stands in for a torch module: what ModuleProvider does with it needs no tensors on a CPU."""


class _Modular(ModuleProvider):
    name = "modular"

    def load(self) -> int:
        self.module = _Module()
        return 0

    def infer(self, request):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_module_providers_share_parking_and_unloading() -> None:
    assert {n for n, p in PROVIDERS.items() if issubclass(p, ModuleProvider)} == \
        {"torch", "sentence-transformers", "transformers"}
    assert all(p.parkable for p in PROVIDERS.values() if issubclass(p, ModuleProvider))
    provider = _Modular(ModelSpec("m", Path("/s/m.yaml"), Source("path", "/m"), "modular"), Path("/m"), "cpu")
    provider.load()
    module = provider.module
    provider.to_host()
    provider.to_device()
    assert provider.module is module            # on the CPU (or a simulated GPU) there is nothing to move
    ref = weakref.ref(module)
    del module
    provider.unload()
    assert provider.module is None and ref() is None
    provider.unload()                           # twice is harmless


def test_providers_refuse_tasks_they_do_not_run_with_one_message() -> None:
    spec = ModelSpec("m", Path("/s/m.yaml"), Source("path", "/m"), "transformers", task="custom")
    with pytest.raises(WarmdError) as err:
        TransformersProvider(spec, Path("/m"), "cpu").check_task()
    assert err.value.code is Code.SPEC_INVALID
    assert err.value.message == f"provider transformers runs tasks {', '.join(TASKS)}; the spec says 'custom'"
    assert TransformersProvider.tasks == TASKS and "chat" in TASKS and PROVIDERS["llama-cpp"].tasks
    TransformersProvider(dataclasses.replace(spec, task="chat"), Path("/m"), "cpu").check_task()
