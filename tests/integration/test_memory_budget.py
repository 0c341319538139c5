"""Residency through the real daemon: a CPU budget, LRU eviction, pins and insufficient_memory,
visible in `warm ps`, `warm status` and on the watch stream."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import affine_spec, affine_specs

KIB = 1024
X = np.ones((1, 4), np.float32)


def test_cpu_budget_evicts_lru_and_pins_hold(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    for name in ("a", "b", "c"):
        # `memory` overrides the estimate: each counts as 150 KiB against a 400 KiB budget
        (specs / f"{name}.yaml").write_text(affine_spec("w.safetensors", extra=f"memory: {150 * KIB}\n"))
    daemon = start_daemon(specs, config={"cpu_budget": f"{400 * KIB}"})
    with daemon.client() as c:
        events = c.watch(kinds=["model.unloaded"])
        c.infer("a", {"x": X})
        c.infer("b", {"x": X})
        c.infer("a", {"x": X})              # b is now the least recently used
        c.infer("c", {"x": X})              # 450 KiB > 400 KiB: b goes
        event = next(events)
        assert (event.model, event.reason) == ("b", "evicted")
        assert sorted(m.name for m in c.status().resident) == ["a", "c"]

        assert daemon.warm("pin", "a").returncode == 0
        assert daemon.warm("pin", "c").returncode == 0
        result = daemon.warm("load", "b")
        assert result.returncode == 1 and "[insufficient_memory]" in result.stderr
        assert "pinned: a (150.0 KiB), c (150.0 KiB)" in result.stderr

        ps = {m["name"]: m["residency"] for m in json.loads(daemon.warm("ps", "--json").stdout)}
        assert ps["a"]["pinned"] and ps["a"]["tier"] == "cpu" and int(ps["a"]["measured_bytes"]) == 80
        status = json.loads(daemon.warm("status", "--json").stdout)
        [cpu] = [d for d in status["devices"] if d["name"] == "cpu"]
        assert int(cpu["budget"]) == 400 * KIB and int(cpu["used"]) == 300 * KIB   # `memory` of a and c

        assert daemon.warm("unpin", "c").returncode == 0
        assert c.get("a").pin and not c.get("c").pin       # the model shows the pin in force, not the spec's
        c.infer("b", {"x": X})              # c is unpinned and idle now: it makes room
        assert sorted(m.name for m in c.status().resident) == ["a", "b"]


@pytest.mark.parametrize("eviction, victim", [("cost", "fast"), ("lru", "slow")])
def test_dry_run_and_history_show_what_the_policy_decides(start_daemon, short_tmp: Path, eviction: str,
                                                          victim: str) -> None:
    specs = affine_specs(short_tmp, 1.0)
    memory = f"memory: {150 * KIB}\n"
    (specs / "slow.yaml").write_text(affine_spec("w.safetensors", load_delay=0.5, extra=memory))
    for name in ("fast", "c"):
        (specs / f"{name}.yaml").write_text(affine_spec("w.safetensors", extra=memory))
    daemon = start_daemon(specs, config={"cpu_budget": f"{400 * KIB}", "eviction": eviction})
    with daemon.client() as c:
        c.infer("slow", {"x": X})          # the least recently used, but 0.5 s to build again
        c.infer("fast", {"x": X})
        shown = daemon.warm("load", "c", "--dry-run")
        assert shown.returncode == 0 and f"unload {victim} (150.0 KiB)" in shown.stdout, shown.stdout
        plan = json.loads(daemon.warm("load", "c", "--dry-run", "--json").stdout)
        assert (plan["action"], plan["device"], plan["policy"]) == ("load", "cpu", eviction)
        assert [(e["action"], e["model"], e["for_model"]) for e in plan["evictions"]] == [("unload", victim, "c")]
        assert sorted(m.name for m in c.status().resident) == ["fast", "slow"]      # the dry run did nothing
        assert json.loads(daemon.warm("ps", "--history", "--json").stdout) == []

        events = c.watch(kinds=["model.unloaded"])
        c.infer("c", {"x": X})
        event = next(events)
        assert (event.model, event.reason, event.eviction.for_model) == (victim, "evicted", "c")
        [entry] = json.loads(daemon.warm("ps", "--history", "--json").stdout)
        assert (entry["model"], entry["action"], entry["reason"], entry["policy"]) == (victim, "unload", "evicted",
                                                                                       eviction)
        assert entry["back_measured"] and entry["message"] == event.eviction.message
        assert (float(entry["back_s"]) >= 0.5) == (victim == "slow")            # measured load durations
        table = daemon.warm("ps", "--history").stdout
        assert victim in table and "evicted" in table


def test_max_keep_alive_caps_what_a_client_asks_and_pins_win(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    (specs / "p.yaml").write_text(affine_spec("w.safetensors", extra="pin: true\n"))
    daemon = start_daemon(specs, config={"max_keep_alive": "2s"})
    with daemon.client() as c:
        events = c.watch(kinds=["model.unloaded"])
        assert daemon.warm("load", "p", "--keep-alive", "0").returncode == 0
        assert not c.get("p").residency.expires_at          # pinned: never
        a = c.load("a", keep_alive=-1).residency            # forever, asks the client; 2 s, says the daemon
        assert a.expires_at - a.last_used == pytest.approx(2.0)
        event = next(events)
        assert (event.model, event.reason) == ("a", "keep_alive")
        assert [e["reason"] for e in json.loads(daemon.warm("ps", "--history", "--json").stdout)] == ["keep_alive"]
        assert [m.name for m in c.status().resident] == ["p"]
