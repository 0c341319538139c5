"""Cluster mode against a local Ray (2 CPUs, started by this module, stopped also on failure):
`warmd cluster deploy | status | delete`, the front daemon serving cluster-placed specs through Serve
handles, Ray's routing and LRU per replica, V2 answers equal to a local daemon's, a killed replica."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import isolated_env
from hubserver import Hub
from models import affine_spec, write_affine_weights, write_factory
from raycluster import LocalRay
from tritonclient_run import triton
from waiting import wait_until
from warm import Code, WarmdError

pytestmark = pytest.mark.cluster
FAULTY = ("provider: torch\ndevice: cpu\nsource: {path: none.safetensors}\noptions: {factory: 'testmodels.py:Faulty'}\n"
          "inputs: [{name: x, dtype: FP32, shape: [-1, 4]}]\n")


@pytest.fixture(scope="module")
def hub_for_nodes() -> Iterator[Hub]:
    """A hub on 127.0.0.1 that the cluster's nodes download from (their environment is set at start)."""
    with Hub() as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster(hub_for_nodes: Hub) -> Iterator[LocalRay]:
    with tempfile.TemporaryDirectory(prefix="wc") as root:
        # The nodes' per-user folders (data, Hugging Face cache) in the temp dir, as for a daemon.
        env = {**isolated_env(Path(root)), "HF_ENDPOINT": hub_for_nodes.endpoint}
        env.pop("HF_HUB_OFFLINE")
        with LocalRay(cpus=2, env=env) as local:
            local.hf_cache = Path(root) / "cache" / "hf"   # type: ignore[attr-defined]
            yield local


@pytest.fixture
def cluster(ray_cluster: LocalRay) -> Iterator[LocalRay]:
    """The module's Ray, with no warmd application left behind by the test."""
    yield ray_cluster
    warmd(ray_cluster, "cluster", "delete", "--address", ray_cluster.address)


def warmd(ray_cluster: LocalRay, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "warmd", *args], env=ray_cluster.env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def status(ray_cluster: LocalRay) -> dict[str, Any]:
    """`warmd cluster status --json`: the application's state, and its live replicas with the models they
    hold and their load counts."""
    return json.loads(warmd(ray_cluster, "cluster", "status", "--address", ray_cluster.address, "--json").stdout)


def replicas(ray_cluster: LocalRay) -> dict[str, dict[str, Any]]:
    now = status(ray_cluster)
    assert now["state"] == "RUNNING", now
    return now["replicas"]


def replaced(ray_cluster: LocalRay, victim: str) -> bool:
    now = status(ray_cluster)
    return now["state"] == "RUNNING" and len(now["replicas"]) == 2 and victim not in now["replicas"]


def holder(ray_cluster: LocalRay, model: str) -> str | None:
    held = [r for r, entry in replicas(ray_cluster).items() if model in entry["models"]]
    assert len(held) <= 1, held
    return held[0] if held else None


def shown(front, model: str) -> str | None:  # type: ignore[no-untyped-def]
    """The one replica `warm ps` says holds `model` (it reads the cluster's registry), or None."""
    rows = {m["name"]: m["residency"] for m in json.loads(front.warm("ps", "--json").stdout.splitlines()[0])}
    held = re.findall(r"replica (\w+) \(node", rows.get(model, {}).get("location", ""))
    assert len(held) <= 1, rows
    return held[0] if held else None


def specs_folder(root: Path, placement: str = "cluster") -> Path:
    """a, b, c: y = 1x, 2x, 3x; faulty fails on request; frames reports progress. Placed on the cluster unless
    `placement` is ""."""
    from safetensors.numpy import save_file

    specs = root / "specs"
    specs.mkdir()
    write_factory(specs)
    extra = f"placement: {placement}\n" if placement else ""
    for scale, name in enumerate(["a", "b", "c"], start=1):
        write_affine_weights(specs / f"{name}.safetensors", scale)
        (specs / f"{name}.yaml").write_text(affine_spec(f"{name}.safetensors", extra=extra))
    save_file({}, str(specs / "none.safetensors"))
    (specs / "faulty.yaml").write_text(FAULTY + extra)
    (specs / "frames.yaml").write_text(FAULTY.replace("Faulty", "Frames") + extra)  # progress per frame, x * 2
    return specs


def deploy(ray_cluster: LocalRay, specs: Path, replicas_: int = 2, per_replica: int = 1) -> None:
    out = warmd(ray_cluster, "cluster", "deploy", "--address", ray_cluster.address, "--specs", str(specs),
                "--replicas", str(replicas_), "--models-per-replica", str(per_replica)).stdout
    assert f"{replicas_} replica(s)" in out and "(a, b, c, " in out, out


