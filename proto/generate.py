"""Generate the Python gRPC stubs from proto/ into daemon/ (committed).

Usage: python proto/generate.py [OUT_DIR]   (default: daemon/, next to this folder)

tests/unit/test_proto.py runs the same generation into a temp folder and fails when the
committed stubs no longer match the .proto files.
"""
from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "daemon"
PROTOS = ["warmd/v1/warmd.proto", "warmd/v2/inference.proto"]


def generate(out: Path) -> list[Path]:
    """Generate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into `out`.

    Returns:
        The generated files, relative to `out`.
    Raises:
        RuntimeError: protoc reported an error.
    """
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    for proto in PROTOS:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", proto]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    stems = [p.removesuffix(".proto") for p in PROTOS]
    return [Path(s + suffix) for s in stems for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(target / path)
