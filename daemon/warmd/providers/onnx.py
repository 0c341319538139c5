"""`onnx`: an ONNX model run by ONNX Runtime (the CUDA execution provider on a GPU, the CPU one otherwise).

options:
  file: the .onnx file inside the source folder (default: the source itself if it is a file, else
        model.onnx)
  threads: intra-op threads (default: ONNX Runtime's choice)

Inputs are matched to the model's inputs by name; every model output is returned under its own name.
A cancelled call stops the running session (RunOptions.terminate).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from warmd.devices import gpu_index
from warmd.errors import Code, WarmdError
from warmd.providers.base import InferRequest, InferResult, Provider, bad_input
from warmd.spec import ModelSpec


class OnnxProvider(Provider):
    name = "onnx"
    batchable = True
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "minLength": 1},
            "threads": {"type": "integer", "minimum": 1, "maximum": 1024},
        },
    }

    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        return model_file(spec, files).stat().st_size

    def load(self) -> int:
        try:
            import onnxruntime as ort
        except ImportError:
            raise WarmdError(Code.UNSUPPORTED_PROVIDER, "the onnx provider needs onnxruntime: "
                             "pip install onnxruntime (or onnxruntime-gpu)") from None
        path = model_file(self.spec, self.files)
        options = ort.SessionOptions()
        if "threads" in self.spec.options:
            options.intra_op_num_threads = self.spec.options["threads"]
        providers = ["CPUExecutionProvider"]
        index = gpu_index(self.device)
        if index is not None:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise WarmdError(Code.DEVICE_UNAVAILABLE, f"{self.spec.name} is placed on {self.device}, but this "
                                 "onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise WarmdError(Code.PROVIDER_FAILED, f"onnxruntime cannot load {path}: {exc}") from None
        self._inputs = {i.name for i in self.session.get_inputs()}
        # ORT does not report its memory: count the model file (weights dominate small-batch sessions).
        return path.stat().st_size

    def infer(self, request: InferRequest) -> InferResult:
        import onnxruntime as ort

        unknown = set(request.tensors) - self._inputs
        missing = self._inputs - set(request.tensors)
        if unknown or missing:
            raise bad_input(f"model {self.spec.name!r} takes inputs {', '.join(sorted(self._inputs))}; "
                            f"missing {', '.join(sorted(missing)) or 'none'}, unknown "
                            f"{', '.join(sorted(unknown)) or 'none'}")
        run = ort.RunOptions()
        request.context.on_cancel(lambda: setattr(run, "terminate", True))
        names = [o.name for o in self.session.get_outputs()]
        try:
            values = self.session.run(names, dict(request.tensors), run)
        except Exception:  # noqa: BLE001 - the inference boundary classifies ORT's errors
            request.context.check()          # stopped because the caller cancelled: say that
            raise
        return InferResult(tensors=dict(zip(names, values)))

    def unload(self) -> None:
        self.session: Any = None


def model_file(spec: ModelSpec, files: Path) -> Path:
    if files.is_file():
        return files
    path = (files / spec.options.get("file", "model.onnx")).resolve()
    if not path.is_relative_to(files.resolve()):
        raise WarmdError(Code.SPEC_INVALID, f"options.file {spec.options.get('file')!r} points outside the model's files")
    if not path.is_file():
        raise WarmdError(Code.WEIGHTS_MISSING, f"ONNX file {path} does not exist; set options.file")
    return path
