"""ModelSpec: the schema of one spec file, its validation and its canonical signature.

A spec file is the single source of truth for a model. Parsing is strict: anything unexpected is an
error that names the file, the field and the line, so a person can fix it in one look; a misspelt key,
value or provider also names the nearest known one (`explain`, shared with the providers' options).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from warmd.errors import Code
from warmd.units import parse_duration, parse_size

if TYPE_CHECKING:   # both imported when first needed: a start whose files are all validated needs neither
    import jsonschema
    import yaml

    from warmd.validated import ValidatedSpecs

MAX_SPEC_BYTES = 256 * 1024
MAX_EXPANDED_NODES = 10_000
# ~25k tokens of English at ~4 characters a token: past the context of sentence embedders (256-512 tokens)
# and small LLMs (2k-8k), while a 10 MiB paste is refused before the tokenizer spends seconds and memory on it.
DEFAULT_MAX_INPUT_CHARS = 100_000
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")   # the schema's `name` pattern


@dataclass(frozen=True)
class Source:
    """Where a model's files come from."""

    # One of source_kinds(), or `cluster` (set by warmd.cluster.Placement, never by a file); its handler:
    # warmd.store.sources.
    kind: str
    ref: str                                    # repo id, URL, path, package name, V2 endpoint, Ollama name
                                                # (cluster: the Ray address)
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()
    subdir: str = ""
    model: str = ""                             # remote: the model's name there (default: the spec's)
    token_env: str = ""                         # remote: environment variable holding its bearer token

    def describe(self) -> str:
        """The source in one line, as its kind writes it ("hf:org/name@main")."""
        from warmd.store.sources import handler     # the store's handlers import this module

        return handler(self).describe(self)


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One validated spec file."""

    name: str
    file: Path
    source: Source
    provider: str
    version: str = "1"
    description: str = ""
    tags: tuple[str, ...] = ()
    task: str = "custom"                        # chat: see warmd.chat
    options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "fp32"
    memory: int | None = None                   # bytes; overrides the estimate
    pin: bool = False
    keep_alive: float | None = None             # seconds; None = the daemon's default
    preload: bool = False
    max_in_flight: int = 4                      # requests running at once; more wait in the queue
    max_queue: int = 64                         # requests waiting; beyond that `busy` at once
    max_batch: int = 1                          # dynamic batching: requests joined into one call (1 = off)
    max_delay_ms: float = 5.0                   # how long a batch's first request waits for others
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS  # longest text per input; longer is refused before tokenizing
    inputs: tuple[TensorDecl, ...] = ()
    outputs: tuple[TensorDecl, ...] = ()
    placement: str = ""                         # local | cluster | "" (the daemon's `placement` setting)
    isolation: str = "auto"                     # auto: the provider's way | process: a runner process of its own
    # Fingerprint of the local files the model is built from (path/package sources, a torch factory
    # module): set by the catalog (warmd.store.local), so editing a weights file is a new version too.
    content: str = ""

    @functools.cached_property
    def signature(self) -> str:
        """sha256 over what makes this model answer as it does: the loaded weights and code, and the declared
        inputs and outputs (two models of one source that take other tensors differ). An edit that changes
        it means a reload."""
        loaded = {
            "source": self.source.__dict__, "provider": self.provider, "options": self.options,
            "device": self.device, "precision": self.precision, "version": self.version,
            "content": self.content,
            "inputs": [vars(d) for d in self.inputs], "outputs": [vars(d) for d in self.outputs],
        }
        if self.isolation != "auto":    # only when set: the signatures of every other spec stay as they were
            loaded["isolation"] = self.isolation
        canonical = json.dumps(loaded, sort_keys=True, separators=(",", ":"), default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()


class SpecFileError(Exception):
    """A spec file that cannot be accepted.

    Args:
        file: the spec file.
        message: what is wrong and how to fix it.
        field: dotted path of the offending field ("" for the file as a whole).
        line: 1-based line in the file, 0 when unknown.
        code: `spec_invalid`, or `unsupported_provider` for a provider that is not installed.
    """

    def __init__(self, file: Path, message: str, field: str = "", line: int = 0,
                 code: Code = Code.SPEC_INVALID) -> None:
        self.file, self.message, self.field, self.line, self.code = file, message, field, line, code
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (daemon/warmd/spec.schema.json)."""
    return json.loads(resources.files("warmd").joinpath("spec.schema.json").read_text())


