"""Residency through the real daemon: a CPU budget, LRU eviction, pins and insufficient_memory,
visible in `warm ps`, `warm status` and on the watch stream."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
