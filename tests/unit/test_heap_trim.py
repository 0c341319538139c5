"""The heap trim after big requests (inference.py's _Trimmer) finds glibc's malloc_trim."""
from __future__ import annotations

import platform

import pytest

from warmd import inference


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_trimmer_finds_glibcs_malloc_trim() -> None:
    assert inference._LIBC is not None and inference._LIBC.malloc_trim(0) in (0, 1)
