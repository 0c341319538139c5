"""NVML is asked for GPUs only where NVIDIA hardware or its driver shows itself (warmd.devices.DRIVER_MARKS)."""
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
    monkeypatch.setattr(devices, "PCI_DEVICES", str(tmp_path / "pci"))
    (tmp_path / "pci" / "0000:00:02.0").mkdir(parents=True)
    (tmp_path / "pci" / "0000:00:02.0" / "vendor").write_text("0x8086\n")       # an Intel device only
    assert devices._nvml_totals() == [] and calls == []
    (tmp_path / "version").write_text("NVRM version: 550\n")                     # the driver is loaded
    assert devices._nvml_totals() == [80 * 2**30] and calls == ["init"]
    (tmp_path / "version").unlink()
    (tmp_path / "pci" / "0000:01:00.0").mkdir()
    (tmp_path / "pci" / "0000:01:00.0" / "vendor").write_text("0x10de\n")       # an NVIDIA card, module not loaded
    assert devices._nvml_totals() == [80 * 2**30] and calls == ["init", "init"]