@lru_cache(maxsize=1)
def source_kinds() -> tuple[str, ...]:
    """The kinds of source a spec can name (hf, url, path, package, remote, ollama), as the schema lists them."""
    return tuple(rule["required"][0] for rule in schema()["properties"]["source"]["oneOf"])


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded, computed without expanding them."""
    import yaml

    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1   # an alias cycle counts once instead of looping
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def parse_spec_file(path: Path, root: Path, path_roots: list[Path], providers: Mapping[str, Any],
                    validated: ValidatedSpecs | None = None, raw: bytes | None = None) -> ModelSpec:
    """Read and validate one spec file.

    Args:
        path: the YAML file.
        root: the specs folder; relative `path:` sources must stay inside the file's folder under it.
        path_roots: folders an absolute `path:` source may point into.
        providers: known provider classes by name; each validates its own `options`.
        validated: files that passed before (warmd.validated): a file it knows is not parsed nor checked
            against the schemas again; one that passes now is added to it.
        raw: the file's bytes, when the caller has read them already (the catalog, for their digest).
    Returns:
        The spec.
    Raises:
        SpecFileError: anything wrong with the file, with field and line where known.
    """
    raw = _read_spec_bytes(path) if raw is None else _within_limit(path, raw)
    digest = hashlib.sha256(raw).hexdigest()
    data = validated.get(digest) if validated is not None else None
    if data is not None:
        try:
            return _spec(path, None, data, root, path_roots)
        except SpecFileError:
            pass                        # said again below from the file itself, with its line
        except (KeyError, TypeError, AttributeError, ValueError):
            pass                        # a cache entry that is not what it should be: the file decides
    node, data = _load_yaml(path, _decoded(path, raw))
    _check(path, node, data, providers)
    spec = _spec(path, node, data, root, path_roots)
    if validated is not None:
        validated.put(digest, data)
    return spec


def _check(path: Path, node: yaml.Node | None, data: Any, providers: Mapping[str, Any]) -> None:
    """What depends on the file's data alone: the schema, the provider and its options (the name depends on
    the file's name too: `_spec`)."""
    if data is None:
        raise SpecFileError(path, "empty file (nothing but comments or blank lines); a spec needs at least "
                            "`provider:` and `source:` (README, Spec format)", line=1)
    if not isinstance(data, dict):
        raise SpecFileError(path, "a spec must be a YAML mapping (key: value lines), "
                            f"not {type(data).__name__}", line=1)

    errors = by_importance(_validator().iter_errors(data))
    if errors:
        message, where = explain(errors[0])
        raise SpecFileError(path, message, field=".".join(map(str, where)), line=line_of(node, where))

    provider_cls = providers.get(data["provider"])
    if provider_cls is None:
        raise SpecFileError(path, f"unknown provider {data['provider']!r}{did_you_mean(data['provider'], providers)}"
                            f"; installed: {', '.join(sorted(providers))}", field="provider",
                            line=line_of(node, ["provider"]), code=Code.UNSUPPORTED_PROVIDER)
    for message, opt_path in provider_cls.validate_options(data.get("options", {})):
        dotted = ["options", *opt_path]
        raise SpecFileError(path, message, field=".".join(map(str, dotted)), line=line_of(node, dotted))
    for key in ("inputs", "outputs"):       # a request's tensors are checked against one declaration each
        names = [t["name"] for t in data.get(key, ())]
        again = next((i for i, n in enumerate(names) if n in names[:i]), None)
        if again is not None:
            raise SpecFileError(path, f"{key} declares {names[again]!r} twice; give each tensor one entry",
                                field=f"{key}.{again}", line=line_of(node, [key, again]))


def _spec(path: Path, node: yaml.Node | None, data: dict[str, Any], root: Path,
          path_roots: list[Path]) -> ModelSpec:
    """The ModelSpec of checked data; its name, durations and `path:` source are checked here, as the
    file's name and the disk may have changed since the data was."""
    name = data.get("name", path.stem)
    if "name" not in data and not NAME_PATTERN.match(name):
        raise SpecFileError(path, f"the file name {path.stem!r} is not a valid model name; rename the file "
                            "or set `name:` (lowercase letters, digits, . _ -; at most 64)", field="name")
    keep_alive = parse_duration(data["keep_alive"]) if "keep_alive" in data else None
    if keep_alive is not None and keep_alive < 0 and keep_alive != -1:
        raise SpecFileError(path, "keep_alive must be -1 (forever), 0, or a positive duration",
                            field="keep_alive", line=line_of(node, ["keep_alive"]))

    given = {key: convert(data[key]) for key, convert in _FIELDS.items() if key in data}
    return ModelSpec(name=name, file=path, provider=data["provider"], keep_alive=keep_alive,
                     source=_source(path, node, data["source"], root, path_roots), **given)


