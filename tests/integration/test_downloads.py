"""Downloads through the real daemon from a hub-compatible server on 127.0.0.1 (tests/hubserver.py):
full pulls, resume after a cut connection and after SIGKILL, digest checks, shared transfers, cancel,
offline mode, a full disk, and first use."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from hubserver import Hub, minilm_files
from waiting import error_code, free_port, wait_until
from warm import Code, WarmdError
from warmd.v1 import warmd_pb2 as pb

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BIG = 24 * 2**20


def _hub_env(hub: Hub) -> dict:
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None}


def _spec(specs: Path, name: str, repo: str, provider: str = "sentence-transformers") -> None:
    (specs / f"{name}.yaml").write_text(f"provider: {provider}\ndevice: cpu\nsource: {{hf: {repo}}}\n"
                                        + ("options: {factory: 'x:y'}\n" if provider == "torch" else ""))


def _big_repo(hub: Hub) -> bytes:
    payload = os.urandom(BIG)
    hub.add_repo("org/big", {"model.safetensors": payload, "config.json": b'{"a": 1}'})
    return payload


def _big_daemon(start_daemon, hub: Hub, root: Path, rate: int = 0, **kwargs):  # type: ignore[no-untyped-def]
    """The big repo on the hub (served at `rate` bytes/s if given), a spec `big` for it, a daemon."""
    payload = _big_repo(hub)
    if rate:
        hub.rate["model.safetensors"] = rate
    specs = root / "specs"
    specs.mkdir()
    _spec(specs, "big", "org/big")
    env = {**_hub_env(hub), **kwargs.pop("env", {})}
    return start_daemon(specs, env=env, **kwargs), payload


def _blobs(daemon) -> Path:  # type: ignore[no-untyped-def]
    return Path(daemon.env["HF_HOME"]) / "hub" / "models--org--big" / "blobs"


def _parts(daemon) -> list[Path]:  # type: ignore[no-untyped-def]
    return list(_blobs(daemon).glob("*.part")) if _blobs(daemon).is_dir() else []


def test_pull_multi_file_repo_then_serve(start_daemon, hub: Hub, short_tmp: Path) -> None:
    files = minilm_files()
    commit = hub.add_repo(MINILM, files)
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "minilm-hub", MINILM)
    daemon = start_daemon(specs, env=_hub_env(hub))
    assert json.loads(daemon.warm("show", "minilm-hub", "--json").stdout)["files"]["state"] == "missing"

    result = daemon.warm("pull", "minilm-hub", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e.get("kind") for e in events[:-1]]
    assert kinds[0] == "download.started" and kinds[-1] == "download.finished"
    progress = [e["progress"] for e in events if e.get("kind") == "job.progress" and
                e["progress"].get("unit") == "bytes"]
    total = sum(len(b) for b in files.values())
    assert progress and progress[-1]["total"] == total and progress[-1]["done"] == total       # JSON numbers
    per_file = [e.get("message", "") for e in events if e.get("kind") == "job.progress"]
    assert any(m.startswith("model.safetensors ") and m.endswith("/86.7 MiB") for m in per_file), per_file
    model = events[-1]
    assert model["files"] == {"state": "verified", "bytes_on_disk": total, "revision": commit, "bytes_total": total}

    snapshot = Path(daemon.env["HF_HOME"]) / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / \
        "snapshots" / commit
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == sorted(files)
    assert (snapshot / "model.safetensors").is_symlink()          # the standard cache layout
    assert not list(snapshot.parent.parent.joinpath("blobs").glob("*.part"))

    served_before = hub.served_bytes("model.safetensors")
    assert served_before == len(files["model.safetensors"])
    with daemon.client() as c:
        assert c.infer("minilm-hub", text=["hello"]).outputs["embedding"].shape == (1, 384)
    assert hub.served_bytes("model.safetensors") == served_before  # served from the cache, not fetched again


def test_cut_connection_resumes(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp)
    hub.cut_after["model.safetensors"] = (BIG // 3, 2)          # two cuts in a row
    with daemon.client() as c:
        model = c.pull("big")
    assert model.files.state == "verified"
    served = hub.served_bytes("model.safetensors")
    assert BIG <= served <= BIG * 1.1, served                    # resumed, not restarted
    ranges = [r for r in hub.requests if r.startswith("GET /lfs/")]
    assert len(ranges) == 3


def test_sigkill_mid_file_then_restart_resumes(start_daemon, hub: Hub, short_tmp: Path) -> None:
    first, _ = _big_daemon(start_daemon, hub, short_tmp, rate=8 * 2**20)     # ~3 s for the file
    specs = short_tmp / "specs"
    client = first.client()
    threading.Thread(target=lambda: _swallow(lambda: client.pull("big")), daemon=True).start()
    wait_until(lambda: any(p.stat().st_size > BIG * 0.6 for p in _parts(first)))
    first.kill()
    kept = max(p.stat().st_size for p in _parts(first))
    served_before = hub.served_bytes("model.safetensors")

    hub.rate.pop("model.safetensors")
    second = start_daemon(specs, env=_hub_env(hub), root=short_tmp)
    with second.client() as c:
        assert c.pull("big").files.state == "verified"
    fetched_again = hub.served_bytes("model.safetensors") - served_before
    assert fetched_again <= BIG - kept + BIG * 0.10, (fetched_again, kept)
    assert not _parts(second)


def _swallow(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except WarmdError:
        pass


def test_corrupt_byte_is_refetched_then_rejected(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp)
    hub.corrupt["model.safetensors"] = 1                         # once: the retry gets a good copy
    with daemon.client() as c:
        assert c.pull("big").files.state == "verified"
    assert hub.served_bytes("model.safetensors") == 2 * BIG

    for p in _blobs(daemon).iterdir():                           # start again, corrupt every time
        p.unlink()
    hub.corrupt["model.safetensors"] = 10
    result = daemon.warm("pull", "big")
    assert result.returncode == 1 and "[weights_digest_mismatch]" in result.stderr
    assert not [p for p in _blobs(daemon).iterdir() if len(p.name) == 64]   # no unverified file kept
    assert not _parts(daemon)


def test_concurrent_pulls_share_one_transfer(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, rate=16 * 2**20)
    jobs: list[set[str]] = [set(), set()]

    def pull(i: int) -> None:
        with daemon.client() as c:
            c.pull("big", on_event=lambda e: e.job_id and jobs[i].add(e.job_id))

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert hub.served_bytes("model.safetensors") == BIG
    assert jobs[0] and jobs[0] == jobs[1]                        # both followed the same job


def test_cancel_keeps_partial_for_resume(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, rate=8 * 2**20)
    started: list[str] = []
    errors: list[WarmdError] = []
    full = BIG + len(b'{"a": 1}')
    with daemon.client() as c:               # the size before any download: ls never asks, GetModel does
        assert c.list().models[0].files.bytes_total == 0
        assert c.get("big").files.bytes_total == full and c.list().models[0].files.bytes_total == full

    def pull() -> None:
        with daemon.client() as c:
            try:
                c.pull("big", on_event=lambda e: e.kind == "download.started" and started.append(e.job_id))
            except WarmdError as err:
                errors.append(err)

    worker = threading.Thread(target=pull)
    worker.start()
    wait_until(lambda: started and any(p.stat().st_size > BIG * 0.3 for p in _parts(daemon)))
    with daemon.client() as c:               # a late client sees the transfer and how far it is
        job = c.status().jobs[0]
    assert (job.id, job.kind, job.model, job.progress.total) == (started[0], "download", "big", full)
    assert job.progress.done > 0
    assert daemon.warm("cancel", started[0]).returncode == 0
    worker.join(timeout=30)
    assert errors and errors[0].code is Code.CANCELLED
    kept = max(p.stat().st_size for p in _parts(daemon))
    assert json.loads(daemon.warm("show", "big", "--json").stdout)["files"]["state"] == "partial"
    hub.rate.pop("model.safetensors")
    served = hub.served_bytes("model.safetensors")
    with daemon.client() as c:
        assert c.pull("big").files.state == "verified"
    assert hub.served_bytes("model.safetensors") - served <= BIG - kept + 2**20


SOCKET_GUARD = """
import socket, os
_connect = socket.socket.connect
def connect(self, address):
    if self.family != socket.AF_UNIX:
        with open(os.environ["WARMD_TEST_CONNECTS"], "a") as f:
            f.write(repr(address) + "\\n")
    return _connect(self, address)
