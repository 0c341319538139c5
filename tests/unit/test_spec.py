"""Spec validation: every bad file in tests/data/bad_specs is rejected with the file, field and line
its `# expect:` header names; good specs parse into the values they say."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from warmd.errors import Code
from warmd.providers import PROVIDERS
from warmd.spec import MAX_SPEC_BYTES, SpecFileError, parse_spec_file

CORPUS = Path(__file__).resolve().parent.parent / "data" / "bad_specs"
BAD = sorted(CORPUS.glob("*.yaml"))


def _expectation(path: Path) -> dict[str, str]:
    header = path.read_text().splitlines()[0]
    assert header.startswith("# expect:"), f"{path.name} lacks an '# expect:' header"
    fields = dict(re.findall(r"(\w+)=(\S*)", header.split("message~=")[0]))
    fields["message"] = header.split("message~=")[1].strip()
    return fields


def _parse(path: Path, root: Path | None = None):  # type: ignore[no-untyped-def]
    return parse_spec_file(path, root or path.parent, [path.parent], PROVIDERS)


def test_corpus_is_not_empty() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_is_rejected_with_field_and_line(path: Path, tmp_path: Path) -> None:
    expect = _expectation(path)
    specs = tmp_path / "a" / "b" / "specs"
    specs.mkdir(parents=True)
    copy = specs / path.name
    shutil.copy(path, copy)
    with pytest.raises(SpecFileError) as info:
        _parse(copy)
    err = info.value
    assert err.file == copy
    assert err.field == expect["field"], str(err)
    assert err.line == int(expect["line"]), str(err)
    assert err.code == Code(expect.get("code", "spec_invalid")), str(err)
    assert expect["message"] in err.message, str(err)
    assert str(copy) in str(err)


def test_non_utf8_and_huge_files_are_rejected(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"provider: torch\ndescription: caf\xe9\n")
    with pytest.raises(SpecFileError, match="not UTF-8"):
        _parse(latin)
    huge = tmp_path / "huge.yaml"
    huge.write_text("description: " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecFileError, match="at most"):
        _parse(huge)


def test_deep_nesting_is_rejected_not_a_crash(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("provider: torch\noptions: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecFileError):
        _parse(deep)


def test_file_stem_is_the_default_name_and_must_be_valid(tmp_path: Path) -> None:
    good = tmp_path / "my-model.v2.yaml"
    good.write_text("provider: sentence-transformers\nsource: {package: pkg}\n")
    assert _parse(good).name == "my-model.v2"
    bad = tmp_path / "My Model.yaml"
    bad.write_text("provider: sentence-transformers\nsource: {package: pkg}\n")
    with pytest.raises(SpecFileError, match="not a valid model name") as info:
        _parse(bad)
    assert info.value.field == "name"


def test_full_spec_parses_every_field(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    path = tmp_path / "full.yaml"
    path.write_text("""\
name: full
version: 3
description: every field
tags: [embedding, test]
task: feature-extraction
source:
  path: w.safetensors
  sha256: "%s"
provider: torch
options: {factory: "mod:build", args: {n: 2}, strict: false}
device: cuda:1
precision: bf16
memory: 512MiB
pin: true
keep_alive: 5m
preload: true
inputs: [{name: x, dtype: FP32, shape: [-1, 4]}]
outputs: [{name: y, dtype: FP16, shape: [-1, 2]}]
""" % ("a" * 64))
    spec = _parse(path)
    assert (spec.name, spec.version, spec.task, spec.provider) == ("full", "3", "feature-extraction", "torch")
    assert spec.tags == ("embedding", "test")
    assert spec.source.kind == "path" and spec.source.ref == str(tmp_path / "w.safetensors")
    assert spec.source.sha256 == "a" * 64
    assert (spec.device, spec.precision, spec.memory) == ("cuda:1", "bf16", 512 * 2**20)
    assert (spec.pin, spec.keep_alive, spec.preload) == (True, 300.0, True)
    assert spec.inputs[0].shape == (-1, 4) and spec.outputs[0].dtype == "FP16"


def test_signature_changes_with_weights_not_with_description(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("provider: sentence-transformers\nsource: {hf: org/m, revision: abc}\n")
    first = _parse(path).signature
    path.write_text("description: new words\nprovider: sentence-transformers\nsource: {hf: org/m, revision: abc}\n")
    assert _parse(path).signature == first
    path.write_text("provider: sentence-transformers\nsource: {hf: org/m, revision: def}\n")
    assert _parse(path).signature != first


def test_signature_covers_declared_inputs_and_outputs(tmp_path: Path) -> None:
    """Triton's simple, simple_int8 and simple_string: one kind of source, other tensors: other models."""
    body = "provider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'm.py:f'}\n"
    (tmp_path / "w.safetensors").write_bytes(b"")
    signatures = set()
    for dtype in ("INT32", "INT8", "BYTES"):
        path = tmp_path / f"{dtype.lower()}.yaml"
        path.write_text(body + f"inputs: [{{name: INPUT0, dtype: {dtype}, shape: [-1, 16]}}]\n"
                        f"outputs: [{{name: OUTPUT0, dtype: {dtype}, shape: [-1, 16]}}]\n")
        signatures.add(_parse(path).signature)
    path = tmp_path / "renamed.yaml"
    path.write_text(body + "inputs: [{name: INPUT9, dtype: INT32, shape: [-1, 16]}]\n"
                    "outputs: [{name: OUTPUT0, dtype: INT32, shape: [-1, 16]}]\n")
    signatures.add(_parse(path).signature)
    path = tmp_path / "undeclared.yaml"
    path.write_text(body)
    signatures.add(_parse(path).signature)
    assert len(signatures) == 5


