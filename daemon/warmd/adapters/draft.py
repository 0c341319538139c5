"""A drafted adapter (`warm add git+URL --draft`): what the coder is told, what of its answer is taken, how
the draft is shown and kept. The attempts themselves — each one gated by the real gate — are install.py's.

Rules:
- the prompt says the provider contract (providers/base.py's and manifest.py's own docstrings, the spec's
  essentials and a worked example), then the repository: its README, its files (path and size) and its
  likely entry points (Python files that run, predict or define models), each part bounded, so that the
  prompt stays within PROMPT_CHARS whatever the repository;
- the answer is files, each a `FILE: path` line followed by one fenced block. Only new files inside the
  repository are taken (at most MAX_FILES, each at most MAX_FILE_BYTES of UTF-8 text); what is left out is
  said back to the coder with the gate's verdict;
- the gate's feedback carries the failed step, its message and the last lines of its output (bounded);
- a draft is kept in `<plugins_dir>/.drafts/<name>.json`: the source, the pinned commit, its files, the
  gate's verdict and the diff; `--accept` takes only a draft whose gate passed, and gates it again;
- the diff is unified, against the repository (every file of a draft is new: from /dev/null).
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from warmd import paths
from warmd.adapters import manifest
from warmd.adapters.gate import Verdict
from warmd.errors import Code, WarmdError
from warmd.providers import base

DRAFTS = ".drafts"
MAX_FILES = 8
MAX_FILE_BYTES = 64 * 1024
PROMPT_CHARS = 40_000           # README, the listing and entry points together, over the contract
README_CHARS = 8_000
LISTING_ENTRIES = 150
ENTRY_POINT_CHARS = 4_000       # per file
FEEDBACK_CHARS = 3_000          # the gate's output lines said back
_FILE = re.compile(r"^FILE:\s*`?([^\s`]+)`?\s*\n```[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_ENTRY_HINTS = re.compile(r"__main__|def (predict|infer|inference|forward|run|main)\b|class \w*(Model|Net|Pipeline)\b|"
                          r"from_pretrained|torch\.load|onnxruntime|load_state_dict")
_ENTRY_NAMES = ("predict", "infer", "inference", "model", "demo", "app", "main", "run", "hubconf", "pipeline")

SYSTEM = ("You write adapters that let warmd, a local model daemon, serve the model of a git repository. You "
          "answer with files only, each as a line `FILE: <path relative to the repository>` followed by one "
          "fenced code block with the file's whole content. Write a warmd-plugin.yaml manifest, an adapter "
          "module with one Provider subclass, and at least one example spec whose `source: {path: ...}` is a "
          "file of the repository. Do not change the repository's own files.")

SPEC_NOTES = """\
An example spec (YAML) names the provider, a `source: {path: FILE}` inside the repository (relative to the
spec file), and the tensors: `inputs:` and `outputs:` as lists of {name, dtype, shape} with Open Inference
Protocol dtypes (FP32, FP16, INT64, INT32, UINT8, BOOL, BYTES...) and -1 for any size. The gate loads the
spec, runs the manifest example's input and checks that the outputs are exactly the declared ones.
`self.files` is the resolved source path; `request.tensors` are numpy arrays; return
`InferResult(tensors={name: numpy array})`. Import heavy libraries inside load(), not at the top."""

EXAMPLE = '''\
FILE: warmd-plugin.yaml
```yaml
name: scale
provider: warmd_adapter.py:Scale
examples:
  - spec: warmd-scale.yaml
    inputs:
      x: {dtype: FP32, data: [[1, 2, 3]]}
```
FILE: warmd-scale.yaml
```yaml
provider: scale
device: cpu
source: {path: factor.json}
inputs: [{name: x, dtype: FP32, shape: [-1, 3]}]
outputs: [{name: y, dtype: FP32, shape: [-1, 3]}]
```
FILE: warmd_adapter.py
```python
import json

import numpy as np

from warmd.providers import InferResult, Provider


class Scale(Provider):
    name = "scale"

    def load(self):
        self.factor = json.loads(self.files.read_text())["factor"]
        return 8

    def infer(self, request):
        return InferResult(tensors={"y": (request.tensors["x"] * self.factor).astype(np.float32)})

    def unload(self):
        self.factor = None
```'''


@dataclass
class Draft:
    """One attempt's files (path -> text), what was left out of the answer and why, and the gate's verdict."""

    files: dict[str, str]
    refused: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    attempt: int = 0

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed

    def diff(self) -> str:
        """The draft as a unified diff against the repository."""
        return "".join(line for path, text in sorted(self.files.items()) for line in difflib.unified_diff(
            [], text.splitlines(keepends=True), "/dev/null", f"b/{path}"))


def prompt(folder: Path, name: str) -> str:
    """The first request to the coder: the contract, then the repository in `folder`, for plugin `name`."""
    contract = "\n\n".join((
        "# The provider contract (warmd/providers/base.py)", base.__doc__ or "",
        "# The manifest (warmd-plugin.yaml)", manifest.__doc__ or "", "# Example specs", SPEC_NOTES,
        "# A complete answer for a repository that holds factor.json", EXAMPLE))
    repository = _bounded([("README", _readme(folder)), ("Files", _listing(folder)),
                           ("Likely entry points", _entry_points(folder))], PROMPT_CHARS)
    return (f"{contract}\n\n# The repository (plugin name: {name})\n\n{repository}\n\n"
            f"Write the adapter, the manifest (name: {name}) and an example spec for this repository's model.")


def feedback(draft: Draft) -> str:
    """What the coder is told after a refused attempt."""
    verdict = draft.verdict
    said = [f"The gate refused this draft at step {verdict.step!r}: {verdict.message}" if verdict else ""]
    if verdict is not None and verdict.output:
        said.append(f"Its output ended with:\n{verdict.output[-FEEDBACK_CHARS:]}")
    said += [f"Not taken from your answer: {why}" for why in draft.refused]
    said.append("Answer again with every file, whole, in the same format (FILE: path, then one fenced block).")
    return "\n\n".join(s for s in said if s)


def parse(answer: str, folder: Path) -> Draft:
    """The files of the coder's `answer` that may be written into the repository in `folder`."""
    draft = Draft({})
    found = _FILE.findall(answer)
    if not found:
        draft.refused.append("no files: write each one as `FILE: path` followed by one fenced code block")
    for path, text in found:
        why = _refusal(path, text, folder, draft.files)
        if why:
            draft.refused.append(f"{path}: {why}")
        else:
            draft.files[path] = text if text.endswith("\n") else text + "\n"
    return draft


