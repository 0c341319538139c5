"""Hot reload as a user lives it: write, edit, break, fix, rename and delete spec files while the
daemon runs and requests are in flight, watching the event stream."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models import affine_spec, write_affine_weights, write_factory
from warm import Code, WarmdError
from watching import Events

APPLY_WITHIN_S = 1.5   # the promise is 1 s; slack for a loaded CI machine
X = np.ones((1, 4), np.float32)


def _y(client) -> float:  # type: ignore[no-untyped-def]
    return float(client.infer("a", {"x": X}).outputs["y"][0, 0])


def test_write_edit_break_fix_rename_delete(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    write_factory(specs)
    write_affine_weights(specs / "w1.safetensors", 1.0)
    write_affine_weights(specs / "w2.safetensors", 2.0)
    daemon = start_daemon(specs)
    client = daemon.client()
    events = Events(client)
    time.sleep(0.2)

    # write
    (specs / "a.yaml").write_text(affine_spec("w1.safetensors"))
    events.expect("catalog.added", "a")
    assert _y(client) == 1.0

    # editor droppings are not specs
    (specs / ".a.yaml.swp").write_text("junk: [")
    (specs / "a.yaml~").write_text("junk: [")
    (specs / "4913").write_text("")
    assert events.catalog_events_during(1.0) == []

    # edit: new weights, slow to load and slow to run; the old version serves until the new is ready
    (specs / "a.yaml").write_text(affine_spec("w2.safetensors", load_delay=2.0, delay=0.8))
    events.expect("catalog.changed", "a")
    assert _y(client) == 1.0
    events.expect("model.loaded", "a", timeout=30)
    assert _y(client) == 2.0

    # break: a half-written save is rejected and the working version keeps serving
    (specs / "a.yaml").write_text("provider: torch\nsource:\n  path: [w2.safet")
    rejected = events.expect("catalog.rejected", file="a.yaml")
    assert "a.yaml" in rejected.message and rejected.error_code == "spec_invalid"
    assert _y(client) == 2.0
    model = client.get("a")
    assert model.error_code == "spec_invalid" and "still serving the previous version" in model.error
    assert [r.file for r in client.list().rejected] == [str(specs / "a.yaml")]

    # fix: the same content as before the break; no reload needed, the error clears and the stream says so
    (specs / "a.yaml").write_text(affine_spec("w2.safetensors", load_delay=2.0, delay=0.8))
    cleared = events.expect("catalog.cleared", file="a.yaml")
    assert cleared.model == "a" and "accepted again" in cleared.message
    assert not client.list().rejected and not client.get("a").error
    assert _y(client) == 2.0

    # rename a spec without an explicit name: the model's name follows the file
    (specs / "b.yaml").write_text(affine_spec("w1.safetensors"))
    events.expect("catalog.added", "b")
    (specs / "b.yaml").rename(specs / "c.yaml")
    events.expect("catalog.removed", "b")
    assert "c" in [m.name for m in client.list().models]

    # delete with a request in flight: the request finishes, then the model unloads
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(_y(daemon.client())))
    worker.start()
    time.sleep(0.3)
    (specs / "a.yaml").unlink()
    events.expect("catalog.removed", "a")
    with pytest.raises(WarmdError) as info:
        _y(client)
    assert info.value.code is Code.MODEL_NOT_FOUND
    worker.join(timeout=10)
    assert results == [2.0]
    unloaded = events.expect("model.unloaded", "a", timeout=5)
    assert unloaded.reason == "spec_removed"
    client.close()
