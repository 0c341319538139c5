"""Triton's own gRPC client examples, unchanged (tests/from_triton/examples, pinned: see its README),
against Triton's example model repository written as warmd specs (tests/from_triton/repository, plus the
provider plugin in tests/from_triton/plugins), all over the daemon's Unix socket (`-u unix:/path`), run by
tritonclient 2.73.0 in its own environment. Each example prints its own PASS; the documented differences
(README, Open Inference Protocol) are asserted as what they print instead.

One daemon serves the module, as one Triton serves Triton's own runs of these examples.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DaemonProcess
from triton_repository import TRITON, build_repository, run, start
from tritonclient_run import triton

MODELS = ["densenet_onnx", "inception_graphdef", "simple", "simple_dyna_sequence", "simple_identity",
          "simple_int8", "simple_sequence", "simple_string"]

# example -> the line it prints when it passes
PASSING = {
    "grpc_client.py": "PASS",
    "grpc_explicit_byte_content_client.py": "PASS: explicit string",
    "grpc_explicit_int8_content_client.py": "PASS: explicit int8",
    "grpc_explicit_int_content_client.py": "PASS: explicit int",
    "simple_grpc_aio_infer_client.py": "PASS: grpc aio infer",
    "simple_grpc_aio_sequence_stream_infer_client.py": "PASS: grpc aio sequence stream",
    "simple_grpc_async_infer_client.py": "PASS: Async infer",
    "simple_grpc_custom_args_client.py": "PASS: CustomArgs",
    "simple_grpc_infer_client.py": "PASS: infer",
    "simple_grpc_keepalive_client.py": "PASS: KeepAlive",
    "simple_grpc_sequence_stream_infer_client.py": "PASS: Sequence",
    "simple_grpc_sequence_sync_infer_client.py": "PASS: Sequence",
    "simple_grpc_shm_client.py": "PASS: system shared memory",
    "simple_grpc_shm_string_client.py": "PASS: system shared memory",
    "simple_grpc_string_infer_client.py": "PASS: string",
}
# The sequence examples' -d runs need simple_string_dyna_sequence (a QA model of Triton's) besides the
# example repository's simple_dyna_sequence.
DYNA = ["simple_grpc_aio_sequence_stream_infer_client.py", "simple_grpc_sequence_stream_infer_client.py",
        "simple_grpc_sequence_sync_infer_client.py"]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with tempfile.TemporaryDirectory(prefix="wd") as tmp:
        root = Path(tmp)
        served = start(root, *build_repository(root))
        try:
            yield served
        finally:
            served.terminate()


def _passed(result: subprocess.CompletedProcess, line: str) -> bool:
    return result.returncode == 0 and line in result.stdout.splitlines()


@pytest.mark.parametrize("example", sorted(PASSING))
def test_example_passes(daemon: DaemonProcess, example: str) -> None:
    result = run(daemon, example)
    assert _passed(result, PASSING[example]), \
        f"{example} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr}"


def test_reuse_infer_objects_client_validates_every_round(daemon: DaemonProcess) -> None:
    """It prints no PASS line: each of its three rounds (shared memory, messages, shared memory again) ends
    with END after checking all 16 sums and differences, and it exits 1 on a wrong one."""
    result = run(daemon, "reuse_infer_objects_client.py", "-i", "grpc")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.count("======== END ========") == 3
    assert result.stdout.count("======== SHARED_MEMORY ========") == 2


def test_the_repository_is_triton_s_eight_models(daemon: DaemonProcess) -> None:
    out = triton(f"unix:{daemon.socket}", """
        out["models"] = sorted(m.name for m in client.get_model_repository_index().models)
    """)
    assert out["models"] == MODELS


def test_health_metadata_differs_only_in_the_server_name(daemon: DaemonProcess) -> None:
    """simple_grpc_health_metadata.py asserts the server calls itself `triton`; warmd says `warmd`. Its
    checks before that pass (it would print another FAILED line), and the snippet runs the ones after."""
    result = run(daemon, "simple_grpc_health_metadata.py")
    assert result.returncode == 1 and result.stdout.splitlines()[-1] == "FAILED : get_server_metadata"
    out = triton(f"unix:{daemon.socket}", """
        out["name"] = client.get_server_metadata().name
        out["model"] = client.get_model_metadata("simple", headers={"test": "1", "dummy": "2"}).name
        try:
            client.get_model_metadata("wrong_model_name")
        except InferenceServerException as ex:
            out["unknown"] = ex.message()
        out["config"] = client.get_model_config("simple").config.name
    """)
    assert out["name"] == "warmd" and out["model"] == "simple" and out["config"] == "simple"
    assert "Request for unknown model" in out["unknown"]


def test_model_control_differs_only_on_file_overrides(daemon: DaemonProcess) -> None:
    """simple_grpc_model_control.py: the index, load, the refused and the accepted config override (then
    ModelConfig says max_batch_size 16) and unload pass; then it sends a `file:` override and wants Triton's
    INTERNAL "failed to poll from model repository". warmd refuses file overrides as invalid_argument (it
    never writes model files from a request), so the example stops there; the snippet runs what follows."""
    result = run(daemon, "simple_grpc_model_control.py")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == ("FAILED: expected status 'StatusCode.INTERNAL' for oversized file "
                                              "parameter, got status='StatusCode.INVALID_ARGUMENT'")
    out = triton(f"unix:{daemon.socket}", """
        out["live"] = client.is_server_live()
        try:
            client.load_model("wrong_model_name")
        except InferenceServerException as e:
            out["wrong"] = e.message()
        out["ready"] = client.is_model_ready("simple")
        out["batch"] = client.get_model_config("simple").config.max_batch_size
    """)
    assert out["live"] and "failed to load" in out["wrong"]
    assert not out["ready"] and out["batch"] == 8      # unloaded, and the override went with it


def test_custom_repeat_needs_a_decoupled_model(daemon: DaemonProcess) -> None:
    """simple_grpc_custom_repeat.py streams to `repeat_int32`, a decoupled model (one request, many
    responses) from Triton's backend examples, not the example repository: warmd serves no decoupled models."""
    result = run(daemon, "simple_grpc_custom_repeat.py")
    assert result.returncode == 1 and "Request for unknown model" in result.stdout


def test_sequence_examples_with_dynamic_sequences() -> None:
    """The sequence examples' -d runs: simple_dyna_sequence (correlation id added on the last request) and
    simple_string_dyna_sequence (string ids, running sums)."""
    with tempfile.TemporaryDirectory(prefix="wd") as tmp:
        root = Path(tmp)
        specs, plugins = build_repository(root)
        shutil.copy(TRITON / "qa" / "simple_string_dyna_sequence.yaml", specs)
        served = start(root, specs, plugins)
        try:
            for example in DYNA:
                result = run(served, example, "-d")
                assert _passed(result, PASSING[example]), f"{example} -d:\n{result.stdout[-3000:]}\n{result.stderr}"
        finally:
            served.terminate()