def write(draft: Draft, folder: Path) -> None:
    """Put the draft's files into the repository in `folder`."""
    for path, text in draft.files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _refusal(path: str, text: str, folder: Path, taken: dict[str, str]) -> str:
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or not parts or parts[0] == ".git":
        return "a path must be relative and inside the repository"
    if path in taken:
        return "given twice (the first is taken)"
    if len(taken) >= MAX_FILES:
        return f"more than {MAX_FILES} files"
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        return f"over {MAX_FILE_BYTES // 1024} KiB"
    target = folder / path
    if target.exists() or target.is_symlink() or not target.resolve().is_relative_to(folder.resolve()):
        return "the repository has this file already; a draft only adds files"
    return ""


# ---- kept drafts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kept:
    """A draft as `--draft` left it for `--accept`."""

    source: str          # as the user gave it
    url: str
    commit: str          # the commit it was drafted and gated for
    coder: str
    files: dict[str, str]
    passed: bool
    step: str
    message: str
    diff: str


def keep(plugins_dir: Path, name: str, kept: Kept) -> Path:
    """Save `kept` as plugin `name`'s draft (replacing an older one). Returns the file."""
    path = plugins_dir / DRAFTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(path, json.dumps(asdict(kept), indent=1) + "\n")
    return path


def kept(plugins_dir: Path, name: str, url: str) -> Kept:
    """Plugin `name`'s kept draft of the repository at `url`.

    Raises:
        WarmdError: `invalid_argument` when there is none (or it is of another repository), or it did not
            pass the gate: nothing untested is installed.
    """
    path = plugins_dir / DRAFTS / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        found = Kept(**data)
    except (OSError, ValueError, TypeError):
        raise WarmdError(Code.INVALID_ARGUMENT, f"no draft of {name!r} to accept; `warm add {url} --draft` "
                         "makes one") from None
    if found.url != url:
        raise WarmdError(Code.INVALID_ARGUMENT, f"the draft of {name!r} is of {found.url}, not {url}; "
                         f"`warm add {url} --draft` makes one")
    if not found.passed:
        raise WarmdError(Code.INVALID_ARGUMENT, f"the draft of {name!r} failed the gate at step {found.step!r} "
                         f"({found.message}); nothing untested is installed: `warm add {url} --draft` again")
    return found


# ---- the repository, bounded ---------------------------------------------------------------------
def _readme(folder: Path) -> str:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().startswith("readme"))
    return _text(found[0], README_CHARS) if found else "(no README)"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts)


def _listing(folder: Path) -> str:
    files = _files(folder)
    lines = [f"{p.relative_to(folder)}  ({p.stat().st_size} bytes)" for p in files[:LISTING_ENTRIES]]
    if len(files) > LISTING_ENTRIES:
        lines.append(f"... and {len(files) - LISTING_ENTRIES} more")
    return "\n".join(lines) or "(empty)"


def _entry_points(folder: Path) -> str:
    """Python files most likely to show how the model is loaded and run, most likely first."""
    def rank(path: Path) -> tuple[int, int, str]:
        text = _text(path, ENTRY_POINT_CHARS)
        named = any(hint in path.stem.lower() for hint in _ENTRY_NAMES)
        return (-(len(_ENTRY_HINTS.findall(text)) + 3 * named), len(path.relative_to(folder).parts), str(path))

    python = sorted((p for p in _files(folder) if p.suffix == ".py"), key=rank)
    project = [p for p in (folder / "pyproject.toml", folder / "setup.py", folder / "requirements.txt") if p.is_file()]
    shown = [f"## {p.relative_to(folder)}\n{_text(p, ENTRY_POINT_CHARS)}" for p in project + python]
    return "\n\n".join(shown) or "(none)"


def _text(path: Path, limit: int) -> str:
    try:
        text = path.read_bytes()[:limit * 4].decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else text[:limit] + "\n[... cut]"


def _bounded(parts: list[tuple[str, str]], limit: int) -> str:
    """Sections in order, each cut to what is left of `limit`."""
    out, left = [], limit
    for title, text in parts:
        text = text if len(text) <= left else text[:max(left, 0)] + "\n[... cut]"
        left -= len(text)
        out.append(f"## {title}\n{text}")
    return "\n\n".join(out)
