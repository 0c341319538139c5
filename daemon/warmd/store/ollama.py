"""Ollama's model store, read in place: the models `ollama pull` left on this machine, no Ollama process needed.

Layout (`$OLLAMA_MODELS`, default `~/.ollama/models`):
  manifests/<registry>/<namespace>/<name>/<tag>   JSON: layers with mediaType, digest ("sha256:<hex>"), size
  blobs/sha256-<hex>                              the layer's bytes, named by their sha256
`NAME[:TAG]` means registry.ollama.ai/library/NAME:TAG (tag `latest`); `ns/NAME` and `host/ns/NAME` name
other namespaces and registries.

Rules held here:
- the model layer (application/vnd.ollama.image.model) is served from its blob, never copied;
- its sha256 is checked against its name before it is used (the store's verify: once per size and mtime);
- the template, system and params layers become the spec's defaults (the spec's own options win); the
  template is Ollama's Go template, translated to Jinja (warmd.gotemplate);
- warmd never writes into Ollama's store.
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmd.errors import Code, WarmdError
from warmd.spec import Source

MEDIA = "application/vnd.ollama.image."
DEFAULT_REGISTRY, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Ollama's PARAMETER names -> the chat request's (load-time ones are taken apart in Defaults)
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
             "repeat_penalty": "repeat_penalty", "seed": "seed", "stop": "stop", "num_predict": "max_tokens"}


@dataclass(frozen=True)
class Name:
    registry: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "Name":
        """`llama3.2:1b`, `ns/name:tag`, `host/ns/name:tag` (tag default `latest`).

        Raises:
            WarmdError: `invalid_argument` for anything else.
        """
        path, _, tag = text.strip().partition(":")
        parts = path.split("/")
        if len(parts) > 3 or not all(_PART.match(p) for p in parts) or (tag and not _PART.match(tag)):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{text!r} is not an Ollama model name (NAME[:TAG], e.g. "
                             "llama3.2:1b)")
        registry, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
        if len(parts) == 3:
            registry, namespace = parts[0], parts[1]
        elif len(parts) == 2:
            namespace = parts[0]
        return cls(registry, namespace, parts[-1], tag or DEFAULT_TAG)

    def __str__(self) -> str:
        """The short form `ollama list` shows."""
        prefix = "" if self.registry == DEFAULT_REGISTRY else f"{self.registry}/"
        if prefix or self.namespace != DEFAULT_NAMESPACE:
            prefix += f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    def manifest(self, root: Path) -> Path:
        return root / "manifests" / self.registry / self.namespace / self.model / self.tag


@dataclass(frozen=True)
class Defaults:
    """What the model's other layers say: a chat template (Jinja), sampling parameters, load settings."""

    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)    # chat request names (warmd.chat)
    n_ctx: int | None = None                                     # num_ctx


@dataclass(frozen=True)
class Model:
    name: Name
    blob: Path
    sha256: str
    size: int
    layers: dict[str, str]              # media type suffix -> digest of the other layers


def root() -> Path:
    """Ollama's store: $OLLAMA_MODELS or ~/.ollama/models."""
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def model(src: Source) -> Model:
    """The model layer of an `ollama:` source.

    Raises:
        WarmdError: `weights_missing` when the manifest or the blob is not there, `spec_invalid` when the
            manifest has no model layer or cannot be read.
    """
    name = Name.parse(src.ref)
    path = name.manifest(root())
    try:
        manifest = json.loads(path.read_text())
        layers = {layer["mediaType"].removeprefix(MEDIA): layer for layer in manifest["layers"]}
    except FileNotFoundError:
        raise WarmdError(Code.WEIGHTS_MISSING, f"Ollama has no model {name} in {root()} (no {path}); "
                         f"`ollama pull {name}`, or set OLLAMA_MODELS for the daemon") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WarmdError(Code.SPEC_INVALID, f"Ollama's manifest {path} cannot be read: {exc}") from None
    layer = layers.get("model")
    if layer is None:
        raise WarmdError(Code.SPEC_INVALID, f"Ollama's manifest {path} has no model layer ({MEDIA}model)")
    blob, sha256 = blob_path(layer["digest"])
    if not blob.is_file():
        raise WarmdError(Code.WEIGHTS_MISSING, f"Ollama's blob {blob} for {name} is missing; `ollama pull {name}`")
    return Model(name, blob, sha256, int(layer.get("size", 0)),
                 {kind: l["digest"] for kind, l in layers.items() if kind != "model"})


def blob_path(digest: str) -> tuple[Path, str]:
    """(the blob's path, its sha256 hex) for a digest `sha256:<hex>`.

    Raises:
        WarmdError: `spec_invalid` for a digest of another form (it could name a path outside the store).
    """
    match = _DIGEST.match(str(digest))
    if match is None:
        raise WarmdError(Code.SPEC_INVALID, f"Ollama digest {digest!r} is not sha256:<64 hex digits>")
    return root() / "blobs" / f"sha256-{match.group(1)}", match.group(1)


def defaults(src: Source) -> Defaults:
    """The template, system prompt and parameters of an `ollama:` source (cached per manifest).

    Raises:
        WarmdError: as `model`; `spec_invalid` when the template cannot be translated.
    """
    m = model(src)
    return _defaults(tuple(sorted(m.layers.items())), root())


@functools.lru_cache(maxsize=64)
def _defaults(layers: tuple[tuple[str, str], ...], store: Path) -> Defaults:
    from warmd import gotemplate

    found = dict(layers)
    texts = {}
    for kind in ("template", "system", "params"):
        if kind in found:
            path, _ = blob_path(found[kind])
            texts[kind] = path.read_text(encoding="utf-8") if path.is_file() else ""
    params = json.loads(texts["params"]) if texts.get("params") else {}
    sampling = {ours: params[theirs] for theirs, ours in _SAMPLING.items() if theirs in params}
    template = gotemplate.to_jinja(texts["template"], system=texts.get("system", "")) if texts.get("template") else ""
    return Defaults(template=template, system=texts.get("system", ""), parameters=sampling,
                    n_ctx=int(params["num_ctx"]) if "num_ctx" in params else None)


def discover(named: set[str]) -> list[dict]:
    """Models in Ollama's store that no spec names: name, size of the model layer, manifest path."""
    base = root() / "manifests"
    found = []
    for path in sorted(base.glob("*/*/*/*")) if base.is_dir() else []:
        registry, namespace, name, tag = path.relative_to(base).parts
        try:
            short = Name.parse(f"{registry}/{namespace}/{name}:{tag}")
            layers = json.loads(path.read_text())["layers"]
            size = sum(int(l.get("size", 0)) for l in layers if l.get("mediaType") == MEDIA + "model")
        except (WarmdError, OSError, ValueError, KeyError, TypeError):
            continue            # not a model manifest (or a half-written one): not listed
        if str(short) not in named and size:
            found.append({"repo_id": str(short), "size_on_disk": size, "path": str(path), "source": "ollama"})
    return found


def suggest_spec(text: str) -> dict:
    """A spec body for `warm add ollama://NAME[:TAG]`: the llama-cpp provider, chat, the model read in place.

    Raises:
        WarmdError: as `model` (the model must be in the store).
    """
    m = model(Source("ollama", text))
    return {"description": f"{m.name} from Ollama's store", "task": "chat", "tags": ["ollama"],
            "source": {"ollama": str(m.name)}, "provider": "llama-cpp"}
