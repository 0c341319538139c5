"""The committed stubs in daemon/warmd/v1 and v2 are exactly what proto/ generates."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    generated = module.generate(tmp_path)
    assert generated
    stale = [str(rel) for rel in generated
             if (tmp_path / rel).read_bytes() != (REPO / "daemon" / rel).read_bytes()]
    assert not stale, f"stubs out of date; run `python proto/generate.py`: {stale}"
