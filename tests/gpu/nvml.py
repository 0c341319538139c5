"""NVML look-ups the GPU tests share: whether there is an NVIDIA GPU, and how much of its memory is used."""
from __future__ import annotations


def nvml_used(index: int = 0) -> int:
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used


def has_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - no driver, no GPU
        return False