socket.socket.connect = connect
"""


def test_offline_is_network_forbidden_and_opens_no_socket(start_daemon, hub: Hub, short_tmp: Path) -> None:
    # A socket guard inside the daemon (sitecustomize runs at its start): every non-Unix connect is logged.
    guard = short_tmp / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    connects = short_tmp / "connects.log"
    env = {"PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]),
           "WARMD_TEST_CONNECTS": str(connects)}
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, args=("--offline",), env=env)
    result = daemon.warm("pull", "big")
    assert result.returncode == 1 and "[network_forbidden]" in result.stderr and "org/big" in result.stderr
    result = daemon.warm("load", "big")
    assert result.returncode == 1 and "[network_forbidden]" in result.stderr
    assert hub.connections == 0 and hub.requests == []
    assert not connects.exists(), connects.read_text()
    (short_tmp / "online").mkdir()
    online = start_daemon(short_tmp / "specs", env={**_hub_env(hub), **env}, root=short_tmp / "online")
    online.warm("pull", "big")        # the guard does see the connections of a daemon that is online
    assert connects.read_text().count("127.0.0.1") >= 1


def test_download_policy_never_only_pulls_on_request(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, payload = _big_daemon(start_daemon, hub, short_tmp, config={"downloads": "never"})
    result = daemon.warm("load", "big")
    assert result.returncode == 1 and "[weights_missing]" in result.stderr and "warm pull big" in result.stderr
    assert hub.connections == 0
    pulled = daemon.warm("pull", "big")          # the one way `never` downloads: asked for by name
    assert pulled.returncode == 0, pulled.stderr
    with daemon.client() as c:
        assert c.get("big").files.state == "verified"
    snapshot = next((Path(daemon.env["HF_HOME"]) / "hub" / "models--org--big" / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").read_bytes() == payload


@pytest.fixture
def tiny_disk(short_tmp: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root, as the machines of this project have), unmounted after the test."""
    tiny = short_tmp / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(tiny)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs a tiny tmpfs (root); the machines of this project have it")
    try:
        yield tiny
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)


