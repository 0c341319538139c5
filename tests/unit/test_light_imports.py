"""Apps that only call the daemon must not pay for torch (a 5 s import) or the daemon's internals."""
from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_client_import_does_not_import_torch_or_daemon_parts() -> None:
    loaded = _modules_after("import warm, warm.cli")
    assert "warm.client" in loaded
    # warmd.v2: the V2 stubs register package `inference`, which clashes with tritonclient's own copy
    heavy = {"torch", "transformers", "sentence_transformers", "warmd.scheduler", "warmd.providers",
             "huggingface_hub", "warmd.v2", "warmd.v2.inference_pb2"}
    assert not heavy & loaded


def test_daemon_server_import_does_not_import_torch() -> None:
    loaded = _modules_after("import warmd.server")
    assert "warmd.scheduler" in loaded
    assert not {"torch", "transformers", "sentence_transformers", "huggingface_hub", "llama_cpp", "gguf",
                "jinja2"} & loaded
    # a start whose specs all passed before needs neither (warmd.validated); they come when a file is new
    assert not {"yaml", "jsonschema"} & loaded
    # the HTTP front's libraries come with `http:` only
    assert not {"fastapi", "uvicorn", "starlette", "warmd.http"} & loaded
    # what comes after the daemon is ready: the catalog's watches (its thread starts them)
    assert "watchdog" not in loaded
    # what only some calls need: a load (the runner, sizing a GGUF model)
    assert not {"warmd.runner", "multiprocessing", "warmd.providers.gguf_memory"} & loaded
    # nor ctypes.util: its find_library runs ldconfig, a process (the heap trim finds glibc without it)
    assert "ctypes.util" not in loaded
    # nor venv: only an adapter's install makes an environment
    assert "venv" not in loaded


def test_cluster_mode_imports_ray_only_when_used() -> None:
    loaded = _modules_after("import warmd.server, warmd.cli, warmd.cluster, warmd.cluster.front")
    assert "warmd.cluster.front" in loaded and not {"ray", "ray.serve"} & loaded
