"""Run tritonclient code against a daemon, in the separate virtual environment that holds tritonclient
(`.venv-tritonclient`, made by .ci/setup): tritonclient needs protobuf < 7 and registers its own copy of the
`inference` proto, so it can share a process with neither the daemon nor warmd's stubs.

    result = triton(url, '''
        out["live"] = client.is_server_live()
    ''', headers={...})

The snippet sees `client` (tritonclient.grpc.InferenceServerClient on `url`), `grpcclient`, `np`, `shm`
(tritonclient.utils.shared_memory), `headers` and `out`, a dict it fills; JSON-able values come back.
Errors raised by the snippet come back as {"error": message, "status": gRPC status name}.
"""
from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv-tritonclient" / "bin" / "python"

_PRELUDE = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException
url, headers = sys.argv[1], json.loads(sys.argv[2])
client = grpcclient.InferenceServerClient(url=url)
out = {}
try:
BODY
except InferenceServerException as exc:
    out = {"error": exc.message(), "status": exc.status()}
print(json.dumps(out, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
"""


def triton(url: str, body: str, headers: dict[str, str] | None = None, timeout: float = 60) -> dict:
    if not PYTHON.exists():
        raise RuntimeError(f"{PYTHON} is missing: run `bash .ci/setup` (it makes the tritonclient environment)")
    code = _PRELUDE.replace("BODY", textwrap.indent(textwrap.dedent(body).strip(), "    "))
    proc = subprocess.run([str(PYTHON), "-c", code, url, json.dumps(headers or {})], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"tritonclient snippet exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