def test_full_disk_is_insufficient_disk_before_the_first_byte(start_daemon, hub: Hub, short_tmp: Path,
                                                              tiny_disk: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, env={"HF_HUB_CACHE": str(tiny_disk / "hub")})
    result = daemon.warm("pull", "big")
    assert result.returncode == 1 and "[insufficient_disk]" in result.stderr
    assert hub.served_bytes("model.safetensors") == 0
    daemon.terminate()


def test_full_disk_during_state_writes(start_daemon, hub: Hub, short_tmp: Path, tiny_disk: Path,
                                       figures) -> None:
    """The daemon's own state (download manifests, tokens) on a full disk: a clear `insufficient_disk`, the
    previous state intact, the daemon serving; once space is back, the same calls succeed."""
    data, config = tiny_disk / "data", tiny_disk / "config"
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, config={"data_dir": str(data)},
                            env={"XDG_CONFIG_HOME": str(config)})
    assert daemon.warm("token", "create", "--name", "first", "--scope", "read").returncode == 0
    tokens = config / "warmd" / "tokens.json"
    before = tokens.read_bytes()
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:    # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    made = daemon.warm("token", "create", "--name", "second", "--scope", "read")
    assert made.returncode == 1 and "[insufficient_disk]" in made.stderr and "intact" in made.stderr
    assert tokens.read_bytes() == before and not list(tokens.parent.glob("*.tmp"))
    pulled = daemon.warm("pull", "big")           # the blobs land elsewhere; the manifest cannot be written
    assert pulled.returncode == 1 and "[insufficient_disk]" in pulled.stderr, pulled.stderr
    assert daemon.proc.poll() is None
    filler.unlink()
    assert daemon.warm("token", "create", "--name", "second", "--scope", "read").returncode == 0
    assert daemon.warm("pull", "big").returncode == 0
    figures(state_writes_refused=2, previous_state_intact=True, recovered=True)


