"""CUDA shared memory on a real GPU (skipped without one): Triton's simple_grpc_cudashm_client.py, unchanged,
against `simple` on cuda:0 and on the CPU; a torch model reads its input in place, in the client's memory;
ownership and bounds are checked as for system shared memory.

Needs cuda-bindings in .venv (`warmd[cuda]`) and cuda-python in .venv-tritonclient; .ci/gpu installs both.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device on this machine", allow_module_level=True)

from triton_repository import build_repository, run, start  # noqa: E402
from tritonclient_run import triton  # noqa: E402
from waiting import free_port  # noqa: E402

pytestmark = pytest.mark.gpu

IN_PLACE = textwrap.dedent('''
    import torch


    class AddOneInPlace(torch.nn.Module):
        """Writes into its input, which no real model may do: here it shows the input is the caller's memory."""

        def forward(self, x):
            x.add_(1)
            return x * 2
''')


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_triton_cudashm_example_passes(short_tmp: Path, device: str) -> None:
    specs, plugins = build_repository(short_tmp)
    simple = specs / "simple.yaml"
    simple.write_text(simple.read_text().replace("device: cpu", f"device: {device}"))
    daemon = start(short_tmp, specs, plugins)
    try:
        result = run(daemon, "simple_grpc_cudashm_client.py")
        assert result.returncode == 0 and result.stdout.splitlines()[-1] == "PASS: cudashm", \
            result.stdout[-3000:] + result.stderr
    finally:
        daemon.terminate()


def test_inputs_are_read_in_place_and_regions_are_checked(short_tmp: Path) -> None:
    specs, plugins = build_repository(short_tmp)
    (specs / "inplace.py").write_text(IN_PLACE)
    (specs / "inplace.yaml").write_text(
        "provider: torch\ndevice: cuda:0\nsource: {path: empty.safetensors}\n"
        "options: {factory: 'inplace.py:AddOneInPlace'}\n"
        "inputs: [{name: x, dtype: FP32, shape: [-1]}]\noutputs: [{name: y, dtype: FP32, shape: [-1]}]\n")
    port = free_port()
    daemon = start(short_tmp, specs, plugins, args=("--tcp", f"127.0.0.1:{port}"))
    token = (Path(daemon.env["XDG_CONFIG_HOME"]) / "warmd" / "token").read_text().strip()
    try:
        out = triton(f"unix:{daemon.socket}", f"""
            import tritonclient.utils.cuda_shared_memory as cudashm
            x = np.arange(1024, dtype=np.float32)
            h_in = cudashm.create_shared_memory_region("in", x.nbytes, 0)
            h_out = cudashm.create_shared_memory_region("out", x.nbytes, 0)
            cudashm.set_shared_memory_region(h_in, [x])
            client.register_cuda_shared_memory("in", cudashm.get_raw_handle(h_in), 0, x.nbytes)
            client.register_cuda_shared_memory("out", cudashm.get_raw_handle(h_out), 0, x.nbytes)
            out["status"] = sorted((r.name, r.device_id, r.byte_size)
                                   for r in client.get_cuda_shared_memory_status().regions.values())
            inp = grpcclient.InferInput("x", [1024], "FP32"); inp.set_shared_memory("in", x.nbytes)
            want = grpcclient.InferRequestedOutput("y"); want.set_shared_memory("out", x.nbytes)
            client.infer("inplace", [inp], outputs=[want])
            out["in_after"] = cudashm.get_contents_as_numpy(h_in, np.float32, [1024])[:3]
            out["y"] = cudashm.get_contents_as_numpy(h_out, np.float32, [1024])[:3]
            shifted = grpcclient.InferInput("x", [1024], "FP32")
            shifted.set_shared_memory("in", x.nbytes, offset=4)
            for case, call in {{
                "too_big": lambda: client.register_cuda_shared_memory(
                    "big", cudashm.get_raw_handle(h_in), 0, 2 * x.nbytes),
                "outside": lambda: client.infer("inplace", [shifted]),
                "taken": lambda: client.register_system_shared_memory("in", "/nope", 4),
            }}.items():
                try:
                    call()
                    out[case] = "accepted"
                except InferenceServerException as exc:
                    out[case] = [exc.status(), exc.message()]
            other = grpcclient.InferenceServerClient(url="127.0.0.1:{port}")
            out["other"] = list(other.get_cuda_shared_memory_status(
                headers={{"authorization": "Bearer {token}"}}).regions)
            client.unregister_cuda_shared_memory()
            out["after"] = list(client.get_cuda_shared_memory_status().regions)
            cudashm.destroy_shared_memory_region(h_in)
            cudashm.destroy_shared_memory_region(h_out)
        """)
    finally:
        daemon.terminate()
    assert out["status"] == [["in", 0, 4096], ["out", 0, 4096]]
    assert out["in_after"] == [1.0, 2.0, 3.0]          # the model's in-place write reached the client's memory
    assert out["y"] == [2.0, 4.0, 6.0]
    assert out["too_big"][0] == "StatusCode.INVALID_ARGUMENT" and "beyond the end" in out["too_big"][1]
    assert out["outside"][0] == "StatusCode.INVALID_ARGUMENT" and "lies outside" in out["outside"][1]
    assert out["taken"][0] == "StatusCode.INVALID_ARGUMENT" and "already registered" in out["taken"][1]
    assert out["other"] == [] and out["after"] == []
