"""Cluster mode on a real GPU (skipped without one): `--gpus-per-replica 1` gives the replica the GPU Ray
would otherwise hide from it, `device: auto` takes it, and the front gets the model's answers from there.

Run on a machine with a GPU:  .venv/bin/python -m pytest -m gpu tests/gpu -v
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import isolated_env
from models import affine_spec, write_affine_weights, write_factory
from nvml import has_gpu
from raycluster import LocalRay

pytestmark = [pytest.mark.gpu, pytest.mark.cluster]

if not has_gpu():
    pytest.skip("no NVIDIA GPU on this machine", allow_module_level=True)


def test_a_replica_with_a_gpu_runs_the_model_there(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    write_factory(specs)
    write_affine_weights(specs / "a.safetensors", 3.0)
    (specs / "a.yaml").write_text(affine_spec("a.safetensors", extra="placement: cluster\n").replace(
        "device: cpu", "device: auto"))
    with tempfile.TemporaryDirectory(prefix="wc") as root, LocalRay(cpus=2, env=isolated_env(Path(root))) as ray:
        def warmd(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "warmd", "cluster", *args, "--address", ray.address],
                                  env=ray.env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            return done.stdout

        warmd("deploy", "--specs", str(specs), "--gpus-per-replica", "1")
        front = start_daemon(specs, config={"cluster": ray.address}, env=ray.variables)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        with front.client() as c:
            assert np.array_equal(c.infer("a", {"x": x}).outputs["y"], 3 * x)
        [replica] = json.loads(warmd("status", "--json"))["replicas"].values()
        assert replica["devices"] == {"a": "cuda:0"}
        warmd("delete")
