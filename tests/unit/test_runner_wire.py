"""The runner's wire and the install pipeline's parsers, without a daemon: sealed arenas, checked tensor
descriptors, error replies rebuilt without trusting them, git sources, manifests, the gate's output check."""
from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from warmd.adapters import manifest
from warmd.adapters.gate import output_problems
from warmd.adapters.install import parse_source
from warmd.errors import Code, WarmdError
from warmd.providers import InferResult
from warmd.runner.channel import Arena, ChannelError, spec_from_json, spec_to_json
from warmd.runner.process import describe_status, rebuilt
from warmd.spec import ModelSpec, Source, TensorDecl


def test_an_arena_can_grow_but_never_shrink() -> None:
    arena = Arena.create("test")
    try:
        with pytest.raises(PermissionError) as raised:
            os.ftruncate(arena.fd, 10)            # what a hostile runner would do under the daemon's mapping
        assert raised.value.errno == errno.EPERM
        descs = arena.put({"x": np.arange(2**19, dtype=np.float32)})   # 2 MiB: bigger than the first size
        assert arena.size >= 2**21
        other = Arena(os.dup(arena.fd))           # the runner's side: its own mapping of the same file
        assert np.array_equal(other.take(descs)["x"], np.arange(2**19, dtype=np.float32))
        other.close()
    finally:
        arena.close()


def test_round_trip_of_every_dtype_and_bytes() -> None:
    arena = Arena.create("test")
    arrays = {"f16": np.ones((2, 3), np.float16), "i64": np.arange(5, dtype=np.int64), "b": np.array([True]),
              "empty": np.zeros((0, 4), np.float32), "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, 1],
              "text": np.array([b"a", b"\x00bc"], dtype=object)}
    got = arena.take(arena.put(arrays))
    for name, array in arrays.items():
        assert got[name].shape == array.shape and np.array_equal(got[name], array), name
    got["i64"][0] = 99                           # a copy: the arena is the next request's
    assert arena.take(arena.put({"i64": arrays["i64"]}))["i64"][0] == 0
    arena.close()


@pytest.mark.parametrize("desc, said", [
    ({"name": "y", "dtype": "FP32", "shape": [4], "offset": 0, "nbytes": 8}, "do not fit its shape"),
    ({"name": "y", "dtype": "FP32", "shape": [2**20], "offset": 0, "nbytes": 2**22}, "inside the"),
    ({"name": "y", "dtype": "FP32", "shape": [1], "offset": -4, "nbytes": 4}, "do not fit"),
    ({"name": "y", "dtype": "OBJECT", "shape": [1], "offset": 0, "nbytes": 8}, "unknown dtype"),
    ({"name": "y", "dtype": "FP32", "shape": [-1], "offset": 0, "nbytes": 4}, "not a list of at most 16 sizes"),
    ({"name": "y", "dtype": "BYTES", "shape": [2], "items": ["YQ=="]}, "1 items for shape [2]"),
    ("y", "must be an object"),
])
def test_descriptors_from_the_other_side_are_checked_before_reading(desc: object, said: str) -> None:
    arena = Arena.create("test")
    with pytest.raises(ChannelError) as raised:
        arena.take([desc])
    assert said in raised.value.message and raised.value.code == Code.PROVIDER_FAILED
    arena.close()


def test_error_replies_are_rebuilt_without_trusting_them() -> None:
    passed = rebuilt({"code": "invalid_argument", "message": "bad x", "traceback": "tb"})
    assert isinstance(passed, WarmdError) and passed.code == Code.INVALID_ARGUMENT
    assert passed.runner_traceback == "tb"
    assert rebuilt({"code": "permission_denied", "message": "m"}).code == Code.PROVIDER_FAILED   # not passed on
    assert rebuilt({"code": "no_such_code", "message": "m"}).code == Code.PROVIDER_FAILED
    assert type(rebuilt({"type": "ValueError", "message": "shape mismatch"})) is ValueError
    custom = rebuilt({"type": "OutOfMemoryError", "message": "CUDA out of memory"})
    assert type(custom).__name__ == "OutOfMemoryError" and not isinstance(custom, WarmdError)
    assert type(rebuilt({"type": "os.system('x')", "message": "m"})) is Exception
    assert rebuilt("not a dict").code == Code.PROVIDER_FAILED
    assert describe_status(-11) == "-11 (SIGSEGV)" and describe_status(3) == "3"


def test_a_spec_crosses_the_wire_whole() -> None:
    spec = ModelSpec(name="m", file=Path("/s/m.yaml"), source=Source("path", "/w", mirrors=("a",)), provider="p",
                     tags=("t",), options={"k": [1]}, inputs=(TensorDecl("x", "FP32", (-1, 3)),), isolation="process")
    assert spec_from_json(spec_to_json(spec)) == spec


