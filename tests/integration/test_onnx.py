"""The onnx provider: a model exported in the test, served by ONNX Runtime through the daemon."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from warm import Code, WarmdError


def _export(path: Path):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 64),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return model


def test_onnx_model_matches_torch_and_refuses_bad_inputs(start_daemon, short_tmp: Path) -> None:
    import torch

    specs = short_tmp / "specs"
    specs.mkdir()
    model = _export(specs / "mlp.onnx")
    (specs / "mlp.yaml").write_text("provider: onnx\ndevice: cpu\nsource: {path: mlp.onnx}\noptions: {threads: 1}\n"
                                    "inputs: [{name: x, dtype: FP32, shape: [-1, 64]}]\n")
    daemon = start_daemon(specs)
    x = np.random.default_rng(1).standard_normal((5, 64), dtype=np.float32)
    with daemon.client() as c:
        got = c.infer("mlp", {"x": x}).outputs["y"]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (5, 10) and np.allclose(got, want, atol=1e-5)
        assert c.get("mlp").residency.measured_bytes == (specs / "mlp.onnx").stat().st_size
        for bad in ({"z": x}, {"x": x[:, :10]}, {"x": x.astype(np.float64)}):
            with pytest.raises(WarmdError) as info:
                c.infer("mlp", bad)
            assert info.value.code is Code.INVALID_ARGUMENT, bad.keys()
        assert c.infer("mlp", {"x": x[:1]}).outputs["y"].shape == (1, 10)     # still serving