def test_each_model_stays_on_its_replica_and_a_third_evicts_by_lru(cluster, start_daemon, short_tmp) -> None:
    specs = specs_folder(short_tmp)
    deploy(cluster, specs)
    assert [e["models"] for e in replicas(cluster).values()] == [[], []]
    front = start_daemon(specs, config={"cluster": cluster.address}, env=cluster.variables)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with front.client() as c:
        assert np.array_equal(c.infer("a", {"x": x}).outputs["y"], x)
        assert np.array_equal(c.infer("b", {"x": x}).outputs["y"], 2 * x)
        wait_until(lambda: shown(front, "a") and shown(front, "b"), timeout=60, interval=0.2)
        on_a, on_b = shown(front, "a"), shown(front, "b")
        assert on_a != on_b                      # one model per replica: b went to the empty replica
        for _ in range(10):                      # each request goes to the replica holding its model
            assert np.array_equal(c.infer("a", {"x": x}).outputs["y"], x)
            assert np.array_equal(c.infer("b", {"x": x}).outputs["y"], 2 * x)
        now = replicas(cluster)
        assert now[on_a]["models"] == ["a"] and now[on_a]["loads"] == {"a": 1} and now[on_a]["devices"]["a"] == "cpu"
        assert now[on_b]["models"] == ["b"] and now[on_b]["loads"] == {"b": 1}
        [ps] = [m["residency"] for m in json.loads(front.warm("ps", "--json").stdout.splitlines()[0])
                if m["name"] == "a"]
        assert ps["measured_bytes"] == 0 and ps["estimated_bytes"] == 0   # nothing counted against this machine

        assert np.array_equal(c.infer("c", {"x": x}).outputs["y"], 3 * x)
        wait_until(lambda: shown(front, "c"), timeout=60, interval=0.2)
    now = replicas(cluster)
    on_c = holder(cluster, "c")
    other = on_b if on_c == on_a else on_a
    assert on_c in (on_a, on_b)
    evicted = "a" if on_c == on_a else "b"
    assert now[on_c]["models"] == ["c"] and now[on_c]["loads"] == {evicted: 1, "c": 1}   # Ray's LRU made room
    assert now[other]["models"] == ["a" if evicted == "b" else "b"]                      # untouched
    assert sum(now[other]["loads"].values()) == 1
    # the table's row for c names its replica once `warm ps`'s registry snapshot (1 s) has caught up
    row = rf"^ *c +replica {on_c} \(node \w+\) +cluster\b"
    wait_until(lambda: re.search(row, front.warm("ps").stdout, re.M), timeout=60, interval=0.5)


def test_v2_answers_through_the_front_equal_a_local_daemons(cluster, hub_for_nodes: Hub, start_daemon,
                                                            short_tmp) -> None:
    from safetensors.numpy import save_file

    specs = specs_folder(short_tmp, placement="")        # every spec on the cluster by the front's setting
    save_file({"lin.weight": 4 * np.eye(4, dtype=np.float32), "lin.bias": np.zeros(4, np.float32)},
              str(short_tmp / "d.safetensors"))
    weights = (short_tmp / "d.safetensors").read_bytes()
    hub_for_nodes.add_repo("org/affine", {"model.safetensors": weights})
    (specs / "d.yaml").write_text(affine_spec("x").replace("path: x", "hf: org/affine"))   # y = 4x, from the hub
    deploy(cluster, specs, per_replica=5)
    (short_tmp / "local").mkdir()
    local = start_daemon(specs, root=short_tmp / "local", env={"HF_ENDPOINT": hub_for_nodes.endpoint,
                                                               "HF_HUB_OFFLINE": None})
    front = start_daemon(specs, config={"cluster": cluster.address, "placement": "cluster"}, env=cluster.variables)
    body = """
        results = []
        for name, value, shape in [("a", 1.5, [2, 4]), ("b", 2.0, [1, 4]), ("c", -1.0, [3, 4]), ("d", 0.5, [1, 4]),
                                   ("a", 1.0, [1, 3]), ("faulty", 1.0, [1, 4]), ("faulty", 2.0, [1, 4]),
                                   ("faulty", 3.0, [1, 4]), ("nope", 1.0, [1, 4])]:
            x = grpcclient.InferInput("x", shape, "FP32")
            x.set_data_from_numpy(np.full(shape, value, np.float32))
            try:
                reply = client.infer(name, [x])
                results.append({"outputs": {o.name: reply.as_numpy(o.name).tolist()
                                            for o in reply.get_response().outputs}})
            except InferenceServerException as exc:
                results.append({"status": exc.status(), "message": exc.message()})
        out["results"] = results
    """
    here = triton(f"unix:{local.socket}", body, timeout=180)["results"]
    there = triton(f"unix:{front.socket}", body, timeout=180)["results"]
    assert here == there
    assert here[0]["outputs"]["y"] == [[1.5] * 4] * 2 and here[2]["outputs"]["y"] == [[-3.0] * 4] * 3
    assert here[3]["outputs"]["y"] == [[2.0] * 4]
    assert [r.get("status") for r in here[4:]] == ["StatusCode.INVALID_ARGUMENT", "StatusCode.RESOURCE_EXHAUSTED",
                                                  "StatusCode.INTERNAL", None, "StatusCode.NOT_FOUND"]
    # d's weights came from the hub twice: into this machine's cache and into the node's, each verified
    assert hub_for_nodes.served_bytes("model.safetensors") == 2 * len(weights)
    assert list((cluster.hf_cache / "hub" / "models--org--affine" / "snapshots").iterdir())
    with front.client() as c:                             # warmd.v1 sees the replica's codes as its own
        with pytest.raises(WarmdError) as info:
            c.infer("faulty", {"x": 2 * np.ones((1, 4), np.float32)})
        assert info.value.code is Code.PROVIDER_FAILED and "KeyError" in info.value.message
        # a spec the front has and the cluster was not deployed with: the cluster's own model_not_found
        (specs / "late.yaml").write_text(affine_spec("a.safetensors"))
        wait_until(lambda: "late" in {m.name for m in c.list().models}, timeout=30)
        with pytest.raises(WarmdError) as info:
            c.infer("late", {"x": np.ones((1, 4), np.float32)})
        assert info.value.code is Code.MODEL_NOT_FOUND and "cluster deploy" in info.value.message, info.value
        # a stream's progress comes from the replica as it goes, the result last, as from a local daemon
        frames = np.ones((3, 4), np.float32)
        streams = [list(client.infer_stream("frames", {"x": frames})) for client in (c, local.client())]
        for chunks in streams:
            assert [ch.progress for ch in chunks[:-1]] == [(1, 3, "frames"), (2, 3, "frames"), (3, 3, "frames")]
            assert np.array_equal(chunks[-1].result.outputs["output"], 2 * frames)


