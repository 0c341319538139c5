"""What is installed from git: `<plugins_dir>/<name>/plugin.json`, beside the checkouts it names.

Layout of one installed plugin:
    <plugins_dir>/<name>/plugin.json        this record (written by the daemon, atomically)
    <plugins_dir>/<name>/<commit>/          the repository at that commit (without .git)
    <plugins_dir>/<name>/<commit>.venv/     its requirements, when its manifest has any
The previous commit's folders stay until the next update (a model still draining may run from them).
The plugins scanner (plugins.py) registers a runner-backed provider for every record; it never imports
the code.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmd import paths
from warmd.adapters.environment import Environment

RECORD = "plugin.json"


@dataclass
class Record:
    name: str
    source: str                 # as the user gave it: git+URL[@REV] or a local path
    url: str                    # what git clones
    rev: str                    # the revision asked for; "" = the default branch
    commit: str                 # the commit it runs
    provider: str               # the provider's name, as its gate reported it
    batchable: bool
    adapter: str                # the adapter file, relative to the checkout
    class_name: str             # "" = the one Provider subclass it defines
    venv: bool                  # whether <commit>.venv holds requirements
    specs: list[str]            # the spec files it wrote into the specs folder (file names)
    gate: dict[str, Any]        # the gate's last verdict (a failed update's too)
    installed: float = field(default_factory=time.time)
    previous: str = ""          # the commit before the last update
    drafted: list[str] = field(default_factory=list)   # files a coder drafted (`--draft`), added to each commit
    folder: Path = field(default=Path(), compare=False)   # <plugins_dir>/<name>; not stored

    def code_dir(self, commit: str = "") -> Path:
        return self.folder / (commit or self.commit)

    def venv_dir(self, commit: str = "") -> Path:
        return self.folder / f"{commit or self.commit}.venv"

    def target(self) -> dict[str, Any]:
        """What a runner imports (see warmd.runner.child)."""
        code = self.code_dir()
        return {"adapter": str(code / self.adapter), "class": self.class_name, "paths": [str(code)],
                "site": [str(Environment(self.venv_dir()).site_packages)] if self.venv else []}

    def write(self) -> None:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "folder"}
        paths.write_atomic(self.folder / RECORD, json.dumps(data, indent=2) + "\n")


def read(folder: Path) -> Record:
    """The record of the plugin installed in `folder`.

    Raises:
        ValueError: a record that is missing, not JSON, or lacks a field (the message says which).
    """
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {folder / RECORD}: {exc}") from None
    names = {f.name for f in dataclasses.fields(Record)} - {"folder"}
    if not isinstance(data, dict) or set(data) - names or not {"name", "commit", "provider", "adapter"} <= set(data):
        raise ValueError(f"{folder / RECORD} is not an install record (fields: {', '.join(sorted(names))})")
    record = Record(**data, folder=folder)
    if not record.code_dir().is_dir():
        raise ValueError(f"{record.code_dir()} is missing: reinstall it (warm plugins rm {record.name}, then warm add)")
    return record


def is_installed(folder: Path) -> bool:
    return (folder / RECORD).is_file()
