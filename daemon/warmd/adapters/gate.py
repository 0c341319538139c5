"""The gate: before a plugin is installed, show in separate processes that its adapter works.

Steps, in this order; a failure names the first step that failed, with the traceback's last lines:
  manifest      warmd-plugin.yaml (or adapter.py with specs/) read and checked (data only, in the daemon)
  requirements  the manifest's requirements installed into the plugin's own virtualenv (pip, its own process)
  import        a runner imports the adapter and reports its provider's name
  spec          each example spec validates, its options checked by the provider in the runner
  load          a runner (one per example) loads the example spec
  infer         it runs the example's input
  outputs       the outputs are exactly the spec's declared ones: names, dtypes, shapes
The runner steps share one timeout (`gate_timeout`): a runner still busy when it runs out is killed and
its step fails. A cancelled job stops the gate at its next step (a runner under way is killed).

`check_folder` gates any folder holding an adapter: a fresh clone (`warm add git+URL`), or one with an
adapter a code model drafted (`--draft`, each attempt).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from warmd.adapters import environment, manifest
from warmd.adapters.manifest import Example, Manifest
from warmd.errors import WarmdError
from warmd.providers import CallContext, InferRequest, InferResult
from warmd.providers.base import conform_inputs
from warmd.runner.channel import spec_to_json
from warmd.runner.process import Runner, runner_class
from warmd.spec import ModelSpec, SpecFileError, TensorDecl, parse_spec_file

STEPS = ("manifest", "requirements", "import", "spec", "load", "infer", "outputs")
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")     # the spec schema's `provider` pattern
REQUIREMENTS_TIMEOUT_S = 600.0
Report = Callable[[str, str], None]           # (step, what is happening) for progress events


class GateFailed(Exception):
    """One step failed: `step`, a one-line message, and `output` (traceback or tool output lines)."""

    def __init__(self, step: str, message: str, output: str = "") -> None:
        super().__init__(message)
        self.step, self.message, self.output = step, message, output


@dataclass
class Verdict:
    """What the gate found. When it passed: the manifest, the provider the adapter defines, the validated
    example specs and the environment with the requirements (None without requirements)."""

    passed: bool
    step: str
    message: str
    output: str = ""
    seconds: float = 0.0
    manifest: Manifest | None = None
    provider: dict[str, Any] = field(default_factory=dict)     # {"name", "batchable"}
    specs: list[ModelSpec] = field(default_factory=list)
    environment: environment.Environment | None = None

    def summary(self, commit: str = "") -> dict[str, Any]:
        """The verdict as the install record keeps it (`warm plugins ls`)."""
        return {"result": "passed" if self.passed else "failed", "step": self.step, "message": self.message,
                "output": self.output, "seconds": round(self.seconds, 3), "commit": commit, "at": time.time()}

    def explain(self) -> str:
        """The failure for a person: which step, what, and the last lines that say why."""
        text = f"the gate failed at step {self.step!r}: {self.message}"
        return text + (f"\n{self.output}" if self.output else "")


def check_folder(folder: Path, name: str, workdir: Path, timeout_s: float, offline: bool,
                 report: Report, context: CallContext) -> Verdict:
    """Gate the adapter in `folder`.

    Args:
        folder: the repository (a checkout, or a drafted adapter's folder).
        name: the plugin's name when its manifest names none.
        workdir: where the gate may put the virtualenv (`workdir/venv`); kept when it passes.
        timeout_s: for the runner steps together.
        offline: pip gets no index.
        report: told each step as it starts.
        context: cancelled when the caller gave up (a runner under way is told, then killed).
    Returns:
        The verdict (never raises for what the adapter does).
    """
    started = time.monotonic()
    gate = _Gate(folder, workdir, timeout_s, offline, report, context)
    try:
        gate.run(name)
    except GateFailed as failed:
        # Paths as the repository names them, not where the gate staged it
        def relative(text: str) -> str:
            for prefix in {str(folder.resolve()), str(folder)}:
                text = text.replace(prefix + "/", "")
            return text

        return Verdict(False, failed.step, relative(failed.message), relative(failed.output),
                       time.monotonic() - started, gate.manifest)
    return Verdict(True, STEPS[-1], f"{len(gate.specs)} example(s) passed", "", time.monotonic() - started,
                   gate.manifest, gate.provider, gate.specs, gate.environment)


class _Gate:
    def __init__(self, folder: Path, workdir: Path, timeout_s: float, offline: bool, report: Report,
                 context: CallContext) -> None:
        self.folder, self.workdir, self.offline, self.report = folder, workdir, offline, report
        self.timeout_s, self.context = timeout_s, context
        self.deadline = 0.0
        self.manifest: Manifest | None = None
        self.provider: dict[str, Any] = {}
        self.specs: list[ModelSpec] = []
        self.environment: environment.Environment | None = None

    def run(self, name: str) -> None:
        self._step("manifest", "reading the manifest")
        try:
            self.manifest = manifest.read(self.folder, name)
        except WarmdError as err:
            raise GateFailed("manifest", err.message) from None
        if self.manifest.requirements:
            self._step("requirements", ", ".join(self.manifest.requirements))
            try:
                self.environment = environment.create(self.workdir / "venv", self.manifest.requirements,
                                                      self.offline, REQUIREMENTS_TIMEOUT_S)
            except environment.RequirementsFailed as exc:
                raise GateFailed("requirements", str(exc), exc.output) from None
        self.deadline = time.monotonic() + self.timeout_s
        self._import()
        self._step("spec", "validating the example specs")
        self.specs = [self._spec(example) for example in self.manifest.examples]
        for example, spec in zip(self.manifest.examples, self.specs):
            self._example(example, spec)

    def target(self) -> dict[str, Any]:
        assert self.manifest is not None
        return {"adapter": str(self.manifest.adapter), "class": self.manifest.class_name,
                "paths": [str(self.folder)],
                "site": [str(self.environment.site_packages)] if self.environment else []}

    def _step(self, step: str, message: str) -> None:
        if self.context.cancelled.is_set():
            raise GateFailed(step, "cancelled: the caller left")
        self.report(step, message)

    def _runner(self, label: str) -> Runner:
        return Runner(label, self.target(), cwd=self.folder)

    def _call(self, runner: Runner, step: str, message: dict[str, Any]) -> dict[str, Any]:
        """One runner call as one gate step: a failure, a timeout or a cancel fails the step."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise GateFailed(step, f"the gate ran out of time ({self.timeout_s:.0f} s, gate_timeout)")
        try:
            return runner.call(message, f"the gate's {step} step", self.context, timeout_s=remaining)
        except WarmdError as err:
            timed_out = time.monotonic() >= self.deadline
            raise GateFailed(step, f"no answer within the gate's {self.timeout_s:.0f} s (gate_timeout)" if timed_out
                             else err.message, _output(err, runner)) from None
        except Exception as exc:  # noqa: BLE001 - what the adapter raised, rebuilt by the runner's channel
            raise GateFailed(step, f"{type(exc).__name__}: {exc}", _output(exc, runner)) from None

    def _import(self) -> None:
        self._step("import", f"importing {self.manifest.adapter.name}")        # type: ignore[union-attr]
        runner = self._runner("gate")
        try:
            self.provider = self._call(runner, "import", {"op": "describe"})
        finally:
            runner.stop()
        provider = self.provider.get("name")
        if not isinstance(provider, str) or not PROVIDER_NAME.match(provider):
            raise GateFailed("import", f"the provider's name {provider!r} is not a provider name (lowercase "
                             "letters, digits, _ -; at most 64)")
        self.provider = {"name": provider, "batchable": self.provider.get("batchable") is True}

    def _spec(self, example: Example) -> ModelSpec:
        cls = runner_class(self.provider["name"], self.provider["batchable"], {}, self.folder)
        try:
            spec = parse_spec_file(example.spec, self.folder, [self.folder], {cls.name: cls})
        except SpecFileError as err:
            raise GateFailed("spec", str(err)) from None
        where = example.spec.relative_to(self.folder.resolve())
        if spec.source.kind != "path":
            raise GateFailed("spec", f"{where}: the gate runs before anything is downloaded, so an example's "
                             f"source must be a `path:` inside the repository, not {spec.source.kind}")
        if not spec.outputs:
            raise GateFailed("spec", f"{where} declares no `outputs:`; the gate checks the adapter's outputs "
                             "against them (names, dtypes, shapes)")
        return spec

    def _example(self, example: Example, spec: ModelSpec) -> None:
        self._step("load", f"loading {spec.name}")
        runner = self._runner(f"gate-{spec.name}")
        try:
            self._call(runner, "spec", {"op": "validate", "options": dict(spec.options)})
            self._call(runner, "load", {"op": "load", "spec": spec_to_json(spec), "files": spec.source.ref,
                                        "device": _device(spec)})
            self._step("infer", f"running the example of {spec.name}")
            request = _request(spec, example)
            message = {"op": "infer", "tensors": runner.inbox.put(request.tensors), "text": list(request.text),
                       "parameters": request.parameters, "deadline_s": None}
            reply = self._call(runner, "infer", message)
            try:
                result = InferResult(tensors=runner.outbox.take(reply.get("tensors", [])), json=reply.get("json"))
            except WarmdError as err:
                raise GateFailed("infer", err.message) from None
        finally:
            runner.stop()
        self._step("outputs", f"checking the outputs of {spec.name}")
        problems = output_problems(spec, result)
        if problems:
            raise GateFailed("outputs", f"{spec.name}: " + "; ".join(problems))


def _output(exc: BaseException, runner: Runner) -> str:
    """The traceback the runner sent, else its last output lines."""
    return getattr(exc, "runner_traceback", "") or runner.output()


def _device(spec: ModelSpec) -> str:
    """Examples run on the CPU unless their spec names a GPU."""
    return "cuda:0" if spec.device == "cuda" else spec.device if spec.device.startswith("cuda:") else "cpu"


def _request(spec: ModelSpec, example: Example) -> InferRequest:
    """The example's request, conformed to the spec as a real request is."""
    import numpy as np

    import warmd.tensors as codec

    declared = {d.name: d for d in spec.inputs}
    arrays: dict[str, np.ndarray] = {}
    try:
        if example.inputs is None:
            arrays = {d.name: _zeros(d) for d in spec.inputs}
        for key, (dtype, data) in (example.inputs or {}).items():
            dtype = dtype or (declared[key].dtype if key in declared else "FP32")
            if dtype == "BYTES":
                arrays[key] = np.array([str(v).encode() for v in np.ravel(data)], dtype=object).reshape(np.shape(data))
            else:
                arrays[key] = np.asarray(data, dtype=codec.NUMPY_DTYPES["FP32" if dtype == "BF16" else dtype])
        return InferRequest(tensors=conform_inputs(spec, arrays), text=list(example.text),
                            parameters=dict(example.parameters))
    except (ValueError, TypeError, WarmdError) as exc:
        raise GateFailed("infer", f"the example input of {spec.name} does not fit its spec: {exc}") from None


def _zeros(decl: TensorDecl):  # type: ignore[no-untyped-def]
    import numpy as np

    import warmd.tensors as codec

    shape = tuple(1 if d == -1 else d for d in decl.shape)
    if decl.dtype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=codec.NUMPY_DTYPES["FP32" if decl.dtype == "BF16" else decl.dtype])


def output_problems(spec: ModelSpec, result: InferResult) -> list[str]:
    """How the result differs from the spec's declared outputs (names, dtypes, shapes; -1 = any size)."""
    import warmd.tensors as codec

    problems = []
    declared = {d.name: d for d in spec.outputs}
    for name, decl in declared.items():
        array = result.tensors.get(name)
        if array is None:
            problems.append(f"output {name!r} is missing (it gave {', '.join(result.tensors) or 'no tensors'})")
            continue
        given = "BYTES" if array.dtype == object else codec.dtype_name(array.dtype)
        if given != decl.dtype and not (decl.dtype == "BF16" and given == "FP32"):
            problems.append(f"output {name!r} is {given}, declared {decl.dtype}")
        shape = list(array.shape)
        if len(shape) != len(decl.shape) or any(d not in (-1, s) for d, s in zip(decl.shape, shape)):
            problems.append(f"output {name!r} has shape {shape}, declared {list(decl.shape)}")
    problems += [f"output {name!r} is not declared in the spec's outputs" for name in result.tensors
                 if name not in declared]
    return problems