@pytest.mark.parametrize("text, url, rev", [
    ("git+https://github.com/org/repo", "https://github.com/org/repo", ""),
    ("git+https://github.com/org/repo@v1.2", "https://github.com/org/repo", "v1.2"),
    ("git+ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git", ""),
    ("git+ssh://git@github.com/org/repo.git@main", "ssh://git@github.com/org/repo.git", "main"),
    ("git+file:///srv/repo@abc123", "file:///srv/repo", "abc123"),
    ("/home/me/repo", "/home/me/repo", ""),
])
def test_git_sources(text: str, url: str, rev: str) -> None:
    source = parse_source(text)
    assert (source.url, source.rev) == (url, rev)


@pytest.mark.parametrize("text", ["git+ext::sh -c touch% /tmp/x", "git+ftp://host/r", "repo", "git+https://h/r@",
                                  "git+https://h/r@--upload-pack=x"])
def test_bad_git_sources(text: str) -> None:
    with pytest.raises(WarmdError) as raised:
        parse_source(text)
    assert raised.value.code == Code.INVALID_ARGUMENT


def test_default_plugin_names() -> None:
    assert parse_source("git+https://github.com/Org/My_Matting.git").default_name == "my_matting"


def _repo(tmp_path: Path, manifest_text: str, files: tuple[str, ...] = ("adapter.py", "s.yaml")) -> Path:
    for name in files:
        (tmp_path / name).write_text("")
    (tmp_path / manifest.MANIFEST).write_text(textwrap.dedent(manifest_text))
    return tmp_path


def test_a_manifest_is_read(tmp_path: Path) -> None:
    found = manifest.read(_repo(tmp_path, """\
        provider: adapter.py:Net
        requirements: ["numpy>=1.26", "tinydep @ file:///w/tinydep-1.0-py3-none-any.whl"]
        examples:
          - spec: s.yaml
            inputs: {x: {dtype: FP32, data: [[1]]}}
            parameters: {k: 1}
        """), "repo")
    assert (found.name, found.adapter.name, found.class_name) == ("repo", "adapter.py", "Net")
    [example] = found.examples
    assert example.inputs == {"x": ("FP32", [[1]])} and example.parameters == {"k": 1}


@pytest.mark.parametrize("text, said", [
    ("provider: adapter.py:Net\nexamples: [{spec: s.yaml}]\nrequirements: ['--index-url=http://evil']\n",
     "warmd-plugin.yaml:3: requirements.0: '--index-url=http://evil' is not a PEP 508 requirement"),
    ("provider: adapter.py:Net\nexamples: [{spec: ../outside.yaml}]\n", "examples.0.spec: '../outside.yaml' is not a "
                                                                       "file inside the repository"),
    ("provider: missing.py\nexamples: [{spec: s.yaml}]\n", "provider: 'missing.py' is not a file inside"),
    ("provider: adapter.py\nexample: []\n", "unknown key 'example' (did you mean 'examples'?)"),
    ("provider: adapter.py\nexamples: []\n", "examples: [] should be non-empty"),
    ("a: &a [1, *a]\n", "warmd-plugin.yaml"),
])
def test_a_broken_manifest_names_the_field_and_line(tmp_path: Path, text: str, said: str) -> None:
    (tmp_path.parent / "outside.yaml").write_text("")
    with pytest.raises(WarmdError) as raised:
        manifest.read(_repo(tmp_path, text), "repo")
    assert raised.value.code == Code.SPEC_INVALID and said in raised.value.message, raised.value.message


def test_a_bare_adapter_takes_its_examples_from_specs(tmp_path: Path) -> None:
    (tmp_path / "adapter.py").write_text("")
    with pytest.raises(WarmdError) as raised:
        manifest.read(tmp_path, "repo")
    assert "has no examples" in raised.value.message
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "one.yaml").write_text("")
    found = manifest.read(tmp_path, "repo")
    assert found.class_name == "" and [e.spec.name for e in found.examples] == ["one.yaml"]
    assert found.examples[0].inputs is None                # zeros of the declared inputs
    (tmp_path / "adapter.py").unlink()
    with pytest.raises(WarmdError) as raised:
        manifest.read(tmp_path, "repo")
    assert "neither a warmd-plugin.yaml nor an adapter.py" in raised.value.message


def test_outputs_are_checked_by_name_dtype_and_shape() -> None:
    spec = ModelSpec(name="m", file=Path("m.yaml"), source=Source("path", "/w"), provider="p",
                     outputs=(TensorDecl("y", "FP32", (-1, 3)), TensorDecl("z", "INT64", (2,))))
    good = {"y": np.zeros((5, 3), np.float32), "z": np.zeros(2, np.int64)}
    assert output_problems(spec, InferResult(tensors=good)) == []
    bad = {"y": np.zeros((5, 4), np.float64), "extra": np.zeros(1)}
    assert output_problems(spec, InferResult(tensors=bad)) == [
        "output 'y' is FP64, declared FP32", "output 'y' has shape [5, 4], declared [-1, 3]",
        "output 'z' is missing (it gave y, extra)", "output 'extra' is not declared in the spec's outputs"]
