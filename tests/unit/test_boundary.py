"""The inference boundary's rules without a daemon: how provider exceptions are classified, how declared
input dtypes are conformed, and how a gRPC size refusal reads on the client."""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from warmd.config import load_settings
from warmd.errors import Code, WarmdError, from_rpc_error
from warmd.inference import provider_error
from warmd.providers import InferRequest
from warmd.providers.base import conform_inputs
from warmd.spec import ModelSpec, Source, TensorDecl

SPEC = ModelSpec(name="m", file=Path("m.yaml"), source=Source("path", "/x"), provider="torch",
                 inputs=(TensorDecl("x", "FP32", (-1, 4)), TensorDecl("ids", "INT64", (-1,)),
                         TensorDecl("text", "BYTES", (-1,))))


class OutOfMemoryError(RuntimeError):
    """Named as torch's (torch.OutOfMemoryError): recognised without importing torch."""


@pytest.mark.parametrize("exc,code", [
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x3 and 4x4)"), Code.INVALID_ARGUMENT),
    (RuntimeError("mat1 and mat2 must have the same dtype, but got Long and Float"), Code.INVALID_ARGUMENT),
    (TypeError("forward() takes 2 positional arguments but 3 were given"), Code.INVALID_ARGUMENT),
    (IndexError("index out of range in self"), Code.INVALID_ARGUMENT),
    (OutOfMemoryError("Tried to allocate 2.00 GiB"), Code.INSUFFICIENT_MEMORY),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), Code.INSUFFICIENT_MEMORY),
    (MemoryError(), Code.INSUFFICIENT_MEMORY),
    (KeyError("oops"), Code.PROVIDER_FAILED),
    (AttributeError("'NoneType' object has no attribute 'shape'"), Code.PROVIDER_FAILED),   # a bug, not input
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), Code.PROVIDER_FAILED),
])
def test_provider_exceptions_are_classified(exc: Exception, code: Code) -> None:
    request = InferRequest(tensors={"x": np.ones((1, 3), np.int64)})
    err = provider_error(SPEC, request, exc)
    assert err.code is code and type(exc).__name__ in err.message
    if code is Code.INVALID_ARGUMENT:
        assert "given x INT64 [1, 3]" in err.message and "declares x FP32 [-1, 4]" in err.message


def test_declared_dtypes_convert_exactly_or_are_refused() -> None:
    got = conform_inputs(SPEC, {"x": np.ones((2, 4), np.float16), "ids": np.arange(3, dtype=np.int32),
                                "other": np.ones(2, np.int8)})
    assert got["x"].dtype == np.float32 and got["ids"].dtype == np.int64 and got["other"].dtype == np.int8
    given = {"x": np.ones((2, 4), np.float16)}
    assert conform_inputs(SPEC, given)["x"].dtype == np.float32 and given["x"].dtype == np.float16   # a copy
    fitting = {"x": np.ones((2, 4), np.float32), "other": np.ones(2, np.int8)}
    assert conform_inputs(SPEC, fitting) is fitting       # nothing to convert: no copy on the call path
    for bad, name in ((np.ones((1, 4), np.int64), "INT64"), (np.ones((1, 4), np.float64), "FP64"),
                      (np.ones((1, 4), np.uint32), "UINT32")):
        with pytest.raises(WarmdError) as info:
            conform_inputs(SPEC, {"x": bad})
        assert info.value.code is Code.INVALID_ARGUMENT
        assert f"input 'x' is {name}; model 'm' declares FP32" in info.value.message
    with pytest.raises(WarmdError) as info:
        conform_inputs(SPEC, {"ids": np.ones(3, np.uint64)})           # not every UINT64 fits INT64
    assert "INT32" in info.value.message                               # listed among the exact ones
    with pytest.raises(WarmdError) as info:
        conform_inputs(SPEC, {"x": np.ones((1, 5), np.float32)})
    assert "declares [-1, 4]" in info.value.message


class _Refused(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()


@pytest.mark.parametrize("details,needles", [
    ("SERVER: Received message larger than max (2000000 vs. 1048576)",
     ["request is 1.9 MiB (2000000 bytes)", "daemon's limit of 1.0 MiB", "max_message_bytes"]),
    ("SERVER: Sent message larger than max (70000000 vs. 67108864)", ["response is", "max_message_bytes"]),
    ("CLIENT: Sent message larger than max (300000000 vs. 268435456)", ["request is", "this client's limit"]),
    ("Stream removed (CLIENT: Received message larger than max (5 vs. 4))", ["response is", "client's limit"]),
])
def test_a_message_over_a_size_limit_is_invalid_argument_naming_the_limit(details: str, needles: list[str]) -> None:
    err = from_rpc_error(_Refused(details))
    assert err.code is Code.INVALID_ARGUMENT and all(n in err.message for n in needles), err.message


def test_a_resource_exhausted_without_size_details_stays_busy() -> None:
    assert from_rpc_error(_Refused("too many requests")).code is Code.BUSY


def test_max_message_bytes_takes_sizes(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("max_message_bytes: 1MiB\n")
    assert load_settings(tmp_path / "c.yaml", env={}).max_message_bytes == 2**20
    assert load_settings(tmp_path / "c.yaml", env={"WARMD_MAX_MESSAGE_BYTES": "128MiB"}).max_message_bytes == 128 * 2**20


def test_torch_outputs_that_require_grad_leave_as_numpy() -> None:
    import torch

    from warmd.providers.torch import _output

    weight = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))    # a forward returning it
    with torch.inference_mode(False), torch.enable_grad():
        made = weight * 2                                                              # or grad turned back on
    for value, expected in ((weight, np.arange(6).reshape(2, 3)), (made, 2 * np.arange(6).reshape(2, 3))):
        out = _output(value, on_device=False)
        assert isinstance(out, np.ndarray) and np.array_equal(out, expected)
