"""warm-tray's menu and icon as data, driven by scripted daemon snapshots and events (no display)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from warm.tray.state import SEPARATOR, Action, Item, TrayState, outline, selectable
from warmd.v1 import warmd_pb2 as pb

MIB = 2**20


def _model(name: str, state: int = pb.AVAILABLE, source: str = "path:/m", files: str = "complete",
           total: int = 0, pin: bool = False, downloadable: bool = False) -> pb.Model:
    return pb.Model(name=name, state=state, source=source, pin=pin, downloadable=downloadable,
                    files=pb.Files(state=files, bytes_total=total))


def _state(models: list[pb.Model], roles: list[pb.RoleChoice] = (), profiles: list[str] = (), active: str = "",
           jobs: list[pb.JobInfo] = ()) -> TrayState:
    state = TrayState()
    state.snapshot(pb.ListModelsResponse(models=models),
                   pb.ListProfilesResponse(active=active, profiles=list(profiles), roles=list(roles)),
                   pb.StatusResponse(log_file="/logs/warmd.log", jobs=list(jobs)))
    return state


def _find(items: list[Item], label: str) -> Item:
    for item in items:
        if item.label == label:
            return item
        if item.submenu:
            try:
                return _find(list(item.submenu), label)
            except LookupError:
                pass
    raise LookupError(label)


def test_without_roles_models_are_check_items_that_load_or_unload() -> None:
    state = _state([_model("alpha", pb.READY), _model("beta")])
    items = state.menu()
    alpha, beta = _find(items, "alpha (ready)"), _find(items, "beta (available)")
    assert (alpha.checked, alpha.action) == (True, Action("unload", ("alpha",)))
    assert (beta.checked, beta.action) == (False, Action("load", ("beta",)))
    assert state.status().kind == "ready" and "alpha" in state.status().title
    assert _find(items, "Pause (unload everything)").enabled


def test_roles_are_radio_groups_with_the_resolved_model_checked() -> None:
    roles = [pb.RoleChoice(role="embedder", model="beta", candidates=["alpha", "beta", "ghost"], chosen="beta")]
    state = _state([_model("alpha"), _model("beta", pb.READY), _model("gamma")], roles)
    items = state.menu()
    labels = [i.label for i in items]
    assert labels[2:8] == ["embedder", "alpha (available)", "beta (ready)", "ghost (not in the catalog)",
                           "Other models", "gamma (available)"]
    group = items[3:6]
    assert [i.radio for i in group] == [True] * 3 and [i.checked for i in group] == [False, True, False]
    assert group[0].action == Action("choose", ("embedder", "alpha")) and not group[2].enabled
    assert items[2].enabled is False                       # the role's name is a heading, not a choice


def test_per_model_submenu_load_unload_pin_and_download_with_size() -> None:
    state = _state([_model("local", pb.READY, pin=True),
                    _model("remote", source="hf:org/x@main", files="missing", total=3 * MIB, downloadable=True)])
    local = _find(state.menu(), "Models").submenu[0]
    assert [(i.label, i.enabled) for i in local.submenu] == [("Load", False), ("Unload", True), ("Pin", True)]
    assert local.submenu[2].checked is True and local.submenu[2].action == Action("unpin", ("local",))
    remote = _find(state.menu(), "Models").submenu[1]
    assert remote.label == "remote (not downloaded, 3.0 MiB)"
    assert remote.submenu[-1] == Item("Download remote (3.0 MiB)", Action("pull", ("remote",)))
    downloads = _find(state.menu(), "Downloads").submenu
    assert downloads[0].label == "No downloads under way" and not downloads[0].enabled
    assert downloads[-1].action == Action("pull", ("remote",))


def test_download_is_offered_when_the_daemon_says_the_model_is_downloadable_not_by_its_source_text() -> None:
    state = _state([_model("fetchable", source="something:new", files="partial", downloadable=True),
                    _model("own", source="hf:looks/like-hub@main", files="missing"),
                    _model("done", source="url:https://x/y", files="verified", downloadable=True)])
    offers = [i.action for i in _find(state.menu(), "Downloads").submenu if i.action is not None]
    assert offers == [Action("pull", ("fetchable",))]
    assert _find(state.menu(), "own (available)").action == Action("load", ("own",))


def test_download_events_drive_progress_cancel_and_notifications() -> None:
    state = _state([_model("remote", source="hf:org/x@main", files="missing", total=4 * MIB, downloadable=True)])
    assert state.apply(pb.Event(kind="download.started", model="remote", job_id="j1")).refresh
    change = state.apply(pb.Event(kind="job.progress", model="remote", job_id="j1",
                                  progress=pb.Progress(phase="download", done=MIB, total=4 * MIB, unit="bytes")))
    assert change.notify is None and not change.refresh
    status = state.status()
    assert (status.kind, status.progress) == ("busy", 0.25) and "downloading remote 25%" in status.title
    entry = _find(state.menu(), "Downloads").submenu[0]
    assert entry.label == "remote 25% of 4.0 MiB" and entry.submenu[0].action == Action("cancel", ("j1",))
    assert _find(state.menu(), "Models").submenu[0].submenu[-1].action == Action("cancel", ("j1",))

    change = state.apply(pb.Event(kind="download.failed", model="remote", job_id="j1", error_code="cancelled"))
    assert change.notify == ("Download cancelled", "remote: the partial files are kept for next time")
    assert state.status().kind != "error" and not state.downloads

    state.apply(pb.Event(kind="download.started", model="remote", job_id="j2"))
    change = state.apply(pb.Event(kind="download.failed", model="remote", job_id="j2", error_code="insufficient_disk",
                                  message="disk full"))
    assert change.notify == ("Download failed", "remote: disk full [insufficient_disk]")
    assert state.status().kind == "error" and "disk full" in state.status().title
    state.apply(pb.Event(kind="download.started", model="remote", job_id="j3"))
    change = state.apply(pb.Event(kind="download.finished", model="remote", job_id="j3"))
    assert change.notify == ("Download finished", "remote is downloaded and verified") and change.refresh
    assert state.status().kind == "idle"


def test_load_progress_and_failure() -> None:
    state = _state([_model("alpha")])
    state.apply(pb.Event(kind="model.loading", model="alpha", job_id="l1"))
    state.apply(pb.Event(kind="job.progress", model="alpha", job_id="l1",
                         progress=pb.Progress(phase="load", done=1, total=3, unit="steps")))
    assert state.status().kind == "busy" and state.status().progress == pytest.approx(1 / 3)
    assert _find(state.menu(), "alpha (loading 33%)")
    change = state.apply(pb.Event(kind="model.failed", model="alpha", error_code="insufficient_memory",
                                  message="needs 2 GiB"))
    assert change.notify == ("Load failed", "alpha: needs 2 GiB [insufficient_memory]")
    assert state.status().kind == "error"
    state.apply(pb.Event(kind="model.loading", model="alpha"))       # a new attempt clears the error
    assert state.status().kind == "busy"


def test_disconnected_shows_retry_and_only_logs_and_quit() -> None:
    state = _state([_model("alpha", pb.READY)], jobs=[pb.JobInfo(id="j", kind="download", model="alpha")])
    state.disconnected(4.0)
    status = state.status()
    assert status.kind == "unreachable" and "retrying in 4 s" in status.title
    assert [i.action for i in selectable(state.menu())] == [Action("open_logs"), Action("quit")]
    state.snapshot(pb.ListModelsResponse(), pb.ListProfilesResponse(), pb.StatusResponse())
    assert state.connected and state.status().kind == "idle"


def test_profiles_submenu_and_running_jobs_from_status() -> None:
    state = _state([_model("alpha")], profiles=["gaming", "work"], active="work",
                   jobs=[pb.JobInfo(id="j9", kind="download", model="alpha",
                                    progress=pb.Progress(done=MIB, total=2 * MIB, unit="bytes"))])
    profile = _find(state.menu(), "Profile: work")
    assert [(i.label, i.checked, i.radio) for i in profile.submenu] == [("gaming", False, True),
                                                                         ("work", True, True)]
    assert profile.submenu[0].action == Action("profile", ("gaming",))
    assert state.downloads["j9"].done == MIB and state.status().progress == 0.5


def test_importing_the_tray_needs_no_display() -> None:
    """pystray fails at import without a display: only `main` imports it, after the checks."""
    code = "import sys, warm.tray.app, warm.tray.state; print(sorted({'pystray', 'gi'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "DISPLAY"})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_outline_shows_checks_disabled_items_and_submenus_on_one_line() -> None:
    items = [Item("alpha (ready)", Action("unload", ("alpha",)), checked=True),
             Item("beta (available)", Action("load", ("beta",)), checked=False), SEPARATOR,
             Item("Models", submenu=(Item("alpha", submenu=(Item("Load", enabled=False), Item("Pin"))),)),
             Item("Quit tray", Action("quit"))]
    assert outline(items) == ("[x] alpha (ready) | [ ] beta (available) | - | Models {alpha {(Load) | Pin}} | "
                              "Quit tray")
    changed = [Item("alpha (ready)", checked=False), *items[1:]]
    assert outline(changed) != outline(items)       # a check mark alone changes what the tray logs


def test_adding_a_model_from_a_url_shows_the_gate_as_it_goes() -> None:
    state = _state([_model("alpha")])
    assert not any(i.action == Action("add_url") for i in state.menu())      # no dialog on this desktop
    state.can_add_url = True
    assert any(i.label == "Add model from URL…" and i.action == Action("add_url") for i in state.menu())

    def progress(step: str, message: str) -> pb.Event:
        return pb.Event(kind="job.progress", plugin="scale", job_id="j1", message=message,
                        progress=pb.Progress(phase=step, done=1, total=8))

    assert state.apply(progress("clone", "cloning /r")).notify == ("Adding a model", "scale: cloning /r")
    assert state.apply(progress("import", "importing adapter.py")).notify[0] == "Testing the adapter"
    assert state.apply(progress("load", "loading scale")).notify is None
    assert state.status().kind == "busy" and "adding scale (load: loading scale)" in state.status().title
    done = state.apply(pb.Event(kind="plugin.installed", plugin="scale", job_id="j1", message="scale at commit abc"))
    assert done.refresh and done.notify == ("Model added", "scale at commit abc")
    assert state.status().kind == "idle"
    failed = state.apply(pb.Event(kind="plugin.failed", plugin="other", job_id="j2", error_code="provider_failed",
                                  message="the gate failed at step 'load': boom"))
    assert failed.notify == ("Adding a model failed", "the gate failed at step 'load': boom [provider_failed]")
    assert state.status().kind == "error" and "adding other failed" in state.status().title
