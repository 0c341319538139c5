"""The catalog as a user meets it: rejected files that get fixed or deleted, a model serving its
previous version, a specs folder that is not there, local files (weights, factory module) edited
under a served model, and a restart that takes from the last start only the files that passed unchanged."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import isolated_env
from models import FACTORY, affine_spec, write_affine_weights, write_factory
from waiting import wait_until
from watching import Events

X = np.ones((1, 4), np.float32)
WATCHED_WITHIN_S = 3.0   # under the 5 s safety rescan: only a watch sees a change this soon


def _specs(root: Path, scale: float = 1.0) -> Path:
    specs = root / "specs"
    specs.mkdir()
    write_factory(specs)
    write_affine_weights(specs / "w.safetensors", scale)
    return specs


def _y(client) -> float:  # type: ignore[no-untyped-def]
    return float(client.infer("a", {"x": X}).outputs["y"][0, 0])


def test_watch_says_when_a_rejected_file_is_fixed_or_deleted(start_daemon, short_tmp: Path) -> None:
    specs = _specs(short_tmp)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    with daemon.client() as c:
        events = Events(c)

        # a file that never held a valid spec, then fixed: the model is added and the rejection cleared
        (specs / "b.yaml").write_text("provider: torch\nsource: {path: w.safetensors\n")
        events.expect("catalog.rejected", file="b.yaml")
        (specs / "b.yaml").write_text(affine_spec("w.safetensors"))
        added = events.expect("catalog.added", "b")
        assert added.file == str(specs / "b.yaml")
        cleared = events.expect("catalog.cleared", file="b.yaml")
        assert (cleared.model, cleared.message) == ("b", "accepted again: defines 'b'")

        # a valid file broken, then saved back as it was: nothing changed, but the rejection is over
        good = (specs / "a.yaml").read_text()
        (specs / "a.yaml").write_text(good + "keep_alvie: 5m\n")
        events.expect("catalog.rejected", file="a.yaml")
        (specs / "a.yaml").write_text(good)
        cleared = events.expect("catalog.cleared", file="a.yaml")
        assert cleared.model == "a"

        # a rejected file deleted
        (specs / "c.yaml").write_text("")
        rejected = events.expect("catalog.rejected", file="c.yaml")
        assert "empty file" in rejected.message
        (specs / "c.yaml").unlink()
        cleared = events.expect("catalog.cleared", file="c.yaml")
        assert (cleared.model, cleared.message) == ("", "deleted")
        assert not c.list().rejected


def test_ls_marks_a_model_serving_its_previous_version(start_daemon, short_tmp: Path) -> None:
    specs = _specs(short_tmp)
    write_affine_weights(specs / "wide.safetensors", 1.0, width=8)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    with daemon.client() as c:
        assert _y(c) == 1.0

        # the edit is rejected: the previous version serves, and `warm ls` says so
        (specs / "a.yaml").write_text(affine_spec("w.safetensors") + "keep_alvie: 5m\n")
        wait_until(lambda: c.list().rejected, timeout=15)
        ls = daemon.warm("ls")
        assert ls.returncode == 0, ls.stderr
        row = next(line for line in ls.stdout.splitlines() if line.split()[:1] == ["a"])
        assert "ready [spec_invalid]" in row
        assert f"a: still serving the previous version; the latest edit of {specs / 'a.yaml'} was rejected" in ls.stdout
        [model] = json.loads(daemon.warm("ls", "--json").stdout)["models"]
        assert (model["state"], model["error_code"]) == ("READY", "spec_invalid")
        assert "still serving the previous version" in model["error"] and "keep_alvie" in model["error"]
        assert _y(c) == 1.0

        # a valid edit whose load fails (weights of another shape): the previous version serves too
        (specs / "a.yaml").write_text(affine_spec("wide.safetensors"))
        wait_until(lambda: c.get("a").error_code == "provider_failed", timeout=30)
        ls = daemon.warm("ls")
        row = next(line for line in ls.stdout.splitlines() if line.split()[:1] == ["a"])
        assert "ready [provider_failed]" in row
        assert "a: the load of its new version failed, still serving the previous version: " in ls.stdout
        assert _y(c) == 1.0


def test_a_specs_folder_that_does_not_exist_is_refused_at_start(short_tmp: Path) -> None:
    missing, sock = short_tmp / "speks", short_tmp / "run" / "warmd.sock"
    result = subprocess.run([sys.executable, "-m", "warmd", "serve", "--specs", str(missing), "--socket", str(sock)],
                            env=isolated_env(short_tmp), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"warmd: error: invalid_argument: the specs folder {missing} does not exist; create it (mkdir -p {missing}) "
        "or pass --specs with the folder that holds your spec files"]
    assert not missing.exists() and not sock.exists()


def test_the_default_specs_folder_is_made_on_first_start(short_tmp: Path) -> None:
    env = isolated_env(short_tmp)
    default = short_tmp / "config" / "warmd" / "specs"
    sock = short_tmp / "run" / "warmd.sock"
    proc = subprocess.Popen([sys.executable, "-m", "warmd", "serve", "--socket", str(sock)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from warm import Client

        wait_until(sock.exists, timeout=30)
        with Client(sock, timeout=10) as c:
            wait_until(lambda: c.status().specs_dir == str(default), timeout=10)
            assert not c.list().rejected and c.status().rejected == 0
        assert default.is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_specs_folder_lost_while_serving_is_reported_by_ls_and_status_alike(start_daemon, short_tmp: Path) -> None:
    specs = _specs(short_tmp)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    aside = short_tmp / "specs.aside"
    with daemon.client() as c:
        events = Events(c)
        specs.rename(aside)
        rejected = events.expect("catalog.rejected", file=str(specs), timeout=15)
        assert "the specs folder cannot be read" in rejected.message
        [entry] = c.list().rejected
        assert entry.file == str(specs) and c.status().rejected == 1
        status = daemon.warm("status")
        assert status.returncode == 0 and "1 rejected" in status.stdout
        aside.rename(specs)
        cleared = events.expect("catalog.cleared", file=str(specs), timeout=15)
        assert cleared.message == "the specs folder can be read again"
        assert c.status().rejected == 0 and _y(c) == 1.0


def test_editing_a_served_models_weights_or_factory_reloads_it(start_daemon, short_tmp: Path) -> None:
    specs = _specs(short_tmp)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors", load_delay=3.0))     # a reload takes 3 s
    daemon = start_daemon(specs)
    with daemon.client() as c:
        first = c.infer("a", {"x": X})
        assert first.outputs["y"][0, 0] == 1.0 and c.get("a").signature == first.signature.signature
        events = Events(c)

        # the weights file rewritten in place: a new version, loaded without being asked
        write_affine_weights(specs / "w.safetensors", 3.0)
        changed = events.expect("catalog.changed", "a", timeout=WATCHED_WITHIN_S)
        assert changed.message.startswith("local files changed")
        assert _y(c) == 1.0                                 # the old version serves while the new one loads
        events.expect("model.loaded", "a", timeout=30)
        second = c.infer("a", {"x": X})
        assert second.outputs["y"][0, 0] == 3.0
        assert second.signature.signature != first.signature.signature == first.signature.signature
        assert c.get("a").signature == second.signature.signature

        # the factory module edited: the same
        (specs / "testmodels.py").write_text(FACTORY.replace("return self.lin(x)", "return self.lin(x) * 10"))
        events.expect("catalog.changed", "a", timeout=WATCHED_WITHIN_S)
        events.expect("model.loaded", "a", timeout=30)
        third = c.infer("a", {"x": X})
        assert third.outputs["y"][0, 0] == 30.0 and third.signature.signature != second.signature.signature


def test_a_folder_source_outside_the_specs_folder_is_watched_too(start_daemon, short_tmp: Path) -> None:
    specs = _specs(short_tmp)
    model = short_tmp / "models" / "affine"
    model.mkdir(parents=True)
    write_affine_weights(model / "model.safetensors", 1.0)
    (specs / "a.yaml").write_text(affine_spec(str(model)))
    daemon = start_daemon(specs, config={"path_roots": [str(short_tmp / "models")]})
    with daemon.client() as c:
        before = c.infer("a", {"x": X})
        assert before.outputs["y"][0, 0] == 1.0
        events = Events(c)
        (model / ".cache").mkdir()                     # not a model file: no new version
        (model / ".cache" / "x").write_text("scratch")
        assert events.catalog_events_during(1.5) == []
        time.sleep(0.01)
        write_affine_weights(model / "model.safetensors.tmp", 2.0)
        (model / "model.safetensors.tmp").replace(model / "model.safetensors")   # an atomic save
        events.expect("catalog.changed", "a", timeout=WATCHED_WITHIN_S)
        wait_until(lambda: c.infer("a", {"x": X}).outputs["y"][0, 0] == 2.0, timeout=30)


def test_a_restart_trusts_only_the_files_that_passed_unchanged(start_daemon, short_tmp: Path) -> None:
    specs = _specs(short_tmp)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    (specs / "b.yaml").write_text(affine_spec("w.safetensors") + "description: b\n")
    kept = short_tmp / "data" / "warmd" / "validated_specs.json"
    daemon = start_daemon(specs)
    wait_until(lambda: kept.exists() and len(json.loads(kept.read_text())["specs"]) == 2, timeout=15)
    assert daemon.terminate() == 0

    # between the two starts: b gains a misspelt key; a is as it was and is served from what passed (marked
    # here, in the kept data, so that the listing shows where a's spec came from)
    (specs / "b.yaml").write_text(affine_spec("w.safetensors") + "keep_alvie: 5m\n")
    body = json.loads(kept.read_text())
    [a_digest] = [d for d, data in body["specs"].items() if "description" not in data]
    body["specs"][a_digest]["description"] = "as kept"
    kept.write_text(json.dumps(body))
    daemon = start_daemon(specs)
    with daemon.client() as c:
        listed = c.list()
        assert [(m.name, m.description) for m in listed.models] == [("a", "as kept")]
        [rejected] = listed.rejected
        assert "keep_alvie" in rejected.message and rejected.line == len(affine_spec("w.safetensors").splitlines()) + 1
        assert _y(c) == 1.0