def _tensors(items: Any) -> tuple[TensorDecl, ...]:
    return tuple(TensorDecl(t["name"], t["dtype"], tuple(t["shape"])) for t in items)


# How a spec file's keys become ModelSpec fields (the schema has checked their types). A key the file leaves
# out takes the field's default: ModelSpec states each default once.
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "version": str, "description": str, "tags": tuple, "task": str, "options": dict, "device": str,
    "precision": str, "memory": parse_size, "pin": bool, "preload": bool, "max_in_flight": int,
    "max_queue": int, "max_batch": int, "max_delay_ms": float, "max_input_chars": int,
    "inputs": _tensors, "outputs": _tensors, "placement": str, "isolation": str,
}


def read_yaml_file(path: Path) -> tuple[yaml.Node | None, Any]:
    """Read a small YAML file written by someone else (a spec, a plugin's manifest) safely: at most
    MAX_SPEC_BYTES of UTF-8, no alias bombs, no duplicate keys.

    Returns:
        (the node tree, for line numbers; the plain data), both None for an empty document.
    Raises:
        SpecFileError: the file cannot be read or is not such YAML.
    """
    return _load_yaml(path, _decoded(path, _read_spec_bytes(path)))


def _read_spec_bytes(path: Path) -> bytes:
    try:
        return _within_limit(path, path.read_bytes())
    except OSError as exc:
        raise SpecFileError(path, f"cannot read: {exc.strerror}") from None


def _within_limit(path: Path, raw: bytes) -> bytes:
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecFileError(path, f"file is {len(raw)} bytes; a spec may be at most {MAX_SPEC_BYTES}")
    return raw