def test_first_use_downloads_then_serves(start_daemon, hub: Hub, short_tmp: Path) -> None:
    hub.add_repo(MINILM, minilm_files())
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "minilm-hub", MINILM)
    daemon = start_daemon(specs, env=_hub_env(hub))
    events: list[str] = []
    with daemon.client() as c:
        c.load("minilm-hub", on_event=lambda e: events.append(e.kind))
        assert c.infer("minilm-hub", text=["hi"]).outputs["embedding"].shape == (1, 384)
    assert "download.started" in events and "download.finished" in events and events[-1] == "model.loaded"


def test_a_torch_model_from_the_hub_serves(start_daemon, hub: Hub, short_tmp: Path) -> None:
    """A hub snapshot's files are links into blobs/: the weights check goes by name, not by link target."""
    from models import write_affine_weights, write_factory

    import numpy as np

    write_affine_weights(short_tmp / "w.safetensors", 3.0)
    hub.add_repo("org/affine", {"model.safetensors": (short_tmp / "w.safetensors").read_bytes()})
    specs = short_tmp / "specs"
    specs.mkdir()
    write_factory(specs)
    (specs / "affine.yaml").write_text("provider: torch\ndevice: cpu\nsource: {hf: org/affine}\n"
                                       "options: {factory: 'testmodels.py:Affine'}\n"
                                       "outputs: [{name: y, dtype: FP32, shape: [-1, 4]}]\n")
    daemon = start_daemon(specs, env=_hub_env(hub))
    with daemon.client() as c:
        y = c.infer("affine", {"x": np.ones((1, 4), np.float32)}).outputs["y"]
    assert y.tolist() == [[3.0, 3.0, 3.0, 3.0]]


def test_url_source_with_mirrors_downloads_verifies_and_serves(start_daemon, hub: Hub, short_tmp: Path) -> None:
    import hashlib

    import numpy as np

    from models import affine_spec, write_affine_weights, write_factory

    specs = short_tmp / "specs"
    specs.mkdir()
    write_factory(specs)
    weights = short_tmp / "w.safetensors"
    write_affine_weights(weights, 5.0)
    data = weights.read_bytes()
    hub.add_repo("org/affine", {"w.safetensors": data})
    sha = hashlib.sha256(data).hexdigest()
    good = f"{hub.lfs_endpoint}/lfs/{sha}"
    missing = f"{hub.lfs_endpoint}/lfs/{'0' * 64}"
    spec = affine_spec("unused").replace("  path: unused", f"  url: {missing}\n  sha256: {sha}\n  mirrors: [{good}]")
    (specs / "affine.yaml").write_text(spec)
    (specs / "wrong.yaml").write_text(spec.replace(f"sha256: {sha}", f"sha256: {'f' * 64}"))
    daemon = start_daemon(specs, env=_hub_env(hub))
    with daemon.client() as c:
        assert c.get("affine").files.state == "missing"
        out = c.infer("affine", {"x": np.ones((1, 4), np.float32)})     # first use: download, then serve
        assert np.allclose(out.outputs["y"], 5.0)
        assert c.get("affine").files.state == "verified"
        with pytest.raises(WarmdError) as info:
            c.pull("wrong")
        assert info.value.code is Code.WEIGHTS_DIGEST_MISMATCH
    [stored] = (Path(daemon.env["XDG_DATA_HOME"]) / "warmd" / "url" / sha).iterdir()
    assert stored.read_bytes() == data


