"""Roles and profiles: role resolution with fallback and reasons, profile switches that load and release
models, and the active profile surviving a restart."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from models import affine_spec, affine_specs
from waiting import error_code, wait_until
from warm import Code, WarmdError
from warmd.v1 import warmd_pb2 as pb

KIB = 1024


def _setup(short_tmp: Path) -> tuple[Path, Path]:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "small.yaml").write_text(affine_spec("w.safetensors", extra=f"memory: {100 * KIB}\n"))
    (specs / "big.yaml").write_text(affine_spec("w.safetensors", extra=f"memory: {300 * KIB}\n"))
    (specs / "other.yaml").write_text(affine_spec("w.safetensors").replace("task: custom", "task: feature-extraction"))
    profiles = short_tmp / "profiles"
    profiles.mkdir()
    (profiles / "work.yaml").write_text(textwrap.dedent("""
        roles:
          embedder:
            prefer: [missing, other, big, small]
            task: custom
            max_memory: 200KiB
          helper:
            prefer: [big]
    """))
    (profiles / "gaming.yaml").write_text("roles:\n  embedder:\n    prefer: [small]\n")
    return specs, profiles


def test_role_resolution_profile_switch_and_restart(start_daemon, short_tmp: Path) -> None:
    specs, profiles = _setup(short_tmp)
    config = {"profiles_dir": str(profiles), "cpu_budget": f"{1024 * KIB}"}
    daemon = start_daemon(specs, config=config)
    with daemon.client() as c:
        choice = c.resolve_role("embedder", "work")
        assert choice.model == "small"
        assert [(p.model, p.reason) for p in choice.passed_over] == [
            ("missing", "not in the catalog"),
            ("other", "task feature-extraction, the role needs custom"),
            ("big", "needs 300.0 KiB, over the role's 200.0 KiB")]
        with pytest.raises(WarmdError) as info:
            c.resolve_role("nope", "work")
        assert info.value.code is Code.INVALID_ARGUMENT and "embedder" in info.value.message

        roles = {r.role: r.model for r in c.use_profile("work")}
        assert roles == {"embedder": "small", "helper": "big"}
        wait_until(lambda: sorted(m.name for m in c.status().resident) == ["big", "small"])
        c.use_profile("gaming")                                 # big was only work's: released
        wait_until(lambda: sorted(m.name for m in c.status().resident) == ["small"])
        with pytest.raises(WarmdError) as info:
            c.use_profile("nonexistent")
        assert info.value.code is Code.INVALID_ARGUMENT and "gaming, work" in info.value.message
    run = daemon.warm("infer", "--role", "embedder", "--input", "x=[[1,2,3,4]]", "--json")
    assert run.returncode == 0 and "role embedder -> small" in run.stderr
    assert json.loads(run.stdout)["outputs"]["y"]["data"] == [[1, 2, 3, 4]]
    daemon.terminate()

    again = start_daemon(specs, config=config, root=short_tmp)
    listing = json.loads(again.warm("profile", "list", "--json").stdout)
    assert listing["active"] == "gaming" and listing["profiles"] == ["gaming", "work"]
    assert listing["roles"] == [{"role": "embedder", "model": "small", "candidates": ["small"], "passed_over": [],
                                 "chosen": ""}]                        # --json has every field


def test_choosing_a_roles_model_loads_it_and_is_kept(start_daemon, short_tmp: Path) -> None:
    specs, profiles = _setup(short_tmp)
    (profiles / "default.yaml").write_text("roles:\n  embedder:\n    prefer: [small, other, big]\n")
    config = {"profiles_dir": str(profiles), "cpu_budget": f"{1024 * KIB}"}
    daemon = start_daemon(specs, config=config)
    with daemon.client() as c:
        assert c.resolve_role("embedder").model == "small"
        choice = c.choose_role("embedder", "big")
        assert (choice.model, choice.chosen, list(choice.candidates)) == ("big", "big", ["small", "other", "big"])
        wait_until(lambda: c.get("big").state == pb.READY)
        assert c.resolve_role("embedder").model == "big"
        with pytest.raises(WarmdError) as info:
            c.choose_role("embedder", "missing")
        assert info.value.code is Code.INVALID_ARGUMENT and "candidates: small, other, big" in info.value.message
        assert error_code(lambda: c.choose_role("nope", "big")) is Code.INVALID_ARGUMENT
    daemon.terminate()

    again = start_daemon(specs, config=config, root=short_tmp)
    shown = again.warm("profile", "list")
    assert "big (chosen)" in shown.stdout, shown.stdout
    cleared = json.loads(again.warm("profile", "choose", "embedder", "--json").stdout)
    assert cleared[0]["model"] == "small" and cleared[0]["chosen"] == ""
    assert again.warm("profile", "choose", "embedder", "nope").returncode != 0



def test_a_pinned_model_leaves_no_room_and_the_role_falls_back(start_daemon, short_tmp: Path) -> None:
    specs, profiles = _setup(short_tmp)
    (profiles / "tight.yaml").write_text("roles:\n  any:\n    prefer: [big, small]\n")
    daemon = start_daemon(specs, config={"profiles_dir": str(profiles), "cpu_budget": f"{400 * KIB}"})
    (specs / "pinned.yaml").write_text(affine_spec("w.safetensors", extra=f"memory: {200 * KIB}\npin: true\n"))
    with daemon.client() as c:
        wait_until(lambda: "pinned" in {m.name for m in c.list().models})
        c.load("pinned")
        choice = c.resolve_role("any", "tight")
        assert choice.model == "small" and "more than its device can make room for" in choice.passed_over[0].reason
