"""`torch`: an nn.Module built by a Python factory, weights from safetensors.

options:
  factory: "package.module:callable" or "file.py:callable" (a file next to the spec)
  args: keyword arguments for the factory
  weights: the safetensors file inside the source folder (default: the source itself if it is a
           file, else model.safetensors)
  strict: require every parameter to be in the weights (default true)

Inputs are passed to forward() positionally, in the order the spec's `inputs` declares (or the order
the request gives); a forward() with a `context` parameter also gets the call's CallContext (report
progress, stop when cancelled). A tensor result is named by the spec's first output (default "output"); a tuple
or dict result maps onto the declared outputs. Inputs that arrive as CUDA tensors (CUDA shared memory) are
used where they are, and outputs asked for on the device stay there.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from warmd.devices import is_gpu
from warmd.errors import Code, WarmdError
from warmd.providers.base import (InferRequest, InferResult, ModuleProvider, bad_input, module_bytes,
                                  safetensors_bytes, torch_dtype)
from warmd.spec import ModelSpec

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np


class TorchProvider(ModuleProvider):
    name = "torch"
    batchable = True
    device_tensors = True
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["factory"],
        "properties": {
            "factory": {"type": "string", "pattern": r"^[A-Za-z0-9_./-]+(\.py)?:[A-Za-z_][A-Za-z0-9_]*$",
                        "description": "\"package.module:callable\" or \"file.py:callable\" (a file next to the spec)"},
            "args": {"type": "object"},
            "weights": {"type": "string", "minLength": 1},
            "strict": {"type": "boolean"},
        },
    }

    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        return safetensors_bytes([weights_file(spec, files)], spec.precision)

    @classmethod
    def option_files(cls, spec: ModelSpec) -> list[Path]:
        target = spec.options["factory"].rpartition(":")[0]
        return [spec.file.parent / target] if target.endswith(".py") else []

    def load(self) -> int:
        import torch

        path = weights_file(self.spec, self.files)
        self._dtype = torch_dtype(self.spec.precision)
        if is_gpu(self.device):
            from warmd.providers.staging import load_to_device

            state = load_to_device(path, self.device, self._dtype)
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
            read_through(path)
        # Build on the meta device and adopt the loaded tensors as the parameters: no random
        # initialisation and no second copy of the weights. Modules that make tensors the weights do not
        # hold (non-persistent buffers), or a non-strict load, need a real construction instead.
        module = self._build(torch.device("meta")) if self.spec.options.get("strict", True) else None
        if module is not None:
            self._fill(module, state, assign=True)
            if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
                log.info("%s: the module makes tensors its weights do not hold; building it for real",
                         self.spec.name)
                module = None
        if module is None:
            module = self._build(torch.device("cpu"))
            self._fill(module, state, assign=False)
        self.module = module.to(device=self.device, dtype=self._dtype).eval()
        # A module whose forward() takes `context` gets the call's CallContext: progress and cancel.
        self._takes_context = "context" in inspect.signature(self.module.forward).parameters
        return module_bytes(self.module)

    def _build(self, device):  # type: ignore[no-untyped-def]
        import torch

        factory = resolve_factory(self.spec)
        try:
            with device:
                module = factory(**self.spec.options.get("args", {}))
        except Exception as exc:
            raise WarmdError(Code.PROVIDER_FAILED,
                             f"factory {self.spec.options['factory']} failed: {exc!r}") from exc
        if not isinstance(module, torch.nn.Module):
            raise WarmdError(Code.PROVIDER_FAILED, f"factory {self.spec.options['factory']} returned "
                             f"{type(module).__name__}, not a torch.nn.Module")
        return module

    def _fill(self, module: Any, state: dict, assign: bool) -> None:
        try:
            module.load_state_dict(state, strict=self.spec.options.get("strict", True), assign=assign)
        except RuntimeError as exc:
            raise WarmdError(Code.PROVIDER_FAILED, f"weights do not fit the module: {exc}") from None

    def infer(self, request: InferRequest) -> InferResult:
        import torch

        args = [self._to_tensor(name, arr) for name, arr in self._ordered_inputs(request)]
        extra = {"context": request.context} if self._takes_context else {}
        with torch.inference_mode():
            result = self.module(*args, **extra)
        return InferResult(tensors=self._name_outputs(result, request.device_outputs))

    def _ordered_inputs(self, request: InferRequest) -> list[tuple[str, np.ndarray]]:
        if not request.tensors:
            raise bad_input(f"model {self.spec.name!r} takes tensor inputs; none were given")
        if not self.spec.inputs:
            return list(request.tensors.items())
        missing = [d.name for d in self.spec.inputs if d.name not in request.tensors]
        if missing:
            raise bad_input(f"missing input(s) {', '.join(missing)}; model {self.spec.name!r} takes "
                            f"{', '.join(d.name for d in self.spec.inputs)}")
        return [(d.name, request.tensors[d.name]) for d in self.spec.inputs]

    def _to_tensor(self, name: str, arr: np.ndarray):  # type: ignore[no-untyped-def]
        import numpy as np
        import torch

        if isinstance(arr, torch.Tensor):       # CUDA shared memory: the caller's own memory, read in place
            tensor = arr
        else:   # requests arrive as read-only views of the message; torch wants writable memory: copy once
            tensor = torch.from_numpy(np.array(arr, copy=True))
        if tensor.is_floating_point() and tensor.dtype != self._dtype:
            tensor = tensor.to(self._dtype)
        if self.device == "cpu" and tensor.is_cpu:
            return tensor       # where the model is (.to() would return it too, after ~1.5 µs of dispatch)
        # To the model's device; asynchronous only from host memory to a GPU.
        return tensor.to(self.device, non_blocking=not tensor.is_cuda)

    def _name_outputs(self, result: Any, on_device: frozenset[str]) -> dict[str, Any]:
        names = [d.name for d in self.spec.outputs] or ["output"]
        if isinstance(result, dict):
            items = list(result.items())
        elif isinstance(result, (tuple, list)):
            names += [f"output_{i}" for i in range(len(names), len(result))]
            items = list(zip(names, result))
        else:
            items = [(names[0], result)]
        return {name: _output(value, name in on_device) for name, value in items}


def _output(value: Any, on_device: bool) -> Any:
    """An output as numpy, or (asked for on the device) as a torch tensor where it is."""
    import torch

    if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()   # numpy has no bfloat16; callers get exact float32 values (on a GPU too)
    if value.requires_grad:     # a parameter returned as it is, or a forward that turned inference mode off
        value = value.detach()
    if value.is_cpu:
        return value.numpy()
    return value if on_device and value.is_cuda else value.cpu().numpy()


def read_through(path: Path) -> None:
    """On the CPU, safetensors maps the file and reads nothing until a tensor is touched: read it once
    now, so the pages are in memory and the first request does not pay for the disk."""
    buf = memoryview(bytearray(min(8 * 2**20, path.stat().st_size) or 1))   # allocating 64 MiB costs 20 ms
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def weights_file(spec: ModelSpec, files: Path) -> Path:
    """The safetensors file to load, checked to exist inside the resolved source."""
    if files.is_file():
        return files
    name = spec.options.get("weights", "model.safetensors")
    # Checked by name, not by resolving links: a Hugging Face snapshot's files are links into its blobs/.
    path = Path(os.path.normpath(files / name))
    if not path.is_relative_to(os.path.normpath(files)):
        raise WarmdError(Code.SPEC_INVALID, f"options.weights {name!r} points outside the model's files")
    if not path.is_file():
        raise WarmdError(Code.WEIGHTS_MISSING, f"weights file {path} does not exist; "
                         "set options.weights to the safetensors file in the source folder")
    return path


def resolve_factory(spec: ModelSpec) -> Callable[..., Any]:
    """Import the `module:callable` (or `file.py:callable` next to the spec) named by options.factory."""
    target, _, attr = spec.options["factory"].rpartition(":")
    try:
        if target.endswith(".py"):
            module = _import_file(spec, target)
        else:
            module = importlib.import_module(target)
    except WarmdError:
        raise
    except Exception as exc:
        raise WarmdError(Code.PROVIDER_FAILED, f"cannot import factory module {target!r}: {exc!r}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WarmdError(Code.PROVIDER_FAILED, f"{target!r} has no callable named {attr!r}")
    return factory


def _import_file(spec: ModelSpec, relative: str):  # type: ignore[no-untyped-def]
    folder = spec.file.parent.resolve()
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder):
        raise WarmdError(Code.SPEC_INVALID, f"factory file {relative!r} must be inside {folder}")
    if not path.is_file():
        raise WarmdError(Code.PROVIDER_FAILED, f"factory file {path} does not exist")
    # A unique module name per file and content version, so an edited factory file is re-imported.
    mod_name = f"warmd_factory_{abs(hash((str(path), path.stat().st_mtime_ns)))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    sys.modules[mod_name] = module
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
