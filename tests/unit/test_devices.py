"""NVML is asked for GPUs only where an NVIDIA driver shows itself (warmd.devices.DRIVER_MARKS)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from warmd import devices


def _fake_nvml(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: calls.append("init")                                    # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 1                                             # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i                                   # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30, free=70 * 2**30)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return calls


@pytest.mark.skipif(sys.platform != "linux", reason="the driver's marks are Linux paths")
def test_without_a_driver_nvml_is_not_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_nvml(monkeypatch)
    monkeypatch.setattr(devices, "DRIVER_MARKS", (str(tmp_path / "version"),))
    assert devices._nvml_totals() == [] and calls == []
    (tmp_path / "version").write_text("NVRM version: 550\n")                     # the driver is loaded
    assert devices._nvml_totals() == [80 * 2**30] and calls == ["init"]
