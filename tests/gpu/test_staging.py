"""The pinned-staging loader and the host tier's storage moves, on a real GPU (skipped without one)."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device on this machine", allow_module_level=True)

from safetensors.torch import load_file, save_file  # noqa: E402

from warmd.errors import WarmdError  # noqa: E402
from warmd.providers import staging  # noqa: E402

pytestmark = pytest.mark.gpu


def _mixed(tmp_path: Path) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(7)
    tensors = {
        "odd": torch.randint(0, 255, (3,), generator=g, dtype=torch.uint8),   # leaves the next offset unaligned
        "w": torch.randn(1000, 333, generator=g),
        "h": torch.randn(77, 5, generator=g).to(torch.float16),
        "b": torch.randn(4096, generator=g).to(torch.bfloat16),
        "i": torch.randint(-2**40, 2**40, (129,), generator=g, dtype=torch.int64),
        "mask": torch.rand(31, generator=g) > 0.5,
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("chunk", [4096, 1 << 20, 64 << 20])
def test_loaded_tensors_equal_the_file(tmp_path: Path, chunk: int) -> None:
    path, expected = _mixed(tmp_path)
    got = staging.load_to_device(path, "cuda:0", readers=3, chunk=chunk)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].device.type == "cuda"
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
        assert torch.equal(got[name].cpu(), tensor), name


def test_precision_converts_floats_only(tmp_path: Path) -> None:
    path, expected = _mixed(tmp_path)
    got = staging.load_to_device(path, "cuda:0", torch.float16)
    assert got["w"].dtype == torch.float16 and torch.equal(got["w"].cpu(), expected["w"].half())
    assert got["i"].dtype == torch.int64 and got["mask"].dtype == torch.bool


def test_same_as_safetensors_for_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({f"l{i}": torch.randn(2048, 2048) for i in range(40)}, str(path))   # 640 MiB, many chunks
    got = staging.load_to_device(path, "cuda:0")
    reference = load_file(str(path), device="cuda:0")
    assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path, _ = _mixed(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(WarmdError, match="shorter than its header"):
        staging.load_to_device(path, "cuda:0")


def test_park_and_unpark_keep_values_views_and_ties() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 300)).cuda()
    module[1].weight = torch.nn.Parameter(module[0].weight.t())     # tied: one storage, two views
    before = {k: v.clone() for k, v in module.state_dict().items()}
    tensors = [*module.parameters(), *module.buffers()]
    staging.park(tensors)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in module.parameters())
    staging.unpark(tensors, "cuda:0")
    after = module.state_dict()
    assert all(after[k].device.type == "cuda" and torch.equal(after[k], v) for k, v in before.items())
    assert module[1].weight.data_ptr() == module[0].weight.data_ptr()
