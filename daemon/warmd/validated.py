"""Spec files validated at an earlier start, so that a start does not parse and validate them again.

A spec file's parse and schema check is a pure function of its bytes and of the rules: the spec schema,
each provider's options and the code that checks them. So the catalog keeps, across starts, the plain data
of every file that passed, by the sha256 of its bytes, under a fingerprint of those rules (`rules`). A start
whose files are all known imports neither YAML nor jsonschema (bench/ready.py: about a quarter of a start
with 100 specs). What depends on the disk (where a `path:` source resolves, the model's local files) is
checked again at every start, and a file whose checks fail is read again from itself, for its line numbers.

The file is a cache: a missing, torn or foreign one is ignored and written again; only data that comes back
from JSON exactly as YAML gave it is kept (a mapping with integer keys is validated at every start).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from warmd.errors import WarmdError
from warmd.paths import write_atomic

log = logging.getLogger(__name__)
FORMAT = 1        # moves when what an entry holds changes: a file of another format is ignored


class ValidatedSpecs:
    """The plain data of spec files that passed validation, by the sha256 of their bytes.

    Args:
        file: where it is kept between starts (None: only in memory, as in tests of the catalog).
    """

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._rules = ""
        self._known: dict[str, str] = {}    # digest -> JSON text, as the file had it under `_rules`
        self._used: dict[str, str] = {}     # what this daemon saw: what the next start will want
        self._dirty = False
        self._loaded = False

    def follow(self, rules: str) -> None:
        """Use data validated under `rules` only: what was validated under others is forgotten."""
        if not self._loaded:
            self._loaded = True
            self._rules, self._known = rules, self._read(rules)
        elif rules != self._rules:
            self._rules, self._known, self._used, self._dirty = rules, {}, {}, True

    def get(self, digest: str) -> Any | None:
        """The plain data of the file whose bytes have this sha256, or None when it is not known."""
        text = self._used.get(digest) or self._known.get(digest)
        if text is None:
            return None
        self._used[digest] = text
        return json.loads(text)     # a copy of its own for each spec made from it

    def put(self, digest: str, data: Any) -> None:
        """Remember that the file whose bytes have this sha256 gave `data` and passed."""
        try:
            text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):     # a date, a set, NaN: JSON cannot hold it as it is
            return
        if json.loads(text) != data:        # integer keys would come back as strings
            return
        self._dirty = self._dirty or self._used.get(digest) != text
        self._used[digest] = text

    def save(self) -> None:
        """Write what this daemon saw, when it changed (all at once: a reader sees the old file or the new)."""
        if self.file is None or not self._dirty:
            return
        self._dirty = False
        body = ",".join(f"{json.dumps(d)}:{t}" for d, t in sorted(self._used.items()))
        text = f'{{"format":{FORMAT},"rules":{json.dumps(self._rules)},"specs":{{{body}}}}}'
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.file, text, mode=0o600)
        except (OSError, WarmdError) as exc:    # a cache: the next start validates again (and warns once)
            log.warning("cannot keep validated specs in %s: %s", self.file, exc)

    def _read(self, rules: str) -> dict[str, str]:
        if self.file is None:
            return {}
        try:
            data = json.loads(self.file.read_bytes())
            if data.get("format") != FORMAT or data.get("rules") != rules:
                return {}
            return {digest: json.dumps(body, separators=(",", ":")) for digest, body in data["specs"].items()
                    if isinstance(body, dict)}
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            return {}


def rules(providers: Mapping[str, type]) -> str:
    """A fingerprint of what decides whether a spec file passes: the spec schema, each provider's name and
    options schema, the code that checks them (warmd's own and each provider's, by the bytes of its source),
    and the YAML and JSON Schema libraries. Code counts as this process loaded it: its part is taken at first
    sight, so a file edited while the daemon runs (the old code still checking) changes nothing until a start."""
    from warmd import spec

    parts = [json.dumps(spec.schema(), sort_keys=True), *map(_code, _CHECKERS)]
    for name, cls in sorted(providers.items()):
        parts += [name, _provider(cls)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# Modules whose code decides a verdict besides the providers' own: the parse and checks, the options' check,
# what is kept, and the two libraries.
_CHECKERS = ("warmd.spec", "warmd.providers.base", "warmd.validated", "yaml", "jsonschema")


@functools.lru_cache(maxsize=None)
def _code(module: str) -> str:
    """sha256 of a module's source, found without importing it ("" when it is not there); for a package, its
    `__init__` and the names in its folder (whether PyYAML has libyaml's `_yaml` extension, say)."""
    try:
        found = importlib.util.find_spec(module)     # a top-level name or an imported package's: no import
        origin = Path(found.origin) if found is not None and found.origin else None
        if origin is None:
            return ""
        h = hashlib.sha256(origin.read_bytes())
        if origin.name == "__init__.py":
            h.update("\0".join(sorted(p.name for p in origin.parent.iterdir())).encode())
        return h.hexdigest()
    except (ImportError, ValueError, OSError):
        return ""


@functools.lru_cache(maxsize=None)
def _provider(cls: type) -> str:
    """A provider class's part: its options schema and its module's code (a plugin reloaded is a new class).
    A schema JSON cannot write in one way gets a part of this process alone: its files are always checked."""
    try:
        schema = json.dumps(getattr(cls, "options_schema", None), sort_keys=True)
    except (TypeError, ValueError):
        schema = f"unstable:{os.getpid()}:{id(cls)}"
    return f"{schema}\0{_code(cls.__module__)}"
