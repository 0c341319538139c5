"""CUDA shared memory's checks that need no GPU: handles, sizes, windows, dtypes, and the answer without a
device (the GPU path itself is tests/gpu/test_cuda_shm.py)."""
from __future__ import annotations

import pytest

from warmd import cudashm
from warmd.errors import Code, WarmdError

torch = pytest.importorskip("torch")


class _HostMapping:
    """A mapping over host memory: what a window does with a real one, minus the GPU."""

    def __init__(self, size: int) -> None:
        self.memory = torch.arange(size, dtype=torch.uint8)

    def view(self, offset: int, byte_size: int):  # type: ignore[no-untyped-def]
        return self.memory[offset:offset + byte_size]


def _code(call) -> Code:  # type: ignore[no-untyped-def]
    with pytest.raises(WarmdError) as info:
        call()
    return info.value.code


def test_registration_is_checked_before_any_cuda_call() -> None:
    registry = cudashm.CudaSharedMemoryRegistry()
    assert _code(lambda: registry.register("me", "r", b"\0" * 63, 0, 16)) is Code.INVALID_ARGUMENT
    assert _code(lambda: registry.register("me", "r", b"\0" * 64, 0, 0)) is Code.INVALID_ARGUMENT
    assert _code(lambda: registry.register("me", "", b"\0" * 64, 0, 16)) is Code.INVALID_ARGUMENT


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_nothing_registers_and_the_rest_answers() -> None:
    registry = cudashm.CudaSharedMemoryRegistry()
    assert _code(lambda: registry.register("me", "r", b"\0" * 64, 0, 16)) is Code.DEVICE_UNAVAILABLE
    registry.unregister("me")
    assert registry.status("me") == [] and not registry.has("me", "r")
    assert _code(lambda: registry.status("me", "r")) is Code.INVALID_ARGUMENT


def test_windows_stay_inside_their_region() -> None:
    region = cudashm.CudaRegion("r", 0, 16, "me", _HostMapping(16))   # type: ignore[arg-type]
    assert region.window(4, 8, "input 'x'").tolist() == list(range(4, 12))
    for offset, size in ((12, 8), (-1, 4), (0, 17)):
        with pytest.raises(WarmdError, match="lies outside CUDA shared-memory region 'r'"):
            region.window(offset, size, "input 'x'")


def test_a_window_becomes_the_tensor_it_holds_in_place() -> None:
    memory = torch.tensor([1.5, -2.0, 3.0, 4.0]).view(torch.uint8)
    tensor = cudashm.as_tensor("x", "FP32", [2, 2], memory)
    assert tensor.tolist() == [[1.5, -2.0], [3.0, 4.0]] and tensor.data_ptr() == memory.data_ptr()
    assert cudashm.as_tensor("h", "BF16", [8], memory).dtype == torch.bfloat16
    assert cudashm.dtype_name("y", tensor) == "FP32"
    with pytest.raises(WarmdError, match="needs 12 bytes, got 16"):
        cudashm.as_tensor("x", "FP32", [3], memory)
    with pytest.raises(WarmdError, match="unknown dtype 'FP8'"):
        cudashm.as_tensor("x", "FP8", [16], memory)
    assert cudashm.is_tensor(tensor) and not cudashm.is_tensor(memory.numpy())
