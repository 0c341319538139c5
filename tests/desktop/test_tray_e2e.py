"""warm-tray end to end in a real X server: Xvfb, trayer as the tray, dbus-run-session with a notification
recorder, xdotool to open the menu and pick items, the real daemon over its socket.

Where an item sits in the menu comes from the same `TrayState.menu()` the tray renders, built here from the
daemon's own answers; GTK's keyboard navigation visits the enabled items in that order. The screenshot of
the open menu is kept in artifacts/ (a CI artifact)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubserver import Hub
from models import affine_spec, affine_specs
from plugin_repos import ADAPTER, MANIFEST, commit, scale_files
from waiting import wait_until
from warm.tray.state import Action, TrayState, outline, selectable
from warmd.v1 import warmd_pb2 as pb
from x11 import TOOLS, Desktop

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 tray: Linux only")


@pytest.fixture
def desktop(short_tmp: Path):  # type: ignore[no-untyped-def]
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} missing: run .ci/setup (it installs the desktop test tools)"
    with Desktop(short_tmp) as desk:
        desk.start_trayer()
        yield desk


def _menu(client) -> list:  # type: ignore[no-untyped-def]
    state = TrayState(can_add_url=True)        # GTK is there: the tray offers "Add model from URL…"
    state.snapshot(client.list(), client.list_profiles(), client.status())
    return state.menu()


def _shown(desk: Desktop, client) -> list:  # type: ignore[no-untyped-def]
    """The daemon's menu, once the tray shows it: the tray logs its menu's outline at every change, so a
    test never navigates a menu that has not caught up (however busy the machine). Numbers (progress,
    sizes) are left out of the comparison: they move while a download runs."""
    found: list = []

    def same() -> bool:
        items = _menu(client)
        logged = [line.split("menu: ", 1)[1] for line in desk.tray_log().splitlines() if "menu: " in line]
        found[:] = items
        return bool(logged) and _digitless(logged[-1]) == _digitless(outline(items))

    wait_until(same, timeout=30, interval=0.1)
    return found


def _digitless(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", text)


def _position(items: list, action: Action | str) -> int:
    """How many Down presses reach the item doing `action` (or labelled so): the first selects the first."""
    return next(i for i, item in enumerate(selectable(items)) if action in (item.action, item.label)) + 1


def _pick(desk: Desktop, icon: str, items: list, action: Action, screenshot: Path | None = None) -> None:
    desk.open_menu(icon)
    time.sleep(0.3)
    if screenshot is not None:
        desk.screenshot(screenshot)
    desk.keys(*["Down"] * _position(items, action), "Return")


def _tray_ready(desk: Desktop, tray: subprocess.Popen) -> str:
    icon = desk.tray_icon()
    wait_until(lambda: "connected to warmd" in desk.tray_log() or tray.poll() is not None, timeout=30)
    assert tray.poll() is None, desk.tray_log()
    return icon


def test_pick_models_from_the_menu(start_daemon, short_tmp: Path, desktop: Desktop) -> None:
    specs = affine_specs(short_tmp, 1.0)
    for name in ("alpha", "beta", "gamma"):
        (specs / f"{name}.yaml").write_text(affine_spec("w.safetensors"))
    profiles = short_tmp / "profiles"
    profiles.mkdir()
    (profiles / "default.yaml").write_text("roles:\n  embedder:\n    prefer: [alpha, beta]\n")
    daemon = start_daemon(specs, config={"profiles_dir": str(profiles)})
    opener = short_tmp / "bin"                 # the desktop's opener, recording what it was asked to open
    opener.mkdir()
    (opener / "xdg-open").write_text(f"#!/bin/sh\necho \"$1\" >> {short_tmp / 'opened'}\n")
    (opener / "xdg-open").chmod(0o755)
    tray = desktop.start_tray(daemon.socket, env={"PATH": f"{opener}:{os.environ['PATH']}"})
    icon = _tray_ready(desktop, tray)

    with daemon.client() as client:
        items = _shown(desktop, client)
        labels = [i.label for i in items]
        assert labels[2:7] == ["embedder", "alpha (available)", "beta (available)", "Other models",
                               "gamma (available)"], labels
        # a role's candidate: it becomes the role's model (kept) and loads
        shot = ARTIFACTS / "tray-menu.png"
        _pick(desktop, icon, items, Action("choose", ("embedder", "beta")), screenshot=shot)
        wait_until(lambda: client.get("beta").state == pb.READY, timeout=30)
        role = client.list_profiles().roles[0]
        assert (role.model, role.chosen) == ("beta", "beta")
        assert client.get("alpha").state == pb.AVAILABLE
        # a model in no role: picking it loads it
        items = _shown(desktop, client)
        assert next(i for i in items if i.label.startswith("beta")).checked is True
        _pick(desktop, icon, items, Action("load", ("gamma",)))
        wait_until(lambda: client.get("gamma").state == pb.READY, timeout=30)
        # Pause unloads everything
        _pick(desktop, icon, _shown(desktop, client), Action("pause"))
        wait_until(lambda: not client.status().resident, timeout=30)
        # per model: Models > alpha > Pin
        items = _shown(desktop, client)
        models = next(i for i in items if i.label == "Models")
        alpha = next(i for i in models.submenu if i.label.startswith("alpha"))
        desktop.open_menu(icon)
        time.sleep(0.3)
        desktop.keys(*["Down"] * _position(items, "Models"), "Right", *["Down"] * selectable(
            list(models.submenu)).index(alpha), "Right", *["Down"] * (_position(list(alpha.submenu), "Pin") - 1),
            "Return")
        wait_until(lambda: client.get("alpha").pin, timeout=30)
        _pick(desktop, icon, _shown(desktop, client), Action("open_logs"))
        wait_until(lambda: (short_tmp / "opened").exists(), timeout=30)
        assert (short_tmp / "opened").read_text().strip() == client.status().log_file
        _pick(desktop, icon, _shown(desktop, client), Action("quit"))
        tray.wait(timeout=30)

    from PIL import Image

    with Image.open(shot) as image:
        menu_area = image.convert("L").crop((image.width - 320, 30, image.width, 300))
        assert menu_area.getextrema()[1] > 200, "the screenshot shows no open menu"


def test_download_from_the_menu_then_notify_and_cancel(start_daemon, short_tmp: Path, hub: Hub,
                                                      desktop: Desktop) -> None:
    hub.add_repo("org/small", {"model.safetensors": os.urandom(2**20), "config.json": b"{}"})
    hub.add_repo("org/slow", {"model.safetensors": os.urandom(32 * 2**20), "config.json": b"{}"})
    hub.rate["model.safetensors"] = 4 * 2**20
    specs = short_tmp / "specs"
    specs.mkdir()
    for name in ("small", "slow"):
        (specs / f"{name}.yaml").write_text(f"provider: sentence-transformers\nsource: {{hf: org/{name}}}\n")
    daemon = start_daemon(specs, env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None})
    tray = desktop.start_tray(daemon.socket)
    icon = _tray_ready(desktop, tray)

    with daemon.client() as client:
        # the tray asks for the sizes of models not downloaded yet; the daemon keeps them
        wait_until(lambda: all(m.files.bytes_total for m in client.list().models), timeout=30)
        items = _shown(desktop, client)
        downloads = next(i for i in items if i.label == "Downloads")
        offer = next(i for i in downloads.submenu if i.action == Action("pull", ("small",)))
        assert offer.label == "Download small (1.0 MiB)", offer.label
        desktop.open_menu(icon)
        time.sleep(0.3)
        inside = selectable(list(downloads.submenu)).index(offer)
        desktop.keys(*["Down"] * _position(items, "Downloads"), "Right", *["Down"] * inside, "Return")
        wait_until(lambda: client.get("small").files.state == "verified", timeout=30)
        wait_until(lambda: any(n["title"] == "Download finished" for n in desktop.notes()), timeout=30)
        assert any("small" in n["body"] for n in desktop.notes() if n["title"] == "Download finished")

        # a download someone else started shows up under Downloads with Cancel
        puller = subprocess.Popen(daemon.warm_command() + ["pull", "slow"], env=daemon.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: client.status().jobs, timeout=30)
            items = _shown(desktop, client)
            downloads = next(i for i in items if i.label == "Downloads")
            assert downloads.submenu[0].label.startswith("slow ")
            desktop.open_menu(icon)
            time.sleep(0.3)
            desktop.keys(*["Down"] * _position(items, "Downloads"), "Right", "Right")      # > slow > Cancel
            time.sleep(0.3)
            desktop.screenshot(ARTIFACTS / "tray-downloads.png")
            desktop.keys("Return")
            wait_until(lambda: any(n["title"] == "Download cancelled" for n in desktop.notes()), timeout=30)
            assert client.get("slow").files.state in ("partial", "missing")
            assert puller.wait(timeout=20) != 0
        finally:
            puller.kill()
            puller.wait()


def test_reconnects_after_the_daemon_restarts(start_daemon, short_tmp: Path, desktop: Desktop) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "alpha.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    tray = desktop.start_tray(daemon.socket)
    icon = _tray_ready(desktop, tray)
    tooltip = lambda: desktop.xdotool("getwindowname", icon).strip()   # noqa: E731 - GTK titles the icon window
    wait_until(lambda: tooltip().startswith("warmd: no model loaded"), timeout=30)
    daemon.kill()
    wait_until(lambda: "warmd is not reachable; retrying in" in tooltip(), timeout=30)
    again = start_daemon(specs)
    wait_until(lambda: desktop.tray_log().count("connected to warmd") >= 2, timeout=30)
    assert tray.poll() is None
    retries = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in desktop.tray_log().splitlines()
               if "daemon unreachable" in line]
    assert retries[:3] == sorted(retries[:3]) and retries[0] == 0.5      # the waits grow: 0.5, 1, 2 ...
    with again.client() as client:
        _pick(desktop, icon, _shown(desktop, client), Action("load", ("alpha",)))
        wait_until(lambda: client.get("alpha").state == pb.READY, timeout=30)
        wait_until(lambda: tooltip() == "warmd: alpha ready", timeout=30)


def test_without_a_tray_or_a_display_it_says_so(short_tmp: Path) -> None:
    with Desktop(short_tmp) as desk:              # an X server but no tray in it
        out = subprocess.run([sys.executable, "-m", "warm.tray.app", "--host-timeout", "1"], env=desk.env,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no system tray" in out.stderr, out.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-m", "warm.tray.app"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "needs a graphical session" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr



def test_add_a_model_from_a_url(start_daemon, short_tmp: Path, desktop: Desktop) -> None:
    good, broken = short_tmp / "scale", short_tmp / "broken"
    commit(good, scale_files(2.5))
    commit(broken, scale_files(adapter=ADAPTER.replace("return 8", "raise RuntimeError('weights gone')"),
                               manifest=MANIFEST.replace("name: scale", "name: broken")))
    daemon = start_daemon()
    tray = desktop.start_tray(daemon.socket)
    icon = _tray_ready(desktop, tray)

    def add(url: str, screenshot: Path | None = None) -> None:
        _pick(desktop, icon, _shown(desktop, client), Action("add_url"))
        found: list[str] = []
        wait_until(lambda: found.extend(desktop.windows_named("Add model from URL")) or found, timeout=30)
        desktop.xdotool("windowfocus", "--sync", found[0])
        desktop.xdotool("type", "--delay", "10", url)
        if screenshot is not None:
            desktop.screenshot(screenshot)
        desktop.keys("Return")
        wait_until(lambda: not desktop.windows_named("Add model from URL"), timeout=30)

    with daemon.client() as client:
        add(f"git+file://{good}", screenshot=ARTIFACTS / "tray-add-url.png")
        wait_until(lambda: any(n["title"] == "Model added" for n in desktop.notes()), timeout=60)
        titles = [n["title"] for n in desktop.notes()]
        assert titles[:3] == ["Adding a model", "Testing the adapter", "Model added"], titles
        assert "scale at commit" in desktop.notes()[2]["body"]
        assert [m.name for m in client.list().models] == ["scale"]
        items = _shown(desktop, client)                          # the new model is in the menu
        assert any(i.label == "scale (available)" for i in items)
        _pick(desktop, icon, items, Action("load", ("scale",)))
        wait_until(lambda: client.get("scale").state == pb.READY, timeout=30)

        add(str(broken))
        wait_until(lambda: any(n["title"] == "Adding a model failed" for n in desktop.notes()), timeout=60)
        [failed] = [n for n in desktop.notes() if n["title"] == "Adding a model failed"]
        assert "the gate failed at step 'load'" in failed["body"] and "weights gone" in failed["body"]
        assert [m.name for m in client.list().models] == ["scale"]          # nothing installed
        assert [p.name for p in client.plugins()] == ["scale"]
