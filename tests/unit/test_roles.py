"""Profile files: a key a profile does not know is an error naming the nearest known one, never ignored."""
from __future__ import annotations

from pathlib import Path

import pytest

from warmd.errors import Code, WarmdError
from warmd.roles import Profiles


def _roles(tmp_path: Path, text: str) -> dict:
    (tmp_path / "work.yaml").write_text(text)
    profiles = Profiles(tmp_path, tmp_path / "active", tmp_path / "picks.json", None, None, None)  # type: ignore[arg-type]
    return profiles.roles("work")


def test_a_profile_reads_its_roles(tmp_path: Path) -> None:
    roles = _roles(tmp_path, "roles:\n  embedder:\n    prefer: [a, b]\n    task: custom\n    max_memory: 1KiB\n")
    assert roles == {"embedder": {"prefer": ["a", "b"], "task": "custom", "max_memory": 1024}}


@pytest.mark.parametrize("text, message", [
    ("role:\n  embedder:\n    prefer: [a]\n", "unknown key 'role' at the top level (did you mean 'roles'?); known: roles"),
    ("roles:\n  embedder:\n    prefer: [a]\n    max_mem: 1GiB\n",
     "unknown key 'max_mem' in role 'embedder' (did you mean 'max_memory'?); known: prefer, task, max_memory, "
     "endpoint"),
])
def test_an_unknown_key_names_the_nearest_one(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(WarmdError) as info:
        _roles(tmp_path, text)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == f"{tmp_path / 'work.yaml'}: {message}"