def test_a_replica_killed_mid_run_is_replaced_and_the_next_request_succeeds(cluster, start_daemon,
                                                                          short_tmp) -> None:
    specs = specs_folder(short_tmp)
    (specs / "slow.yaml").write_text(affine_spec("a.safetensors", delay=30.0, extra="placement: cluster\n"))
    deploy(cluster, specs, per_replica=2)
    front = start_daemon(specs, config={"cluster": cluster.address}, env=cluster.variables)
    x = np.ones((1, 4), np.float32)
    outcome: dict[str, Any] = {}

    def slow_call() -> None:
        with front.client(timeout=120) as c:
            try:
                c.infer("slow", {"x": x})
            except WarmdError as err:
                outcome["code"] = err.code

    caller = threading.Thread(target=slow_call)
    caller.start()
    wait_until(lambda: shown(front, "slow"), timeout=90, interval=0.2)
    victim = shown(front, "slow")
    with front.client() as c:
        wait_until(lambda: any(m.name == "slow" and m.residency.in_flight for m in c.status().resident), timeout=30)
        os.kill(replicas(cluster)[victim]["pid"], signal.SIGKILL)
        caller.join(90)
        assert outcome == {"code": Code.UNAVAILABLE}     # the request that was running there
        wait_until(lambda: replaced(cluster, victim), timeout=120, interval=0.5)
        assert np.array_equal(c.infer("a", {"x": x}).outputs["y"], x)        # the next request succeeds
        assert np.array_equal(c.infer("b", {"x": x}).outputs["y"], 2 * x)


def test_the_readme_cluster_example_runs_as_written(cluster, start_daemon, short_tmp) -> None:
    import yaml

    from conftest import REPO
    from test_readme import blocks, section

    text = section("Cluster mode")
    [commands], [config] = blocks(text, "bash"), blocks(text, "yaml")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=REPO, capture_output=True, text=True,
                          env={**cluster.env, "RAY_ADDRESS": cluster.address}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "deployed 2 model(s)" in done.stdout and done.stdout.count("  replica ") == 2, done.stdout
    settings = {**yaml.safe_load(config), "cluster": cluster.address}
    assert settings["placement"] == "cluster"
    shutil.copytree(REPO / "specs", short_tmp / "specs")
    front = start_daemon(short_tmp / "specs", config=settings, env=cluster.variables)
    out = front.warm("infer", "affine", "--input", "x=[[1,2,3,4]]")
    assert out.returncode == 0 and out.stdout.strip().endswith("[[3. 5. 7. 9.]]"), out.stderr
    wait_until(lambda: re.search(r"^ *affine +replica \w+ \(node \w+\) +cluster\b", front.warm("ps").stdout, re.M),
               timeout=60, interval=0.5)


def test_deploy_refuses_a_broken_specs_folder_and_status_needs_a_cluster(short_tmp: Path) -> None:
    specs = specs_folder(short_tmp)
    (specs / "broken.yaml").write_text("provider: torhc\nsource: {path: a.safetensors}\n")
    env = isolated_env(short_tmp)
    done = subprocess.run([sys.executable, "-m", "warmd", "cluster", "deploy", "--address", "127.0.0.1:9",
                           "--specs", str(specs)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "nothing deployed" in done.stderr and "broken.yaml" in done.stderr and "unsupported_provider" in done.stderr
    done = subprocess.run([sys.executable, "-m", "warmd", "cluster", "status"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "invalid_argument" in done.stderr and "--address" in done.stderr