@pytest.mark.parametrize("name", ["InceptionV3/Predictions/Softmax", "data_0", "input:0", "x y", "é" * 256])
def test_tensor_names_take_what_the_protocol_carries(tmp_path: Path, name: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"provider: sentence-transformers\nsource: {{package: p}}\n"
                    f"inputs: [{{name: {name!r}, dtype: FP32, shape: [-1]}}]\n")
    assert _parse(path).inputs[0].name == name


@pytest.mark.parametrize("name", ["", "a\nb", "tab\there", "bell\x07", "nl at end\n", "c1\x85", "x" * 257])
def test_tensor_names_refuse_control_characters_and_huge_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "m.yaml"
    quoted = name.encode("unicode_escape").decode().replace('"', '\\"')
    path.write_text(f'provider: sentence-transformers\nsource: {{package: p}}\n'
                    f'inputs:\n  - {{name: "{quoted}", dtype: FP32, shape: [-1]}}\n')
    with pytest.raises(SpecFileError) as info:
        _parse(path)
    assert info.value.field == "inputs.0.name" and info.value.line == 4


def test_symlinked_path_source_escaping_root_is_rejected(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"")
    (specs / "link.safetensors").symlink_to(outside)
    path = specs / "m.yaml"
    path.write_text("provider: torch\nsource: {path: link.safetensors}\noptions: {factory: 'a:b'}\n")
    with pytest.raises(SpecFileError, match="outside the allowed roots"):
        parse_spec_file(path, specs, [specs], PROVIDERS)


def test_bundled_specs_are_valid() -> None:
    bundled = Path(__file__).resolve().parents[2] / "specs"
    files = sorted(bundled.glob("*.yaml"))
    assert files
    for f in files:
        parse_spec_file(f, bundled, [bundled], PROVIDERS)


@pytest.mark.parametrize("text", ["", "\n\n", "---\n", "# only a comment\n"])
def test_an_empty_file_says_so(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(SpecFileError) as info:
        _parse(path)
    assert info.value.message.startswith("empty file") and "NoneType" not in str(info.value)
    assert "`provider:` and `source:`" in info.value.message


def test_misspelt_keys_name_the_nearest_known_one_only_when_one_is_near(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("provider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'a:b', strikt: true}\n")
    with pytest.raises(SpecFileError) as info:
        _parse(path)
    assert (info.value.field, info.value.line) == ("options.strikt", 3)
    assert info.value.message == "unknown key 'strikt' (did you mean 'strict'?)"
    path.write_text("provider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'a:b'}\nzzz: 1\n")
    with pytest.raises(SpecFileError) as info:
        _parse(path)
    assert info.value.message.startswith("unknown key 'zzz'; allowed here: description, device, inputs,")


def test_warmd_validate_says_when_a_path_checks_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from warmd.cli import main

    good = tmp_path / "m.yaml"
    good.write_text("provider: sentence-transformers\nsource: {package: pkg}\n")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"ok    {good}: m (sentence-transformers")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("")
    assert main(["validate", str(tmp_path / "speks"), str(tmp_path / "notes.txt"), str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"error {tmp_path / 'speks'}: does not exist",
        f"error {tmp_path / 'notes.txt'}: is not a spec file (*.yaml, *.yml)",
        f"error {tmp_path / 'empty'}: has no spec files (*.yaml, *.yml)"]


def test_isolation_is_part_of_the_signature_only_when_asked_for(tmp_path: Path) -> None:
    body = "provider: torch\nsource: {path: m.safetensors}\noptions: {factory: 'm.py:f'}\n"
    for name, extra in (("plain", ""), ("auto", "isolation: auto\n"), ("own", "isolation: process\n")):
        (tmp_path / f"{name}.yaml").write_text(body + extra)
    plain, auto, own = (_parse(tmp_path / f"{n}.yaml") for n in ("plain", "auto", "own"))
    assert (plain.isolation, own.isolation) == ("auto", "process")
    assert plain.signature == auto.signature != own.signature
