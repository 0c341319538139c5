"""Plugins from git: `warm add` clones a repository, gates its adapter in runner processes, and installs it
at the pinned commit with its specs; a broken one is refused with the gate's output and leaves nothing;
`warm plugins update` switches only on a passing gate while the old commit serves; `rm` removes it all."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from plugin_repos import ADAPTER, MANIFEST, SPEC, commit, runner_pids, scale_files
from waiting import error_code, free_port, wait_until
from warm import Code
from warmd.v1 import warmd_pb2 as pb

X = np.array([[1, 2, 3]], dtype=np.float32)


def _installed(daemon) -> set[str]:  # type: ignore[no-untyped-def]
    plugins = daemon.root / "config" / "warmd" / "plugins"
    return {p.name for p in plugins.iterdir()} if plugins.exists() else set()


def test_a_repo_with_a_manifest_installs_and_serves_from_its_url(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "scale-repo"
    head = commit(repo, scale_files(2.5))
    marker = short_tmp / "imported-by"
    daemon = start_daemon(env={"PLUGIN_MARKER": str(marker)})

    added = daemon.warm("add", f"git+file://{repo}@main")
    assert added.returncode == 0, added.stderr
    assert f"installed scale at commit {head[:12]}: model(s) scale (provider scale)" in added.stdout
    for step in ("clone", "manifest", "import", "spec", "load", "infer", "outputs"):
        assert f"{step}: " in added.stderr, added.stderr
    with daemon.client() as c:
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)
        [plugin] = c.plugins()
        assert (plugin.name, plugin.provider, plugin.state, plugin.commit, plugin.isolated) == \
            ("scale", "scale", "installed", head, True)
        assert (plugin.gate.result, plugin.gate.commit, list(plugin.models)) == ("passed", head, ["scale"])
        assert plugin.source == f"git+file://{repo}@main"
    # its code ran in runner processes (the gate's and the model's), never in the daemon
    pids = {int(p) for p in marker.read_text().split()}
    assert len(pids) >= 2 and daemon.proc.pid not in pids
    installed = daemon.root / "config" / "warmd" / "plugins" / "scale" / head
    assert (installed / "adapter.py").is_file() and not (installed / ".git").exists()
    listed = daemon.warm("plugins", "ls")
    assert "scale" in listed.stdout and head[:12] in listed.stdout and "passed" in listed.stdout


BROKEN = {
    "import": ({"adapter.py": ADAPTER + "\nraise ImportError('no module named scipy_extra')\n"},
               "no module named scipy_extra"),
    "load": ({"adapter.py": ADAPTER.replace("self.factor = json.loads", "self.factor = 1 / 0 + json.loads")},
             "ZeroDivisionError"),
    "infer": ({"adapter.py": ADAPTER.replace("y = x * self.factor", "y = x.reshape(7) * self.factor")},
              "cannot reshape array"),
    "outputs": ({"adapter.py": ADAPTER.replace('y.astype(np.float32)', 'y.astype(np.int64)')},
                "output 'y' is INT64, declared FP32"),
    "spec": ({"scale.yaml": SPEC.replace("device: cpu", "device: cpu\noptions: {ofset: 1}")},
             "unknown key 'ofset' (did you mean 'offset'?)"),
    "manifest": ({"warmd-plugin.yaml": MANIFEST.replace("examples:", "exmaples:")},
                 "unknown key 'exmaples' (did you mean 'examples'?)"),
}


@pytest.mark.parametrize("step", list(BROKEN))
def test_a_broken_adapter_is_refused_with_the_gates_output(start_daemon, short_tmp: Path, step: str) -> None:
    change, said = BROKEN[step]
    repo = short_tmp / "broken"
    commit(repo, {**scale_files(), **change})
    daemon = start_daemon()
    added = daemon.warm("add", str(repo))
    assert added.returncode == 1
    assert "error [provider_failed] " in added.stderr and " (commit " in added.stderr
    assert f"the gate failed at step '{step}'" in added.stderr and said in added.stderr, added.stderr
    if step in ("import", "load", "infer"):
        assert 'File "adapter.py", line ' in added.stderr     # the traceback's last lines, as the repo names them
    assert _installed(daemon) <= {".staging"} and not list((daemon.root / "config/warmd/plugins/.staging").glob("*"))
    assert not list(daemon.specs.iterdir())
    with daemon.client() as c:
        assert not c.list().models and not c.plugins()


def test_a_gate_that_hangs_is_stopped_at_its_timeout(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "slow"
    commit(repo, scale_files(spec=SPEC.replace("device: cpu", "device: cpu\noptions: {load_delay: 600}")))
    daemon = start_daemon(config={"gate_timeout": "3s"})
    added = daemon.warm("add", str(repo), timeout=60)
    assert added.returncode == 1
    assert "the gate failed at step 'load': no answer within the gate's 3 s (gate_timeout)" in added.stderr
    assert _installed(daemon) <= {".staging"} and not list(daemon.specs.iterdir())


def test_leaving_an_install_cancels_it(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "slow"
    commit(repo, scale_files(spec=SPEC.replace("device: cpu", "device: cpu\noptions: {load_delay: 600}")))
    daemon = start_daemon()
    with daemon.client() as c:
        events = c.watch(kinds=["job.progress", "plugin."])
        adding = subprocess.Popen(daemon.warm_command() + ["add", str(repo)], env=daemon.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            next(e for e in events if e.kind == "job.progress" and e.progress.phase == "load")
            wait_until(lambda: runner_pids(daemon.proc.pid), timeout=20)
            adding.send_signal(signal.SIGINT)                    # Ctrl-C
            assert adding.wait(timeout=20) != 0
        finally:
            adding.kill()
        failed = next(e for e in events if e.kind == "plugin.failed")
        assert failed.error_code == "cancelled" and "the gate failed at step 'load'" in failed.message
        wait_until(lambda: not runner_pids(daemon.proc.pid), timeout=20)
        assert not c.plugins() and not list(daemon.specs.iterdir())
    assert _installed(daemon) <= {".staging"}


def test_an_install_is_a_job_that_status_lists_and_cancel_stops(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "slow"
    commit(repo, scale_files(spec=SPEC.replace("device: cpu", "device: cpu\noptions: {load_delay: 600}")))
    daemon = start_daemon()
    with daemon.client() as c:
        events = c.watch(kinds=["job.progress", "plugin."])
        adding = subprocess.Popen(daemon.warm_command() + ["add", str(repo)], env=daemon.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            loading = next(e for e in events if e.kind == "job.progress" and e.progress.phase == "load")
            [job] = [j for j in c.status().jobs if j.id == loading.job_id]
            assert job.kind == "plugin.install" and job.progress.phase == "load"
            assert daemon.warm("cancel", job.id).returncode == 0
            _, stderr = adding.communicate(timeout=30)
        finally:
            adding.kill()
        assert adding.returncode == 1 and "[cancelled]" in stderr, stderr
        failed = next(e for e in events if e.kind == "plugin.failed")
        assert failed.job_id == job.id and failed.error_code == "cancelled"
        wait_until(lambda: not runner_pids(daemon.proc.pid) and not c.status().jobs, timeout=20)
        assert not c.plugins() and not list(daemon.specs.iterdir())
    assert _installed(daemon) <= {".staging"}


def test_refusals_before_the_gate(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "scale"
    commit(repo, scale_files())
    daemon = start_daemon(args=("--offline",))
    for source, code, said in (
            ("git+ftp://host/repo", "invalid_argument", "use git+https://"),
            ("relative/path", "invalid_argument", "ollama://name:tag (a plugin's repository: git+URL"),
            ("git+https://127.0.0.1:9/org/repo", "network_forbidden", "the daemon is offline"),
            (f"git+file://{repo}@no-such-branch", "invalid_argument", "has no branch, tag or commit 'no-such-branch'"),
            (f"git+file://{short_tmp}/missing", "invalid_argument", "cannot clone")):
        out = subprocess.run(daemon.warm_command() + ["add", source], env=daemon.env, capture_output=True,
                             text=True, cwd=short_tmp, timeout=60)
        assert out.returncode == 1 and f"[{code}]" in out.stderr and said in out.stderr, (source, out.stderr)
    with daemon.client() as c:          # the API takes absolute paths only (the CLI makes them so)
        assert error_code(lambda: c.install_plugin("relative/path")) == Code.INVALID_ARGUMENT
    # a local path works offline; a second add of the same plugin is refused with what to do instead
    assert daemon.warm("add", str(repo)).returncode == 0
    again = daemon.warm("add", f"git+file://{repo}")
    assert again.returncode == 1 and "a plugin named 'scale' is installed; `warm plugins update scale`" in again.stderr
    # a provider name or a model name that is taken is refused before anything is installed
    taken = short_tmp / "taken"
    commit(taken, scale_files(manifest=MANIFEST.replace("name: scale", "name: other")))
    out = daemon.warm("add", str(taken))
    assert out.returncode == 1 and "the adapter's provider is named 'scale', which is taken" in out.stderr
    commit(taken, {"adapter.py": ADAPTER.replace('name = "scale"', 'name = "scale2"'),
                   "scale.yaml": SPEC.replace("provider: scale", "provider: scale2")})
    out = daemon.warm("add", str(taken))
    assert out.returncode == 1 and "a model named 'scale' or the file" in out.stderr
    assert _installed(daemon) == {"scale", ".staging"} and [p.name for p in daemon.specs.iterdir()] == ["scale.yaml"]


def test_an_unreachable_host_is_unavailable(start_daemon) -> None:
    daemon = start_daemon()
    port = free_port()                                       # nothing listens there
    out = daemon.warm("add", f"git+https://127.0.0.1:{port}/org/repo")
    assert out.returncode == 1 and "[unavailable] cannot reach https://127.0.0.1:" in out.stderr, out.stderr
    assert "--offline" in out.stderr


def test_update_switches_only_when_the_new_commit_passes(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "scale"
    first = commit(repo, scale_files(2.5))
    daemon = start_daemon()
    assert daemon.warm("add", str(repo)).returncode == 0
    with daemon.client() as c:
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)

        same = daemon.warm("plugins", "update", "scale")
        assert same.returncode == 0 and f"at commit {first[:12]} already" in same.stdout

        broken = commit(repo, {"adapter.py": ADAPTER.replace("return 8", "raise RuntimeError('weights gone')")})
        failed = daemon.warm("plugins", "update", "scale")
        assert failed.returncode == 1 and "the gate failed at step 'load'" in failed.stderr
        assert "weights gone" in failed.stderr
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)     # the old one serves
        [plugin] = c.plugins()
        assert (plugin.commit, plugin.gate.result, plugin.gate.step, plugin.gate.commit) == \
            (first, "failed", "load", broken)
        assert "weights gone" in plugin.gate.output
        listed = daemon.warm("plugins", "ls")
        assert f"still serving {first[:12]}" in listed.stdout

        # a good commit whose load takes a while: the old version answers every request meanwhile
        good = commit(repo, {"adapter.py": ADAPTER, "factor.json": '{"factor": 4}\n',
                             "scale.yaml": SPEC.replace("device: cpu", "device: cpu\noptions: {load_delay: 1.5}")})
        answers: list[float] = []
        done = threading.Event()

        def ask() -> None:
            with daemon.client() as client:
                while not done.is_set():
                    answers.append(float(client.infer("scale", {"x": X}).outputs["y"][0, 0]))

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            updated = daemon.warm("plugins", "update", "scale")
            assert updated.returncode == 0, updated.stderr
            assert f"{first[:12]} -> {good[:12]}" in updated.stdout
            wait_until(lambda: answers and answers[-1] == 4.0, timeout=30)
        finally:
            done.set()
            asker.join()
        assert set(answers) <= {2.5, 4.0} and answers[0] == 2.5      # no request failed, none waited for the new one
        [plugin] = c.plugins()
        assert (plugin.commit, plugin.gate.result) == (good, "passed")
        spec_text = (daemon.specs / "scale.yaml").read_text()
        assert good in spec_text and first not in spec_text

        removed = daemon.warm("plugins", "rm", "scale")
        assert removed.returncode == 0, removed.stderr
        assert not list(daemon.specs.iterdir()) and "scale" not in _installed(daemon)
        wait_until(lambda: not c.list().models and not c.plugins(), timeout=20)
        assert c.status().resident == []


def test_folder_plugins_are_not_managed_by_git_commands(start_daemon, short_tmp: Path) -> None:
    plugins = short_tmp / "config" / "warmd" / "plugins" / "mine"
    plugins.mkdir(parents=True)
    (plugins / "adapter.py").write_text(ADAPTER.replace('name = "scale"', 'name = "mine"'))
    daemon = start_daemon()
    with daemon.client() as c:
        [plugin] = c.plugins()
        assert (plugin.name, plugin.state, plugin.isolated, plugin.source) == ("mine", "loaded", False, "")
    out = daemon.warm("plugins", "rm", "mine")
    assert out.returncode == 1 and "is a folder plugin" in out.stderr and plugins.is_dir()
    out = daemon.warm("plugins", "update", "nothing")
    assert out.returncode == 1 and "no plugin named 'nothing'" in out.stderr


def test_requirements_go_into_the_plugins_own_virtualenv(start_daemon, short_tmp: Path) -> None:
    wheels = short_tmp / "wheels"
    _tiny_wheel(short_tmp / "tinydep-src", wheels)
    repo = short_tmp / "needs-tinydep"
    adapter = ADAPTER.replace("import numpy as np\n", "import numpy as np\nimport tinydep\n").replace(
        "y = x * self.factor", "y = x * tinydep.FACTOR")
    commit(repo, scale_files(adapter=adapter, manifest=MANIFEST + "requirements: [tinydep==1.0]\n"))
    # the user's pip configuration (here: no index, a folder of wheels) is what installs it
    daemon = start_daemon(env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)})
    added = daemon.warm("add", str(repo), timeout=300)
    assert added.returncode == 0, added.stderr
    assert "requirements: tinydep==1.0" in added.stderr
    with daemon.client() as c:
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 7 * X)
        head = c.plugins()[0].commit
    venv = daemon.root / "config" / "warmd" / "plugins" / "scale" / f"{head}.venv"
    assert list(venv.glob("lib/python*/site-packages/tinydep.py"))
    daemon_env = subprocess.run([sys.executable, "-c", "import tinydep"], capture_output=True)
    assert daemon_env.returncode != 0            # the daemon's own environment is unchanged

    # a requirement pip cannot find fails the requirements step with pip's words
    missing = short_tmp / "needs-missing"
    commit(missing, scale_files(manifest=MANIFEST.replace("name: scale", "name: other") +
                                "requirements: [no-such-package-warmd==1.0]\n"))
    out = daemon.warm("add", str(missing), timeout=300)
    assert out.returncode == 1 and "the gate failed at step 'requirements'" in out.stderr
    assert "no-such-package-warmd" in out.stderr and "other" not in _installed(daemon)


def _tiny_wheel(source: Path, wheels: Path) -> None:
    """Build a pure-Python wheel `tinydep 1.0` (FACTOR = 7) with the setuptools already installed."""
    source.mkdir()
    (source / "tinydep.py").write_text("FACTOR = 7\n")
    (source / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tinydep"
        version = "1.0"
        [tool.setuptools]
        py-modules = ["tinydep"]
        """))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=300)


def test_install_streams_json_events(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "scale"
    commit(repo, scale_files())
    daemon = start_daemon()
    out = daemon.warm("add", str(repo), "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["progress"]["phase"] for e in events if e["kind"] == "job.progress"] == \
        ["clone", "manifest", "import", "spec", "load", "infer", "outputs"]
    assert events[-1]["kind"] == "plugin.installed" and events[-1]["plugin"] == "scale"
    with daemon.client() as c:
        assert c.get("scale").state == pb.AVAILABLE
