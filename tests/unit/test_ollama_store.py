"""Ollama's store read in place: names, manifests, digests that cannot climb out of the store, the
defaults its layers give, discovery, and a store warmd refuses to delete from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gguf_models import write_ollama_store
from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.spec import ModelSpec, Source
from warmd.store import Store, ollama


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    write_ollama_store(root, fake, name="tiny", tag="1b", template="{{ .Prompt }}", params={
        "temperature": 0.2, "stop": ["<|end|>"], "num_ctx": 1024, "num_predict": 9, "mirostat": 1})
    return root


def test_names_parse_to_manifest_paths_and_back() -> None:
    for text, parts, short in (("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b"), "llama3.2:1b"),
                               ("qwen", ("registry.ollama.ai", "library", "qwen", "latest"), "qwen:latest"),
                               ("me/mine:q4", ("registry.ollama.ai", "me", "mine", "q4"), "me/mine:q4"),
                               ("hf.co/org/m:Q8_0", ("hf.co", "org", "m", "Q8_0"), "hf.co/org/m:Q8_0")):
        name = ollama.Name.parse(text)
        assert (name.registry, name.namespace, name.model, name.tag) == parts and str(name) == short
    for bad in ("../x", "a/b/c/d", "x:../y", ""):
        with pytest.raises(WarmdError) as info:
            ollama.Name.parse(bad)
        assert info.value.code is Code.INVALID_ARGUMENT


def test_the_model_layer_and_the_defaults_of_the_others(store: Path) -> None:
    found = ollama.model(Source("ollama", "tiny:1b"))
    assert found.blob.parent == store / "blobs" and found.blob.name == f"sha256-{found.sha256}"
    defaults = ollama.defaults(Source("ollama", "tiny:1b"))
    assert defaults.parameters == {"temperature": 0.2, "stop": ["<|end|>"], "max_tokens": 9}
    assert defaults.n_ctx == 1024 and "Prompt" in defaults.template and "{%" in defaults.template
    with pytest.raises(WarmdError) as info:
        ollama.model(Source("ollama", "tiny:2b"))
    assert info.value.code is Code.WEIGHTS_MISSING and "ollama pull tiny:2b" in info.value.message


def test_digests_never_name_a_path_outside_the_store(store: Path) -> None:
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1b"
    body = json.loads(manifest.read_text())
    body["layers"][0]["digest"] = "sha256:../../../etc/passwd"
    manifest.write_text(json.dumps(body))
    with pytest.raises(WarmdError) as info:
        ollama.model(Source("ollama", "tiny:1b"))
    assert info.value.code is Code.SPEC_INVALID


def test_discovery_lists_models_no_spec_names_and_skips_broken_manifests(store: Path) -> None:
    broken = store / "manifests" / "registry.ollama.ai" / "library" / "half" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    found = ollama.discover(set())
    assert [d["repo_id"] for d in found] == ["tiny:1b"] and found[0]["source"] == "ollama"
    assert found[0]["size_on_disk"] == 64
    assert ollama.discover({"tiny:1b"}) == []


def test_the_store_verifies_in_place_and_never_deletes(store: Path, tmp_path: Path) -> None:
    files = Store(tmp_path / "data", EventBus())
    spec = ModelSpec(name="tiny", file=tmp_path / "tiny.yaml", source=Source("ollama", "tiny:1b"), provider="llama-cpp")
    assert files.state(spec).state == "complete"
    path = files.local(spec)
    assert path.parent == store / "blobs" and files.state(spec).state == "verified"
    with pytest.raises(WarmdError) as info:
        files.remove(spec, [])
    assert info.value.code is Code.INVALID_ARGUMENT and "ollama rm" in info.value.message
    assert path.exists()
    path.write_bytes(b"GGUF" + bytes(59) + b"x")                 # same size, other bytes
    with pytest.raises(WarmdError) as info:
        files.local(spec)
    assert info.value.code is Code.WEIGHTS_DIGEST_MISMATCH


def test_the_manifest_is_the_local_input_so_a_re_pull_changes_the_fingerprint(store: Path, tmp_path: Path) -> None:
    from warmd.providers import PROVIDERS
    from warmd.store import local

    spec = ModelSpec(name="tiny", file=tmp_path / "tiny.yaml", source=Source("ollama", "tiny:1b"), provider="llama-cpp")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1b"
    scan = local.Scan(PROVIDERS)
    assert scan.inputs(spec) == (manifest,)
    before = local.fingerprint([manifest])
    newer = tmp_path / "newer.gguf"
    newer.write_bytes(b"GGUF" + bytes(61))
    write_ollama_store(store, newer, name="tiny", tag="1b")          # `ollama pull` of a newer version
    assert local.fingerprint([manifest]) != before