def _decoded(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecFileError(path, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None


def _load_yaml(path: Path, text: str) -> tuple[yaml.Node | None, Any]:
    """Parse once into a node tree (kept for line numbers), then construct plain data from it.

    Alias bombs ("billion laughs") are refused by measuring the expanded size before constructing.
    """
    import yaml

    try:
        # libyaml when PyYAML has it (10x faster: 100 specs parse in ~30 ms instead of ~300 ms).
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
                raise SpecFileError(path, f"the document expands to more than {MAX_EXPANDED_NODES} values "
                                    "through YAML aliases; refusing to expand it")
            duplicate = _duplicate_key(node, set()) if node is not None else None
            if duplicate is not None:   # YAML keeps the last silently; a spec must say one thing
                key, line = duplicate
                raise SpecFileError(path, f"key {key!r} appears twice in the same mapping", field=key, line=line)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecFileError(path, f"YAML error: {problem}", line=mark.line + 1 if mark else 0) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise SpecFileError(path, f"YAML error: {str(exc) or 'nesting too deep'}") from None
    return node, data


def _duplicate_key(node: yaml.Node, seen: set[int]) -> tuple[str, int] | None:
    """The first key that repeats within one mapping, with its line; each node is visited once."""
    import yaml

    if id(node) in seen:
        return None
    seen.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in keys:
                    return k.value, k.start_mark.line + 1
                keys.add(k.value)
            children.append(v)
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    for child in children:
        if (found := _duplicate_key(child, seen)) is not None:
            return found
    return None


def by_importance(errors: Iterable[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    """Schema errors in the order to show them: the shallowest first, and at one depth an unknown key
    before anything else (a misspelt key also makes a required one look missing; the typo is the fix)."""
    return sorted(errors, key=lambda e: (len(e.absolute_path), e.validator != "additionalProperties",
                                         list(map(str, e.absolute_path))))


def explain(err: jsonschema.ValidationError) -> tuple[str, list[Any]]:
    """A message a person can act on for one schema error, and the path of the offending value (for an
    unknown key, the key itself). Used for the spec and for every provider's `options`.

    Args:
        err: one error from a jsonschema validator.
    Returns:
        (message, path within the validated document).
    """
    where = list(err.absolute_path)
    if err.validator == "additionalProperties":
        known = _keys_allowed(err.schema, err.instance)
        key = sorted(set(err.instance) - set(err.schema.get("properties", {})), key=str)[0]
        hint = did_you_mean(key, known) or f"; allowed here: {', '.join(sorted(known))}"
        return f"unknown key {key!r}{hint}", [*where, key]
    if "propertyNames" in err.schema_path:      # a known source key that belongs to another kind of source
        known = list(err.validator_value)
        return (f"{err.instance!r} does not go with a {known[0]} source{did_you_mean(err.instance, known)}; "
                f"its keys: {', '.join(known)}", [*where, err.instance])
    if err.validator == "oneOf" and "allOf" in err.schema:
        kinds = [rule["if"]["required"][0] for rule in err.schema["allOf"]]
        return f"give exactly one of {', '.join(kinds)}", where
    if err.validator == "pattern":
        form = err.schema.get("description") or err.schema["pattern"]
        return f"{err.instance!r} is not in the expected form: {form}", where
    if err.validator == "type":
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        if "number" in wanted:
            wanted = [t for t in wanted if t != "integer"]      # every integer is a number
        kinds = " or ".join(dict.fromkeys(_YAML_TYPES.get(t, t) for t in wanted))
        # A mapping's description says what goes in it; a scalar's restates the field.
        described = f"; {err.schema['description']}" if "object" in wanted and err.schema.get("description") else ""
        return f"{err.instance!r} is not {kinds}{described}", where
    if err.validator == "enum":
        choices = err.validator_value
        return (f"{err.instance!r} is not one of {', '.join(map(str, choices))}"
                f"{did_you_mean(err.instance, choices)}", where)
    return err.message, where


# JSON Schema's types as a YAML author knows them.
_YAML_TYPES = {"object": "a mapping (key: value)", "array": "a list ([a, b], or lines starting with -)",
               "boolean": "true or false", "string": "text", "integer": "a whole number", "number": "a number"}


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """" (did you mean 'x'?)" naming the choice closest to a misspelt word, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys_allowed(node_schema: dict[str, Any], instance: Mapping[str, Any]) -> list[str]:
    """The keys a mapping may hold; for a source, only those of the kind it names (`if`/`then` rules)."""
    for rule in node_schema.get("allOf", ()):
        if all(k in instance for k in rule.get("if", {}).get("required", [None])):
            names = rule.get("then", {}).get("propertyNames", {}).get("enum")
            if names:
                return list(names)
    return list(node_schema.get("properties", {}))


def line_of(node: yaml.Node | None, where: list[Any]) -> int:
    """1-based line of the value at `where` in the node tree (or of its deepest existing parent)."""
    import yaml

    line = node.start_mark.line + 1 if node is not None else 0
    for key in where:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == key]
            if not match:
                break
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _source(path: Path, node: yaml.Node | None, src: dict[str, Any], root: Path,
            path_roots: list[Path]) -> Source:
    """The source mapping as a Source: its kind's key is the ref, its other keys are Source's fields by name
    (lists as tuples); a key the file leaves out takes Source's default."""
    kind = next(k for k in source_kinds() if k in src)        # the schema allows exactly one
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in src.items() if key != kind}
    subdir = Path(fields.get("subdir", ""))
    if subdir.is_absolute() or ".." in subdir.parts:
        raise SpecFileError(path, "subdir must be a relative folder inside the package",
                            field="source.subdir", line=line_of(node, ["source", "subdir"]))
    ref = str(_checked_path(path, node, src["path"], root, path_roots)) if kind == "path" else src[kind]
    return Source(kind, ref, **fields)


def _checked_path(path: Path, node: yaml.Node | None, value: str, root: Path,
                  path_roots: list[Path]) -> Path:
    """Resolve a `path:` source (following symlinks) and refuse one that escapes its allowed roots."""
    given = Path(value).expanduser()
    if given.is_absolute():
        target, allowed = given.resolve(), [r.expanduser().resolve() for r in path_roots]
        hint = f"absolute paths must lie under a configured path root ({', '.join(map(str, allowed))})"
    else:
        target, allowed = (path.parent / given).resolve(), [root.resolve()]
        hint = f"relative paths must stay inside the specs folder {allowed[0]}"
    if not any(target == r or target.is_relative_to(r) for r in allowed):
        raise SpecFileError(path, f"{value!r} resolves to {target}, outside the allowed roots: {hint}",
                            field="source.path", line=line_of(node, ["source", "path"]))
    return target

