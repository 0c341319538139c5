"""Untrusted code runs outside the daemon: a plugin from git (or any spec with `isolation: process`) runs in
a runner process of its own; a crash there is `provider_failed` for that model with the exit status, the
daemon and other models keep serving, the next request starts a new runner; unload kills it; cancels and
deadlines reach it."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from models import affine_spec, affine_specs
from plugin_repos import ADAPTER, commit, runner_pids, scale_files
from waiting import error_code, wait_until
from warm import Client, Code, WarmdError
from warmd import tensors
from warmd.v1 import warmd_pb2 as pb
from warmd.v1 import warmd_pb2_grpc

X = np.array([[1, 2, 3]], dtype=np.float32)


def _fault(kind: int) -> np.ndarray:
    return np.array([[kind, 0, 0]], dtype=np.float32)


def _installed_daemon(start_daemon, short_tmp: Path):  # type: ignore[no-untyped-def]
    """A daemon with the scale plugin installed from git and an in-process torch model `affine` (y = 2x)."""
    specs = affine_specs(short_tmp, 2.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    repo = short_tmp / "scale"
    commit(repo, scale_files(2.5))
    daemon = start_daemon(specs)
    added = daemon.warm("add", str(repo))
    assert added.returncode == 0, added.stderr
    return daemon


def test_a_crashing_adapter_fails_its_model_only_and_restarts_on_the_next_request(start_daemon,
                                                                                  short_tmp: Path) -> None:
    daemon = _installed_daemon(start_daemon, short_tmp)
    x4 = np.ones((1, 4), np.float32)
    with daemon.client() as c:
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)
        first = runner_pids(daemon.proc.pid)
        assert len(first) == 1
        events = c.watch(kinds=["model.unloaded"], model="scale")
        for fault, status in ((3, "status 3"), (11, "status -11 (SIGSEGV)")):
            try:
                c.infer("scale", {"x": _fault(fault)})
                raise AssertionError("the crash was not reported")
            except WarmdError as err:
                assert err.code == Code.PROVIDER_FAILED, err
                assert f"scale: its runner process exited with status {status.split('status ')[1]}" in err.message
                assert "the next request starts a new one" in err.message
            assert next(events).reason == "exited"
            # the daemon and the other models serve on
            assert daemon.proc.poll() is None
            assert np.array_equal(c.infer("affine", {"x": x4}).outputs["y"], 2 * x4)
            # the next request starts a new runner
            assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)
            again = runner_pids(daemon.proc.pid)
            assert len(again) == 1 and again != first
            first = again
        assert c.get("scale").state == pb.READY


def test_a_runner_streams_and_takes_its_requests_in_turn(start_daemon, short_tmp: Path) -> None:
    daemon = _installed_daemon(start_daemon, short_tmp)
    with daemon.client() as c:
        chunks = list(c.infer_stream("scale", {"x": _fault(5)}))
        assert "".join(ch.text for ch in chunks) == "step 0 step 1 step 2 "
        assert [ch.progress for ch in chunks if ch.progress] == [(1, 3, "frames"), (2, 3, "frames"), (3, 3, "frames")]
        assert np.array_equal(chunks[-1].result.outputs["y"], 2.5 * _fault(5))
        with ThreadPoolExecutor(8) as pool:
            batches = [np.full((1, 3), 20 + i, np.float32) for i in range(16)]   # no fault values
            outputs = list(pool.map(lambda x: c.infer("scale", {"x": x}).outputs["y"], batches))
        assert all(np.array_equal(y, 2.5 * x) for x, y in zip(batches, outputs))
        assert len(runner_pids(daemon.proc.pid)) == 1


def test_unload_kills_the_runner(start_daemon, short_tmp: Path) -> None:
    daemon = _installed_daemon(start_daemon, short_tmp)
    with daemon.client() as c:
        c.load("scale")
        [pid] = runner_pids(daemon.proc.pid)
        assert Path(f"/proc/{pid}").exists()
        c.unload("scale")
        assert not Path(f"/proc/{pid}").exists()       # gone, and reaped: its memory is the system's again
        assert runner_pids(daemon.proc.pid) == []
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)
        assert len(runner_pids(daemon.proc.pid)) == 1
    assert daemon.terminate() == 0                      # shutdown unloads: no runner outlives the daemon
    assert not any(Path(f"/proc/{p}").exists() for p in runner_pids(daemon.proc.pid))


def test_cancel_and_deadlines_reach_the_runner(start_daemon, short_tmp: Path) -> None:
    daemon = _installed_daemon(start_daemon, short_tmp)
    with daemon.client() as c:
        c.load("scale")
        [pid] = runner_pids(daemon.proc.pid)
        # a deadline: the adapter's context.check() stops it, the runner stays
        with Client(daemon.socket, timeout=1.0) as hurried:
            t0 = time.monotonic()
            assert error_code(lambda: hurried.infer("scale", {"x": _fault(7)})) == Code.DEADLINE_EXCEEDED
        t0 = time.monotonic()
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)
        assert time.monotonic() - t0 < 5 and runner_pids(daemon.proc.pid) == [pid]
        # a cancel (the caller leaves a stream): the same
        stub = warmd_pb2_grpc.WarmdStub(grpc.insecure_channel(f"unix:{daemon.socket}"))
        call = stub.InferStream(pb.InferRequest(model="scale", inputs=[tensors.to_proto("x", _fault(7))]))
        wait_until(lambda: c.status().resident[0].residency.in_flight == 1, timeout=10)
        call.cancel()
        wait_until(lambda: c.status().resident[0].residency.in_flight == 0, timeout=5)
        assert runner_pids(daemon.proc.pid) == [pid]
        # an adapter that ignores both is killed after a grace period; the next request has a new runner
        with Client(daemon.socket, timeout=1.0) as hurried:
            t0 = time.monotonic()
            assert error_code(lambda: hurried.infer("scale", {"x": _fault(9)})) == Code.DEADLINE_EXCEEDED
        wait_until(lambda: pid not in runner_pids(daemon.proc.pid), timeout=10)
        assert time.monotonic() - t0 < 10                     # not the 60 s the adapter sleeps
        assert np.array_equal(c.infer("scale", {"x": X}).outputs["y"], 2.5 * X)
        assert len(runner_pids(daemon.proc.pid)) == 1
    assert "did not stop within 2s of a cancel; killed" in daemon.log()


def test_any_spec_may_ask_for_a_process_of_its_own(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 3.0)
    (specs / "inside.yaml").write_text(affine_spec("w.safetensors"))
    (specs / "outside.yaml").write_text(affine_spec("w.safetensors", extra="isolation: process\n"))
    plugin = short_tmp / "plugins" / "mine"
    plugin.mkdir(parents=True)
    (plugin / "adapter.py").write_text(ADAPTER)                  # a folder plugin: in-process by default
    (specs / "factor.json").write_text('{"factor": 5}\n')
    scale = "provider: scale\ndevice: cpu\nsource: {path: factor.json}\n"
    (specs / "folder-in.yaml").write_text(scale)
    (specs / "folder-out.yaml").write_text(scale + "isolation: process\n")
    marker = short_tmp / "imported-by"
    daemon = start_daemon(specs, config={"plugins_dir": str(plugin.parent)}, env={"PLUGIN_MARKER": str(marker)})
    x4 = np.ones((1, 4), np.float32)
    with daemon.client() as c:
        assert np.array_equal(c.infer("outside", {"x": x4}).outputs["y"], 3 * x4)
        assert len(runner_pids(daemon.proc.pid)) == 1
        assert not c.status().torch_imported                   # torch ran in the runner only
        assert np.array_equal(c.infer("inside", {"x": x4}).outputs["y"], 3 * x4)
        assert c.status().torch_imported
        for name in ("folder-in", "folder-out"):
            assert np.array_equal(c.infer(name, {"x": X}).outputs["y"], 5 * X)
        assert len(runner_pids(daemon.proc.pid)) == 2
        assert c.get("outside").signature != c.get("inside").signature
    pids = [int(p) for p in marker.read_text().split()]
    assert daemon.proc.pid in pids and len(set(pids)) == 2      # imported in the daemon and in the runner