def test_last_waiter_leaving_cancels_the_transfer(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, rate=4 * 2**20)
    with daemon.client() as c:
        events = c.watch(kinds=["download."])
        cli = subprocess.Popen([*daemon.warm_command(), "pull", "big"], env=daemon.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert next(events).kind == "download.started"
            wait_until(lambda: any(p.stat().st_size > 2**20 for p in _parts(daemon)))
        finally:
            cli.kill()
            cli.wait()
        ended = next(events)
    assert ended.kind == "download.failed" and ended.error_code == "cancelled"
    assert _parts(daemon)                                      # kept for the next attempt


def test_rm_frees_files_but_not_shared_ones_and_show_has_history(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, payload = _big_daemon(start_daemon, hub, short_tmp)
    specs = short_tmp / "specs"
    with daemon.client() as c:
        c.pull("big")
        (specs / "twin.yaml").write_text("provider: sentence-transformers\nsource: {hf: org/big}\n")
        wait_until(lambda: "twin" in [m.name for m in c.list().models])
        with pytest.raises(WarmdError) as info:                 # the twin uses the same revision
            c.remove("big")
        assert info.value.code is Code.INVALID_ARGUMENT and "twin" in info.value.message
        (specs / "twin.yaml").unlink()
        wait_until(lambda: "twin" not in [m.name for m in c.list().models])
        result = c.remove("big")
        assert result.freed_bytes >= len(payload)
        assert c.get("big").files.state == "missing"
        assert not [p for p in _blobs(daemon).iterdir()]
        hub.corrupt["model.safetensors"] = 10
        with pytest.raises(WarmdError):
            c.pull("big")
        history = c.get("big").downloads
    assert [h.result for h in history] == ["ok", "failed"]
    assert history[1].error_code == "weights_digest_mismatch" and history[0].revision == hub.repos["org/big"].commit
    assert int(history[0].bytes) == BIG + len(b'{"a": 1}')


def test_add_writes_a_spec_from_hub_metadata_and_discovered_lists_the_rest(start_daemon, hub: Hub,
                                                                           short_tmp: Path) -> None:
    hub.add_repo(MINILM, minilm_files(), library_name="sentence-transformers", pipeline_tag="sentence-similarity",
                 tags=["sentence-transformers"], config={"architectures": ["BertModel"]})
    hub.add_repo("org/gpt", {"config.json": b"{}"}, library_name="transformers", pipeline_tag="text-generation")
    hub.add_repo("org/asr", {"config.json": b"{}"}, library_name="transformers",
                 pipeline_tag="automatic-speech-recognition")
    specs = short_tmp / "specs"
    specs.mkdir()
    daemon = start_daemon(specs, env=_hub_env(hub))
    result = daemon.warm("add", f"hf://{MINILM}", "--json")
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert added["name"] == "all-minilm-l6-v2" and added["provider"] == "sentence-transformers"
    assert (specs / "all-minilm-l6-v2.yaml").is_file()
    result = daemon.warm("add", "hf://org/gpt", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["provider"] == "transformers"
    assert "task: text-generation" in (specs / "gpt.yaml").read_text()
    result = daemon.warm("add", "hf://org/asr")
    assert result.returncode == 1 and "[unsupported_provider]" in result.stderr
    assert daemon.warm("add", f"hf://{MINILM}").returncode == 1           # the name is taken

    with daemon.client() as c:
        c.pull("all-minilm-l6-v2")
        assert c.infer("all-minilm-l6-v2", text=["hi"]).outputs["embedding"].shape == (1, 384)
        (specs / "all-minilm-l6-v2.yaml").unlink()
        (specs / "gpt.yaml").unlink()
        wait_until(lambda: not c.list().models)
        [found] = c.list(discovered=True).discovered
    assert found.repo_id == MINILM and found.size_on_disk > 90_000_000
    assert "all-MiniLM-L6-v2" in daemon.warm("ls").stdout


def test_no_network_is_unavailable_naming_the_host_and_offline(start_daemon, short_tmp: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"                     # nothing listens there
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "hubbed", "org/model")
    (specs / "fetched.yaml").write_text(f"provider: onnx\nsource: {{url: '{endpoint}/m.onnx', sha256: '{'0' * 64}'}}\n")
    daemon = start_daemon(specs, env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": None})
    with daemon.client() as c:
        assert not c.list().rejected
        calls = {"add": lambda: c.add("hf://org/other"), "pull hf": lambda: c.pull("hubbed"),
                 "pull url": lambda: c.pull("fetched"), "first use": lambda: c.infer("hubbed", text=["x"])}
        for what, call in calls.items():
            with pytest.raises(WarmdError) as info:
                call()
            assert info.value.code is Code.UNAVAILABLE, (what, info.value)          # add was internal: ConnectError
            assert endpoint in info.value.message and "--offline" in info.value.message, (what, info.value)
    assert not list(specs.glob("other*.yaml"))
    cli = daemon.warm("pull", "hubbed")
    assert cli.returncode == 1 and "[unavailable]" in cli.stderr and "127.0.0.1" in cli.stderr, cli.stderr


def test_missing_repo_or_revision_is_invalid_argument(start_daemon, hub: Hub, short_tmp: Path) -> None:
    hub.add_repo("org/there", {"config.json": b"{}"}, library_name="transformers", pipeline_tag="text-generation")
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "gone", "org/gone")
    (specs / "oldrev.yaml").write_text("provider: transformers\ntask: text-generation\n"
                                       "source: {hf: org/there, revision: v9}\n")
    daemon = start_daemon(specs, env=_hub_env(hub))
    with daemon.client() as c:
        calls = {"no repository org/absent": lambda: c.add("hf://org/absent"),
                 "no repository org/gone": lambda: c.pull("gone"), "no revision 'v9'": lambda: c.pull("oldrev")}
        for what, call in calls.items():
            with pytest.raises(WarmdError) as info:                          # add was internal: RepositoryNotFound
                call()
            assert info.value.code is Code.INVALID_ARGUMENT, (what, info.value)
            assert what in info.value.message and hub.endpoint in info.value.message, (what, info.value)
        before = len(hub.requests)
        with pytest.raises(WarmdError) as info:
            c.add("hf://org/there", name="gone")                             # the name is taken
        assert info.value.code is Code.INVALID_ARGUMENT and len(hub.requests) == before   # the hub was not asked


def test_stall_is_dropped_and_resumed_patterns_and_token(start_daemon, hub: Hub, short_tmp: Path) -> None:
    _big_repo(hub)
    hub.repos["org/big"].files["notes/skip.txt"] = b"not wanted"
    hub.stall["model.safetensors"] = (BIG // 2, 5.0, 1)       # silent for 5 s halfway, once
    specs = short_tmp / "specs"
    specs.mkdir()
    (specs / "big.yaml").write_text("provider: sentence-transformers\n"
                                    "source: {hf: org/big, allow_patterns: ['*.safetensors', '*.json']}\n")
    daemon = start_daemon(specs, config={"download_timeout": "1s"},
                          env={**_hub_env(hub), "HF_TOKEN": "hf_test_token"})
    t0 = time.monotonic()
    with daemon.client() as c:
        assert c.pull("big").files.state == "verified"
    assert time.monotonic() - t0 < 5.0                          # did not sit out the stall
    assert BIG <= hub.served_bytes("model.safetensors") <= BIG * 1.1
    assert hub.served_bytes("notes/skip.txt") == 0
    assert "Bearer hf_test_token" in hub.authorization


def test_sigkill_at_20_random_points_of_downloads(start_daemon, hub: Hub, short_tmp: Path, figures) -> None:
    """Kill the daemon at 20 random moments of downloads: the cache never holds an unverified file, no
    snapshot link dangles, and the next daemon finishes the download."""
    from hubserver import git_blob_sha1

    rng = random.Random(20)
    daemon, payload = _big_daemon(start_daemon, hub, short_tmp, rate=24 * 2**20)    # ~1 s per download
    specs, mid_transfer, final_blob = short_tmp / "specs", 0, hashlib.sha256(payload).hexdigest()
    for i in range(20):
        if i:
            daemon = start_daemon(specs, env=_hub_env(hub), root=short_tmp)
        client = daemon.client()
        threading.Thread(target=lambda: _swallow(lambda: client.pull("big")), daemon=True).start()
        if i % 5:        # four kills in five land at a random point of the transfer, however slow it starts
            wait_until(lambda: _parts(daemon) or (_blobs(daemon) / final_blob).is_file(), timeout=60, interval=0.005)
            time.sleep(rng.uniform(0.0, 0.9))
        else:            # the fifth while the pull is still starting
            time.sleep(rng.uniform(0.0, 0.05))
        mid_transfer += bool(_parts(daemon))
        daemon.kill()
        blobs = _blobs(daemon)
        for blob in (blobs.iterdir() if blobs.is_dir() else ()):
            if blob.suffix in (".part", ".lock"):
                continue
            data = blob.read_bytes()
            digest = hashlib.sha256(data).hexdigest() if len(blob.name) == 64 else git_blob_sha1(data)
            assert digest == blob.name, f"kill {i}: unverified file {blob.name} in the cache"
        for link in blobs.parent.glob("snapshots/*/*"):
            assert link.resolve().is_file(), f"kill {i}: dangling snapshot link {link}"
        if blobs.is_dir() and not _parts(daemon) and (blobs / hashlib.sha256(payload).hexdigest()).is_file():
            shutil.rmtree(blobs.parent)          # finished before the kill: start the next one from zero
    final = start_daemon(specs, env=_hub_env(hub), root=short_tmp)
    with final.client() as c:
        assert c.pull("big").files.state == "verified"
    assert mid_transfer >= 10, mid_transfer      # most kills landed inside a transfer
    figures(kills=20, mid_transfer=mid_transfer, corrupt_files=0, dangling_links=0)


def test_hub_file_names_cannot_write_outside_the_cache(start_daemon, hub: Hub, short_tmp: Path, figures) -> None:
    escapes = ["../../../../../escaped.bin", "a/../../../../escaped2.bin", "/abs/escaped3.bin"]
    for i, name in enumerate(escapes):
        hub.add_repo(f"org/evil{i}", {name: b"owned", "config.json": b"{}"})
    specs = short_tmp / "specs"
    specs.mkdir()
    for i in range(len(escapes)):
        _spec(specs, f"evil{i}", f"org/evil{i}")
    daemon = start_daemon(specs, env=_hub_env(hub))
    for i in range(len(escapes)):
        result = daemon.warm("pull", f"evil{i}")
        assert result.returncode == 1 and "[unavailable]" in result.stderr and "unsafe name" in result.stderr
    assert not [p for p in Path("/").glob("escaped*.bin")] + list(short_tmp.rglob("escaped*"))
    assert not [r for r in hub.requests if r.startswith("GET /lfs/") or "/resolve/" in r]   # nothing fetched
    figures(escapes_tried=len(escapes), written_outside=0)


def test_disk_filling_up_mid_download(start_daemon, hub: Hub, short_tmp: Path, tiny_disk: Path, figures) -> None:
    """Another program fills the disk while a file arrives: `insufficient_disk` at once (no retries into a
    full disk), the part kept; once space is back the pull resumes where it stopped and verifies."""
    payload = os.urandom(3 * 2**20)
    hub.add_repo("org/mid", {"model.safetensors": payload})
    hub.rate["model.safetensors"] = 1 * 2**20                    # ~3 s: time to fill the disk meanwhile
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "mid", "org/mid")
    daemon = start_daemon(specs, env={**_hub_env(hub), "HF_HUB_CACHE": str(tiny_disk / "hub")})
    result: dict[str, object] = {}
    client = daemon.client()
    thread = threading.Thread(target=lambda: result.update(code=error_code(lambda: client.pull("mid"))))
    thread.start()
    blobs = tiny_disk / "hub" / "models--org--mid" / "blobs"
    wait_until(lambda: any(p.stat().st_size > 2**20 for p in blobs.glob("*.part")) if blobs.is_dir() else False)
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    thread.join(timeout=60)
    assert result["code"] is Code.INSUFFICIENT_DISK
    kept = max(p.stat().st_size for p in blobs.glob("*.part"))
    assert kept > 2**20 and daemon.proc.poll() is None
    filler.unlink()
    hub.rate.pop("model.safetensors")
    served = hub.served_bytes("model.safetensors")
    with daemon.client() as c:
        assert c.pull("mid").files.state == "verified"
    assert hub.served_bytes("model.safetensors") - served <= len(payload) - kept + 2**20    # resumed
    figures(filled_at_mib=round(kept / 2**20, 2), resumed=True)



def test_a_second_spec_sharing_a_transfer_sees_its_progress(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, rate=8 * 2**20)
    _spec(short_tmp / "specs", "twin", "org/big")                 # the same source under another name
    seen: dict[str, list] = {"big": [], "twin": []}
    with daemon.client() as c:
        wait_until(lambda: any(m.name == "twin" for m in c.list().models))
        events = c.watch(kinds=["download.started"])

        def pull_big() -> None:
            with daemon.client() as other:
                other.pull("big", on_event=seen["big"].append)

        first = threading.Thread(target=pull_big)
        first.start()
        assert next(events).model == "big"
        c.pull("twin", on_event=seen["twin"].append)              # joins the transfer `big` started
        first.join(timeout=60)
    assert hub.served_bytes("model.safetensors") == BIG           # one transfer
    progress = [e for e in seen["twin"] if e.kind == "job.progress" and e.progress.unit == "bytes"]
    assert progress and progress[-1].progress.done == progress[-1].progress.total > BIG
    kinds = [e.kind for e in seen["twin"]]
    assert kinds[0] == "download.started" and kinds[-1] == "download.finished"   # replayed, then live
    assert {e.job_id for e in seen["twin"]} == {e.job_id for e in seen["big"]}


def test_a_load_waiting_on_a_download_is_a_job_and_warm_cancel_stops_it(start_daemon, hub: Hub,
                                                                        short_tmp: Path) -> None:
    daemon, _ = _big_daemon(start_daemon, hub, short_tmp, rate=2 * 2**20)
    loader = subprocess.Popen([*daemon.warm_command(), "load", "big", "--json"], env=daemon.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with daemon.client() as c:
        wait_until(lambda: {j.kind for j in c.status().jobs} == {"load", "download"})
        jobs = {j.kind: j for j in c.status().jobs}
        assert jobs["load"].model == "big" and jobs["load"].progress.phase == "resolve"
        wait_until(lambda: any(p.stat().st_size > 2**20 for p in _parts(daemon)))
        assert daemon.warm("cancel", jobs["load"].id).returncode == 0
        out, err = loader.communicate(timeout=30)
        *followed, last = [json.loads(line) for line in out.splitlines()]
        assert loader.returncode == 1 and last["error"] == {"code": "cancelled",
                                                            "message": "load of 'big' was cancelled"}
        # the load's stream carried its download's progress (followed by job id)
        assert any(e.get("job_id") == jobs["download"].id and e.get("kind") == "job.progress" for e in followed)
        wait_until(lambda: not c.status().jobs)                   # the download had no other waiter
        assert c.get("big").state == pb.AVAILABLE and not c.get("big").error_code   # a cancel is no failure
    assert _parts(daemon)                                         # partial files kept for the next attempt
    assert daemon.warm("cancel", jobs["load"].id).returncode == 1
