"""`warm infer`'s options turned into what a request carries: texts, named tensors, provider parameters.

Rules (each broken one is `invalid_argument` before anything reaches the daemon):
- A model takes text or tensors: `--text` and `--input` do not go together.
- `--text T` is the text itself; `--text @FILE` reads FILE (UTF-8), `--text -` reads stdin (once), both
  without their trailing line breaks; `--text @@x` is the text `@x`.
- `--input NAME=JSON` or `NAME=@file.npy`, each NAME once. `--dtype` is the numpy dtype of the JSON
  values (default float32): one of `DTYPES`, and only with a JSON `--input` (a .npy file has its own).
- `--param KEY=VALUE`, each KEY once; VALUE is JSON, else the string as given.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TextIO

from warmd.errors import Code, WarmdError

DEFAULT_DTYPE = "float32"


@dataclass
class Inputs:
    """What `warm infer` sends."""

    text: list[str] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def dtypes() -> list[str]:
    """The numpy names `--dtype` accepts: those the Open Inference Protocol has a name for."""
    from warmd.tensors import NUMPY_DTYPES

    return [dt.name for dt in NUMPY_DTYPES.values()]


def parse(texts: Iterable[str], tensors: Iterable[str], dtype: str | None, params: Iterable[str],
          stdin: TextIO = sys.stdin) -> Inputs:
    """Check the options together and read what they point at.

    Args:
        texts, tensors, params: the repeated `--text`, `--input`, `--param` values as given.
        dtype: `--dtype`, or None when not given.
        stdin: where `--text -` reads.
    Returns:
        The texts, tensors (numpy arrays) and parameters.
    Raises:
        WarmdError: `invalid_argument` naming the option and what is wrong with it.
    """
    texts, tensors = list(texts), list(tensors)
    if texts and tensors:
        raise _bad("--text and --input do not go together: a model takes text or tensors")
    if dtype is not None:
        if texts:
            raise _bad("--dtype applies to JSON --input values; text has no dtype")
        if not any(not value.startswith("@") for _, value in map(_split_input, tensors)):
            raise _bad("--dtype applies to JSON --input values (a .npy file keeps its own dtype)")
        if dtype not in dtypes():
            raise _bad(f"unknown --dtype {dtype!r}; use one of {', '.join(dtypes())}")
    return Inputs(text=_texts(texts, stdin), tensors=_tensors(tensors, dtype or DEFAULT_DTYPE),
                  parameters=_unique("--param", (_param(item) for item in params)))


def _texts(texts: list[str], stdin: TextIO) -> list[str]:
    if texts.count("-") > 1:
        raise _bad("--text - reads stdin, which can be read once")
    return [_text(item, stdin) for item in texts]


def _text(item: str, stdin: TextIO) -> str:
    if item == "-":
        return stdin.read().rstrip("\r\n")
    if item.startswith("@@"):
        return item[1:]
    if not item.startswith("@"):
        return item
    try:
        return Path(item[1:]).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(f"--text {item}: cannot read {item[1:]}: {exc}") from None


def _tensors(items: list[str], dtype: str) -> dict[str, Any]:
    return _unique("--input", (_tensor(*_split_input(item), dtype) for item in items))


def _split_input(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise _bad(f"--input {item!r} must be NAME=JSON or NAME=@file.npy")
    return name, value


def _tensor(name: str, value: str, dtype: str) -> tuple[str, Any]:
    import numpy as np

    try:
        if value.startswith("@"):
            return name, np.load(Path(value[1:]), allow_pickle=False)
        return name, np.asarray(json.loads(value), dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise _bad(f"--input {name}: {exc}") from None


def _param(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise _bad(f"--param {item!r} must be KEY=JSON")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _unique(option: str, pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _bad(f"{option} {key} is given twice; give each once")
        found[key] = value
    return found


def _bad(message: str) -> WarmdError:
    return WarmdError(Code.INVALID_ARGUMENT, message)
