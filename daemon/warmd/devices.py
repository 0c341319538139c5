"""What memory exists, how much of it is the daemon's to use, and how much is free right now.

Devices: the CPU (host RAM), each NVIDIA GPU NVML reports, and simulated GPUs from the config (for
trying the residency policy without a GPU: they are accounted as GPUs, while the providers put the
tensors in host memory). Nothing here imports torch.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Sequence

from warmd.errors import Code, WarmdError
from warmd.paths import read_or_empty

log = logging.getLogger(__name__)
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
# Where NVIDIA hardware or its driver shows itself on Linux: the loaded kernel module (inside GPU containers
# too), its control device, WSL's GPU bridge, or an NVIDIA device on the PCI bus (NVML's init may load the
# module itself). Without any NVML has nothing to report, and its import (~10 ms of a start) is skipped.
DRIVER_MARKS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")
PCI_DEVICES = "/sys/bus/pci/devices"
NVIDIA_PCI_VENDOR = "0x10de"


@dataclass
class Device:
    name: str                 # "cpu", "cuda:0"
    total: int                # bytes of memory on the device
    budget: int               # bytes the daemon may occupy
    reserve: int = 0          # bytes that must stay free for other programs (GPUs)
    torch_device: str = ""    # where providers put tensors ("cpu" for a simulated GPU)
    simulated: bool = False
    external: int = 0         # simulated only: bytes other programs hold

    @property
    def is_gpu(self) -> bool:
        return is_gpu(self.name)

    def free_outside(self, ours: int) -> int | None:
        """Free memory as the driver/OS reports it (None when unknown); `ours` is what the daemon holds."""
        if self.simulated:
            return self.total - self.external - ours
        index = gpu_index(self.name)
        return None if index is None else _nvml_free(index)


def gpu_index(device: str) -> int | None:
    """The GPU a device name means: "cuda:1" -> 1, "cuda" -> 0 (the first); None for "cpu" (or anything else)."""
    match = _CUDA.match(device)
    return None if match is None else int(match.group(1) or 0)


def is_gpu(device: str) -> bool:
    """Whether a device name ("cpu", "cuda", "cuda:1") is a GPU's."""
    return gpu_index(device) is not None


def budget_bytes(value: float, total: int) -> int:
    """A budget setting: a fraction of the total (0 < value <= 1) or bytes."""
    return int(value * total) if 0 < value <= 1 else int(value)


def inventory(cpu_budget: float, gpu_budget: float, gpu_reserve: int,
              simulated_gpus: Sequence[int] = ()) -> dict[str, Device]:
    """Every device the daemon may place models on, with its budget."""
    ram = _host_ram()
    devices = {"cpu": Device("cpu", ram, budget_bytes(cpu_budget, ram), torch_device="cpu")}
    gpus = [(total, False) for total in _nvml_totals()] + [(total, True) for total in simulated_gpus]
    for index, (total, simulated) in enumerate(gpus):
        name = f"cuda:{index}"
        devices[name] = Device(name, total, min(budget_bytes(gpu_budget, total), total - gpu_reserve),
                               reserve=gpu_reserve, torch_device="cpu" if simulated else name,
                               simulated=simulated)
    return devices


def candidates(requested: str, devices: dict[str, Device]) -> list[Device]:
    """The devices a spec's `device` allows, in no particular order.

    Raises:
        WarmdError: `device_unavailable` when a GPU is asked for that does not exist.
    """
    gpus = [d for d in devices.values() if d.is_gpu]
    if requested == "cpu":
        return [devices["cpu"]]
    if requested == "auto":
        return gpus or [devices["cpu"]]
    match = _CUDA.match(requested)
    if match is None:
        chosen = []
    elif match.group(1) is None:
        chosen = gpus
    else:
        chosen = [d for d in gpus if d.name == f"cuda:{match.group(1)}"]
    if not chosen:
        raise WarmdError(Code.DEVICE_UNAVAILABLE, f"device {requested!r} is not available here "
                         f"({len(gpus)} GPU(s)); set `device: auto` or `device: cpu` in the spec")
    return chosen


def _host_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        log.warning("cannot read the size of host memory; assuming 8 GiB")
        return 8 * 2**30

def _nvml():  # type: ignore[no-untyped-def]
    """pynvml, initialised, or None when there is no NVIDIA driver (or no nvidia-ml-py)."""
    if sys.platform == "linux" and not any(os.path.exists(mark) for mark in DRIVER_MARKS) and not _nvidia_on_pci():
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no driver, no library: no GPUs
        return None


def _nvidia_on_pci() -> bool:
    try:
        with os.scandir(PCI_DEVICES) as found:
            return any(read_or_empty(os.path.join(entry.path, "vendor")) == NVIDIA_PCI_VENDOR for entry in found)
    except OSError:
        return False


def _nvml_totals() -> list[int]:
    nvml = _nvml()
    if nvml is None:
        return []
    return [nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).total
            for i in range(nvml.nvmlDeviceGetCount())]


def _nvml_free(index: int) -> int | None:
    nvml = _nvml()
    if nvml is None:
        return None
    return nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index)).free
