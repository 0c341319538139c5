"""What devices exist. Today: the CPU and CUDA devices as torch sees them (torch is imported only here,
and only when a load needs a placement decision)."""
from __future__ import annotations

import re

from warmd.errors import Code, WarmdError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve(requested: str) -> str:
    """A concrete device for a spec's `device`: auto picks cuda:0 when there is a GPU, else cpu.

    Raises:
        WarmdError: `device_unavailable` when a CUDA device is asked for and does not exist.
    """
    if requested == "cpu":
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "auto":
        return "cuda:0" if count else "cpu"
    match = _CUDA.match(requested)
    index = int(match.group(1) or 0) if match else -1
    if not 0 <= index < count:
        raise WarmdError(Code.DEVICE_UNAVAILABLE, f"device {requested!r} is not available here "
                         f"({count} CUDA device(s)); set `device: auto` or `device: cpu` in the spec")
    return f"cuda:{index}"
