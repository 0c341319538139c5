"""Specs validated at an earlier start (warmd.validated): a file whose bytes passed is not parsed or checked
against the schemas again, anything else is; what depends on the disk is checked at every start."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import pytest

import warmd.spec
from warmd.providers import PROVIDERS, Provider
from warmd.spec import ModelSpec, SpecFileError, parse_spec_file
from warmd.validated import ValidatedSpecs, rules

SPEC = "description: one\nprovider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'm.py:f'}\n"


def _folder(tmp_path: Path) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "w.safetensors").write_bytes(b"")
    (specs / "m.yaml").write_text(SPEC)
    return specs


def _started(file: Path, providers: Mapping[str, type[Provider]] = PROVIDERS) -> ValidatedSpecs:
    validated = ValidatedSpecs(file)
    validated.follow(rules(providers))
    return validated


def _parse(path: Path, validated: ValidatedSpecs) -> ModelSpec:
    return parse_spec_file(path, path.parent, [path.parent], PROVIDERS, validated)


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("parsed again")
    monkeypatch.setattr(warmd.spec, "_load_yaml", refuse)


def test_a_file_that_passed_at_one_start_is_not_parsed_at_the_next(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    first = _started(kept)
    before = _parse(specs / "m.yaml", first)
    first.save()
    _no_parsing(monkeypatch)
    assert _parse(specs / "m.yaml", _started(kept)) == before


def test_a_file_whose_bytes_changed_is_validated_again(tmp_path: Path) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    first = _started(kept)
    _parse(specs / "m.yaml", first)
    first.save()
    (specs / "m.yaml").write_text(SPEC.replace("description: one", "descriptoin: one"))
    with pytest.raises(SpecFileError, match="unknown key 'descriptoin'") as info:
        _parse(specs / "m.yaml", _started(kept))
    assert info.value.line == 1


def test_other_rules_forget_what_was_validated_under_the_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    first = _started(kept)
    _parse(specs / "m.yaml", first)
    first.save()
    digest = hashlib.sha256((specs / "m.yaml").read_bytes()).hexdigest()
    assert _started(kept).get(digest) is not None
    fewer = {name: cls for name, cls in PROVIDERS.items() if name != "onnx"}     # a plugin went away
    assert _started(kept, fewer).get(digest) is None
    again = _started(kept)
    again.follow(rules(fewer))              # while running: the providers changed
    assert again.get(digest) is None


def test_a_check_on_the_disk_that_fails_is_said_with_the_files_line(tmp_path: Path) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    (specs / "m.yaml").write_text("provider: torch\noptions: {factory: 'm.py:f'}\nsource: {path: link.safetensors}\n")
    (specs / "link.safetensors").symlink_to(specs / "w.safetensors")
    first = _started(kept)
    _parse(specs / "m.yaml", first)
    first.save()
    (specs / "link.safetensors").unlink()                           # now it points outside the folder
    (specs / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(SpecFileError, match="outside the allowed roots") as info:
        _parse(specs / "m.yaml", _started(kept))
    assert (info.value.field, info.value.line) == ("source.path", 3)


def test_data_json_cannot_hold_as_it_is_is_not_kept(tmp_path: Path) -> None:
    validated = _started(tmp_path / "validated.json")
    validated.put("a", {"options": {"id2label": {0: "neg", 1: "pos"}}})     # integer keys come back as text
    validated.put("b", {"version": float("nan")})
    validated.put("c", {"options": {"labels": ["neg", "pos"]}})
    assert validated.get("a") is None and validated.get("b") is None
    assert validated.get("c") == {"options": {"labels": ["neg", "pos"]}}


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 1, "rules": 7}', '{"format": 99, "specs": {}}'])
def test_a_torn_or_foreign_file_is_ignored_and_written_again(tmp_path: Path, text: str) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    kept.write_text(text)
    validated = _started(kept)
    spec = _parse(specs / "m.yaml", validated)
    validated.save()
    assert json.loads(kept.read_text())["format"] == 1
    assert _parse(specs / "m.yaml", _started(kept)) == spec


def test_a_start_whose_files_all_passed_before_imports_neither_yaml_nor_jsonschema(tmp_path: Path) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    script = f"""
import sys
from pathlib import Path
from warmd.providers import PROVIDERS
from warmd.spec import parse_spec_file
from warmd.validated import ValidatedSpecs, rules
validated = ValidatedSpecs(Path({str(kept)!r}))
validated.follow(rules(PROVIDERS))
path = Path({str(specs / "m.yaml")!r})
parse_spec_file(path, path.parent, [path.parent], PROVIDERS, validated)
validated.save()
print(sorted({{"yaml", "jsonschema"}} & set(sys.modules)))
"""
    def run() -> str:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert run() == "['jsonschema', 'yaml']"    # the first start validates
    assert run() == "[]"


def test_the_same_bytes_under_another_file_name_are_named_and_checked_by_it(tmp_path: Path) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    first = _started(kept)
    _parse(specs / "m.yaml", first)
    first.save()
    for name in ("n.yaml", "Bad Name.yaml"):
        (specs / name).write_bytes((specs / "m.yaml").read_bytes())
    assert _parse(specs / "n.yaml", _started(kept)).name == "n"
    with pytest.raises(SpecFileError) as info:
        _parse(specs / "Bad Name.yaml", _started(kept))
    assert info.value.field == "name"


def test_another_options_schema_forgets_what_passed_under_the_old(tmp_path: Path) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    first = _started(kept)
    _parse(specs / "m.yaml", first)
    first.save()
    digest = hashlib.sha256((specs / "m.yaml").read_bytes()).hexdigest()
    stricter = type("TorchProvider", (PROVIDERS["torch"],), {"options_schema": {"type": "object", "maxProperties": 0}})
    assert _started(kept, {**PROVIDERS, "torch": stricter}).get(digest) is None


def test_an_entry_that_is_not_a_spec_s_data_is_not_trusted(tmp_path: Path) -> None:
    specs, kept = _folder(tmp_path), tmp_path / "validated.json"
    first = _started(kept)
    spec = _parse(specs / "m.yaml", first)
    first.save()
    digest = hashlib.sha256((specs / "m.yaml").read_bytes()).hexdigest()
    body = json.loads(kept.read_text())
    for entry in (["x"], {"description": "no provider, no source"}):
        body["specs"][digest] = entry
        kept.write_text(json.dumps(body))
        assert _parse(specs / "m.yaml", _started(kept)) == spec
