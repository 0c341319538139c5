"""A plugin's manifest: `warmd-plugin.yaml` at the top of its repository.

    name: scale                    # the plugin's name (default: the repository's name)
    provider: adapter.py:Scale     # the file (in the repository) and its Provider subclass
    requirements: [numpy>=1.26]    # optional: PEP 508 requirements, into the plugin's own virtualenv
    examples:                      # one or more, each installed as a spec once the gate passes
      - spec: scale.yaml           # a spec file in the repository; its `path:` source is relative to it
        inputs:                    # the example's request (default: zeros of the spec's declared inputs)
          x: {dtype: FP32, data: [[1, 2, 3]]}
        text: []
        parameters: {}

A repository without a manifest may have `adapter.py` at its top, defining exactly one Provider subclass;
its examples are then the spec files in its `specs/` folder, each run on zeros of its declared inputs.

Rules: the manifest is data read by the daemon (safely: spec.read_yaml_file, no alias bombs, size limited);
every file it names must lie inside the repository (symlinks resolved); requirements are PEP 508 strings
(never pip options); a broken manifest is `spec_invalid` naming the file, the field and the line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmd.errors import Code, WarmdError
from warmd.spec import NAME_PATTERN, SpecFileError, by_importance, explain, line_of, read_yaml_file

MANIFEST = "warmd-plugin.yaml"
ADAPTER = "adapter.py"
EXAMPLES_DIR = "specs"
_DTYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
           "FP64", "BYTES"]
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["provider", "examples"],
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN.pattern,
                 "description": "lowercase letters, digits, . _ - (at most 64)"},
        "description": {"type": "string", "maxLength": 4096},
        "provider": {"type": "string", "pattern": r"^[A-Za-z0-9_./-]+\.py(:[A-Za-z_][A-Za-z0-9_]*)?$",
                     "description": "FILE.py:ClassName, a file in the repository and its Provider subclass"},
        "requirements": {"type": "array", "maxItems": 100, "items": {"type": "string", "minLength": 1,
                                                                      "maxLength": 1000}},
        "examples": {"type": "array", "minItems": 1, "maxItems": 32, "items": {
            "type": "object", "additionalProperties": False, "required": ["spec"],
            "properties": {
                "spec": {"type": "string", "minLength": 1},
                "inputs": {"type": "object", "additionalProperties": {
                    "type": "object", "additionalProperties": False, "required": ["data"],
                    "properties": {"dtype": {"type": "string", "enum": _DTYPES}, "data": {}}}},
                "text": {"type": "array", "items": {"type": "string"}},
                "parameters": {"type": "object"},
            }}},
    },
}


@dataclass(frozen=True)
class Example:
    spec: Path                                        # the spec file, inside the repository
    inputs: dict[str, tuple[str, Any]] | None = None  # name -> (dtype or "", data); None: zeros of the spec's
    text: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    name: str
    adapter: Path                                     # the adapter file, inside the repository
    class_name: str                                   # "" = the one Provider subclass it defines
    examples: tuple[Example, ...]
    requirements: tuple[str, ...] = ()
    file: Path | None = None                          # warmd-plugin.yaml, None for a bare adapter.py


def read(folder: Path, default_name: str) -> Manifest:
    """The manifest of the repository checked out in `folder`.

    Args:
        folder: the checkout.
        default_name: the plugin's name when the manifest names none (from the repository's URL).
    Raises:
        WarmdError: `spec_invalid` for a missing or broken manifest, a file outside the repository, a bad
            requirement.
    """
    path = folder / MANIFEST
    if not path.is_file():
        return _bare(folder, default_name)
    try:
        node, data = read_yaml_file(path)
    except SpecFileError as err:
        raise WarmdError(Code.SPEC_INVALID, str(err)) from None
    if not isinstance(data, dict):
        raise WarmdError(Code.SPEC_INVALID, f"{path}: a manifest is a YAML mapping with `provider:` and `examples:`")
    import jsonschema     # when an adapter is installed, not at every start

    errors = by_importance(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data))
    if errors:
        message, where = explain(errors[0])
        raise WarmdError(Code.SPEC_INVALID, str(SpecFileError(path, message, ".".join(map(str, where)),
                                                              line_of(node, where))))
    file_name, _, class_name = data["provider"].partition(":")

    def inside(value: str, where: list[Any]) -> Path:
        target = (folder / value).resolve()
        if not target.is_relative_to(folder.resolve()) or not target.is_file():
            raise WarmdError(Code.SPEC_INVALID, str(SpecFileError(
                path, f"{value!r} is not a file inside the repository", ".".join(map(str, where)), line_of(node, where))))
        return target

    examples = tuple(Example(spec=inside(e["spec"], ["examples", i, "spec"]),
                             inputs={k: (v.get("dtype", ""), v["data"]) for k, v in e["inputs"].items()}
                             if "inputs" in e else None,
                             text=tuple(e.get("text", ())), parameters=dict(e.get("parameters", {})))
                     for i, e in enumerate(data["examples"]))
    from packaging.requirements import InvalidRequirement, Requirement   # only when a manifest is read

    for i, requirement in enumerate(data.get("requirements", ())):
        try:
            Requirement(requirement)
        except InvalidRequirement as exc:
            where = ["requirements", i]
            raise WarmdError(Code.SPEC_INVALID, str(SpecFileError(
                path, f"{requirement!r} is not a PEP 508 requirement ({exc})", ".".join(map(str, where)),
                line_of(node, where)))) from None
    return Manifest(name=data.get("name", default_name), adapter=inside(file_name, ["provider"]),
                    class_name=class_name, examples=examples, requirements=tuple(data.get("requirements", ())),
                    file=path)


def _bare(folder: Path, name: str) -> Manifest:
    """A repository with only an adapter.py: its examples are the spec files in specs/."""
    adapter = folder / ADAPTER
    if not adapter.is_file() or not adapter.resolve().is_relative_to(folder.resolve()):
        raise WarmdError(Code.SPEC_INVALID, f"the repository has neither a {MANIFEST} nor an {ADAPTER} at its top; "
                         "add a manifest (README, Plugins from git) naming its provider class and example specs")
    specs = sorted(p for p in (folder / EXAMPLES_DIR).glob("*.y*ml")
                   if p.suffix in (".yaml", ".yml") and p.resolve().is_relative_to(folder.resolve()))
    if not specs:
        raise WarmdError(Code.SPEC_INVALID, f"{ADAPTER} has no examples: put at least one spec file in "
                         f"{EXAMPLES_DIR}/ (the gate loads and runs it), or write a {MANIFEST}")
    return Manifest(name=name, adapter=adapter.resolve(), class_name="", examples=tuple(Example(p.resolve()) for p in specs))
