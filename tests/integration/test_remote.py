"""The remote provider: a model served by a second warmd, reached over the Open Inference Protocol."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import affine_spec, affine_specs
from waiting import free_port, wait_until
from warm import Code, WarmdError


def test_remote_model_through_a_second_daemon(start_daemon, short_tmp: Path) -> None:
    (short_tmp / "b").mkdir()
    specs_b = affine_specs(short_tmp / "b", 5.0)
    (specs_b / "affine.yaml").write_text(affine_spec("w.safetensors"))
    port = free_port()
    remote = start_daemon(specs_b, root=short_tmp / "b", args=("--tcp", f"127.0.0.1:{port}"))
    token = (short_tmp / "b" / "config" / "warmd" / "token").read_text().strip()

    specs_a = short_tmp / "specs"
    specs_a.mkdir()
    (specs_a / "far.yaml").write_text(f"provider: remote\nsource: {{remote: '127.0.0.1:{port}', model: affine, "
                                      "token_env: B_TOKEN}\n")
    (specs_a / "nowhere.yaml").write_text("provider: remote\nsource: {remote: 'unix:/nonexistent/x.sock'}\n")
    local = start_daemon(specs_a, env={"B_TOKEN": token})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with local.client() as c:
        states = {m["name"]: m["files"]["state"] for m in json.loads(local.warm("ls", "--json").stdout)["models"]}
        assert states == {"far": "remote live", "nowhere": "remote unreachable"}
        assert np.array_equal(c.infer("far", {"x": x}).outputs["y"], 5 * x)
        with pytest.raises(WarmdError) as info:                 # the remote's own error code comes back
            c.infer("far", {"x": np.ones((1, 3), np.float32)})
        assert info.value.code is Code.INVALID_ARGUMENT and "remote 127.0.0.1" in info.value.message
        with pytest.raises(WarmdError) as info:
            c.infer("nowhere", {"x": x})
        assert info.value.code is Code.UNAVAILABLE
        remote.kill()
        with pytest.raises(WarmdError) as info:
            c.infer("far", {"x": x})
        assert info.value.code is Code.UNAVAILABLE
        wait_until(lambda: json.loads(local.warm("ls", "--json").stdout)["models"][0]["files"]["state"]
                   == "remote unreachable", timeout=15)
        assert c.status().pid == local.proc.pid                  # the local daemon is unaffected
