"""The provider contract: how a runtime (torch, sentence-transformers, ...) plugs into warmd.

A provider is one module with one `Provider` subclass. The scheduler decides what is resident where;
a provider only does what it is told:

    validate_options(options)      -> problems with the spec's `options` (class method; no torch; a pure
                                      function of `options`: its verdict is kept across starts)
    option_files(spec)             -> local files the options name that shape the model (class method)
    supports(spec, device)         -> whether it can run this spec on this device (class method)
    estimate(spec, files)          -> bytes it expects to occupy, from file headers (class method)
    layers(spec, files)            -> a Layers when the model can be split between a GPU and the host
                                      layer by layer (llama.cpp), else None (class method)
    Provider(spec, files, device)  -> an unloaded instance for one model
        .gpu_layers                -> set by the scheduler before load() for a model with layers():
                                      how many of them go to the GPU
        .load()                    -> measured bytes after the load (on its device; a split model
                                      sets .host_bytes to what it keeps in host memory)
        .infer(request)            -> outputs
        .unload()                  -> frees everything it holds
        .location()                -> where a model that runs elsewhere is (a cluster replica), else ""
        .gone()                    -> why it can no longer serve (its runner process died), else None

A provider whose model is one torch module (torch, sentence-transformers, transformers) derives from
`ModuleProvider`, which parks, brings back and unloads `self.module` for it; one that runs only some tasks
names them in `tasks` and calls `check_task()` in `load`.

`files` is the local folder (or single file) the store resolved for the spec. Heavy imports (torch)
happen inside `load`, never at module import, so the daemon answers list/status without them.
"""
from __future__ import annotations

import abc
import functools
import gc
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

from warmd.devices import is_gpu
from warmd.errors import Code, WarmdError
from warmd.spec import ModelSpec, TensorDecl, by_importance, explain

if TYPE_CHECKING:   # numpy and jsonschema are imported on first use, keeping the daemon's start-up short
    import jsonschema
    import numpy as np

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


class Flag:
    """threading.Event's set / is_set / wait, made on every call: the Event (a condition and its lock) only
    once somebody waits."""

    __slots__ = ("_set", "_event", "_lock")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None
        self._lock = threading.Lock()

    def set(self) -> None:
        with self._lock:
            self._set = True
            event = self._event
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)


class CallContext:
    """What a provider gets with every call besides its inputs: cancellation, and a way to report.

    A provider that runs long checks `check()` between steps (tokens, frames, batches): it raises
    `cancelled` once the caller cancelled, disconnected or ran out of time, and the daemon frees the slot.
    `progress()` and `emit()` reach a streaming caller at once; for a unary call they are dropped.
    """

    def __init__(self, deadline: float | None = None,
                 sink: Callable[[str, Any], None] | None = None, inline: bool = False) -> None:
        self.cancelled = Flag()
        self.inline = inline                     # on the gRPC event loop: the call may not wait (api/aio.py)
        self.granted: Any = None                 # what the event loop waited for: a slot to take, a batch's seat
        self.deadline = deadline                 # time.monotonic() value, or None
        self._sink = sink                        # None: nobody listens (a unary call)
        self._on_cancel: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def stream_to(self, sink: Callable[[str, Any], None]) -> None:
        """Send what `progress()` and `emit()` report to `sink(kind, value)` from now on (a streaming caller)."""
        self._sink = sink

    @property
    def streaming(self) -> bool:
        """Whether a caller listens to progress() and emit() (a provider that runs elsewhere streams then)."""
        return self._sink is not None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the call is cancelled (at once if it already is): for runtimes that stop
        from another thread, such as ONNX Runtime's RunOptions.terminate."""
        with self._lock:
            if not self.cancelled.is_set():
                self._on_cancel.append(callback)
                return
        callback()

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def check(self) -> None:
        """Raise `cancelled` or `deadline_exceeded` if the call should stop now."""
        if self.past_deadline():
            raise WarmdError(Code.DEADLINE_EXCEEDED, "the request ran past its deadline")
        if self.cancelled.is_set():
            raise WarmdError(Code.CANCELLED, "the caller cancelled the request")

    def progress(self, done: int, total: int, unit: str = "steps") -> None:
        """Report how far a long job is ("frames", "steps", "items")."""
        if self._sink is not None:
            self._sink("progress", (done, total, unit))

    def emit(self, text: str) -> None:
        """Stream a piece of output text (generation) to the caller."""
        if self._sink is not None:
            self._sink("text", text)


@dataclass(frozen=True)
class Layers:
    """How a model splits between a GPU and host memory, layer by layer (llama.cpp's n_gpu_layers).

    `sizes`: bytes each offloadable layer takes, in the order the runtime offloads them; `host`: bytes that
    stay in host memory however many are offloaded; `wanted`: the layers the spec asks for on a GPU;
    `flexible`: fewer will do (the spec says `auto`).
    """

    sizes: tuple[int, ...]
    host: int
    wanted: int
    flexible: bool

    def host_bytes(self, on_gpu: int) -> int:
        """Host memory the model takes with `on_gpu` layers offloaded."""
        return self.host + sum(self.sizes[on_gpu:])

    def fitting(self, total: int, room: int) -> int:
        """The most layers (up to `wanted`) whose device share of a `total`-byte model fits in `room`."""
        return max((k for k in range(self.wanted + 1) if total - self.host_bytes(k) <= room), default=0)


@dataclass
class InferRequest:
    """What a provider gets: named arrays, texts, free-form parameters, and the call's context.

    BYTES tensors are numpy object arrays of `bytes`. A provider whose class sets `device_tensors` may get
    torch tensors on a GPU as well (CUDA shared memory, read in place: never write into them), and is asked
    to return the outputs named in `device_outputs` as torch tensors on its device (no copy to the host).
    """

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    context: CallContext = field(default_factory=CallContext)
    device_outputs: frozenset[str] = frozenset()


@dataclass
class InferResult:
    """What a provider returns: named arrays and, for non-tensor results, a JSON-able value."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    json: Any = None


class Provider(abc.ABC):
    """One loaded (or loadable) model on one device."""

    name: ClassVar[str]
    # JSON Schema of this provider's `options` mapping.
    options_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}
    # The spec tasks it runs (empty: any); `check_task` refuses a spec with another one.
    tasks: ClassVar[tuple[str, ...]] = ()
    # Whether to_host/to_device are implemented (the host-RAM tier parks a model evicted from a GPU).
    parkable: ClassVar[bool] = False
    # Whether requests can be joined along their first dimension (or texts) and outputs split back
    # (dynamic batching, spec `max_batch`).
    batchable: ClassVar[bool] = False
    # Whether infer() computes here (CPU or a local GPU), not waiting on another process or machine: only
    # such a model's quick calls may run on the gRPC event loop (api/aio.py).
    in_process: ClassVar[bool] = True
    # Whether it takes torch tensors on a GPU as inputs and honours `InferRequest.device_outputs`.
    device_tensors: ClassVar[bool] = False
    # Set by the scheduler before load() for models with layers(): how many go to the GPU.
    gpu_layers: int | None = None
    # Set by load() for a model split between a GPU and the host: bytes it keeps in host memory, and
    # (layers on the GPU, layers in all).
    host_bytes: int = 0
    offloaded: tuple[int, int] | None = None

    def __init__(self, spec: ModelSpec, files: Path, device: str) -> None:
        self.spec, self.files, self.device = spec, files, device

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, list[Any]]]:
        """Yield (message, path within options) for every problem, the most telling first; nothing when valid.

        Must depend on `options` alone (never on the disk, the environment or the time): a verdict is kept
        across starts for the same spec bytes and the same provider code (warmd.validated)."""
        for err in by_importance(_validator(cls).iter_errors(options)):
            yield explain(err)

    @classmethod
    def option_files(cls, spec: ModelSpec) -> list[Path]:
        """Local files the spec's options name whose content is part of the model (torch: a factory
        module next to the spec). The catalog watches them with the source: an edit reloads the model."""
        return []

    @classmethod
    def supports(cls, spec: ModelSpec, device: str) -> bool:
        """Whether this provider can run `spec` on `device` ("cpu", "cuda:0")."""
        return device == "cpu" or is_gpu(device)

    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        """Bytes the model will occupy once loaded; default: its safetensors weights at the spec's precision."""
        return safetensors_bytes(sorted(_safetensors_files(files)), spec.precision)

    @classmethod
    def layers(cls, spec: ModelSpec, files: Path) -> Layers | None:
        """How the model splits between a GPU and host memory, for runtimes that offload layer by layer."""
        return None

    def check_task(self) -> None:
        """Refuse (at load) a spec whose task this provider does not run.

        Raises:
            WarmdError: `spec_invalid` naming the tasks it runs.
        """
        if self.tasks and self.spec.task not in self.tasks:
            raise WarmdError(Code.SPEC_INVALID, f"provider {self.name} runs tasks {', '.join(self.tasks)}; "
                             f"the spec says {self.spec.task!r}")

    @abc.abstractmethod
    def load(self) -> int:
        """Load onto self.device. Returns the measured bytes it occupies."""

    @abc.abstractmethod
    def infer(self, request: InferRequest) -> InferResult:
        """Run one request. Raise WarmdError(INVALID_ARGUMENT) for inputs the model cannot take."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Drop every reference to the model and give device memory back."""

    def location(self) -> str:
        """Where the model is when it runs outside this process (the cluster replicas holding it), for
        `warm ps`; "" for a model held here."""
        return ""

    def gone(self) -> WarmdError | None:
        """Why this loaded model can no longer serve, or None while it can: a provider whose model lives in
        another process (a runner) says so once that process exited; the scheduler then retires it."""
        return None

    def to_host(self) -> None:
        """Move the weights to (pinned) host memory and give the device memory back. Only if parkable."""
        raise NotImplementedError

    def to_device(self) -> None:
        """Bring parked weights back to self.device. Only if parkable."""
        raise NotImplementedError


class ModuleProvider(Provider):
    """A provider whose loaded model is one torch module (`self.module`, set by `load`): parking moves its
    tensors to pinned host memory and back, unloading drops it and hands the device memory back."""

    parkable = True
    module: Any = None

    def to_host(self) -> None:
        self.module = move_module(self.module, self.device, to_host=True)

    def to_device(self) -> None:
        self.module = move_module(self.module, self.device, to_host=False)

    def unload(self) -> None:
        if self.module is None:
            return
        ref = weakref.ref(self.module)
        self.module = None
        release_module(ref, self.device)


@functools.lru_cache(maxsize=None)
def _validator(cls: type[Provider]) -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(cls.options_schema)


def safetensors_bytes(paths: list[Path], precision: str) -> int:
    """Exact weight bytes from safetensors headers, floats counted at `precision`."""
    from safetensors import safe_open

    import numpy as np

    total = 0
    for path in paths:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                count = int(np.prod(sl.get_shape(), dtype=np.int64))
                dtype = sl.get_dtype()
                size = BYTES_PER_ELEMENT[precision] if dtype in _FLOAT_DTYPES else _itemsize(dtype)
                total += count * size
    return total


def _itemsize(dtype: str) -> int:
    digits = "".join(c for c in dtype if c.isdigit())
    return max(1, int(digits) // 8) if digits else 1


def _safetensors_files(files: Path) -> Iterator[Path]:
    if files.is_file():
        yield files
    else:
        yield from files.rglob("*.safetensors")


def torch_dtype(precision: str):  # type: ignore[no-untyped-def]
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def release_module(ref: weakref.ref, device: str) -> None:
    """After the provider dropped its reference to a module (`ref` is a weak one to it): make sure it is
    gone, and hand cached CUDA blocks back to the driver.

    A full `gc.collect()` costs ~70 ms once torch is imported, so it runs only when the module survived
    its last reference (held in a reference cycle).
    """
    if ref() is not None:
        gc.collect()
    _empty_cuda_cache(device)


def _empty_cuda_cache(device: str) -> None:
    if is_gpu(device) and "torch" in sys.modules:
        import torch

        torch.cuda.empty_cache()


def move_module(module: Any, device: str, to_host: bool) -> Any:
    """Park a module in pinned host memory (a host-to-device copy later, no disk read) or bring it back.

    A provider placed on "cpu" (a simulated GPU) has nothing to move.
    """
    if device == "cpu":
        return module
    from warmd.providers import staging

    tensors = [*module.parameters(), *module.buffers()]
    if to_host:
        staging.park(tensors)
        _empty_cuda_cache(device)
    else:
        staging.unpark(tensors, device)
    return module


def module_bytes(module: Any) -> int:
    """Bytes held by a torch module's parameters and buffers (each storage counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def conform_inputs(spec: ModelSpec, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request's tensors checked against the spec's declared `inputs`, before the provider runs.

    A declared input's shape must fit its declaration (-1 = any size). A dtype other than the declared one
    is converted when every value converts exactly (FP16 into FP32, INT32 into INT64, UINT8 into FP16...);
    otherwise the input is refused, as Triton refuses any mismatch. BF16 arrives as exact float32 values.

    Returns:
        The tensors, declared ones in their declared dtype: `tensors` itself when nothing converts, else a
        copy of the mapping (the caller's stays as it was).
    Raises:
        WarmdError: `invalid_argument` naming the input, its dtype or shape and the declaration.
    """
    conformed = tensors
    for decl in spec.inputs:
        array = tensors.get(decl.name)
        if array is None or decl.dtype == "BYTES":
            continue
        check_shape(decl, array)
        converted = _as_declared(spec, decl, array)
        if converted is not array:
            conformed = dict(conformed) if conformed is tensors else conformed     # the caller's dict stays
            conformed[decl.name] = converted
    return conformed


def _as_declared(spec: ModelSpec, decl: TensorDecl, array: np.ndarray) -> np.ndarray:
    import numpy as np

    import warmd.tensors as codec

    want = np.dtype("<f4") if decl.dtype == "BF16" else codec.NUMPY_DTYPES[decl.dtype]
    if array.dtype == want:
        return array
    if np.can_cast(array.dtype, want, "safe"):
        return array.astype(want)
    given = codec.dtype_name(array.dtype)
    exact = [n for n, dt in codec.NUMPY_DTYPES.items() if dt != want and np.can_cast(dt, want, "safe")]
    raise bad_input(f"input {decl.name!r} is {given}; model {spec.name!r} declares {decl.dtype} (its spec's "
                    f"inputs), and {given} values do not all convert to {decl.dtype} exactly; send {decl.dtype}"
                    + (f" (or {', '.join(exact)}, which convert exactly)" if exact else ""))


def check_texts(spec: ModelSpec, texts: list[str], messages: Any = None) -> None:
    """Refuse a text, or a chat message's content (`messages`, the chat task's parameter), longer than the
    spec's `max_input_chars`, before any tokenizer or chat template sees it."""
    named = [(f"text {i}", text) for i, text in enumerate(texts)]
    if isinstance(messages, list):      # a malformed conversation is the chat task's to refuse
        named += [(f"messages[{i}] content", m["content"]) for i, m in enumerate(messages)
                  if isinstance(m, Mapping) and isinstance(m.get("content"), str)]
    for what, text in named:
        if len(text) > spec.max_input_chars:
            raise bad_input(f"{what} is {len(text)} characters; model {spec.name!r} takes at most "
                            f"{spec.max_input_chars} (max_input_chars in its spec): shorten or split it, "
                            "or raise max_input_chars")


def check_shape(decl: TensorDecl, array: np.ndarray) -> None:
    """Refuse an input whose rank or fixed dimensions differ from the spec's declaration (-1 = any)."""
    shape = array.shape
    if len(shape) != len(decl.shape) or any(d not in (-1, s) for d, s in zip(decl.shape, shape)):
        raise bad_input(f"input {decl.name!r} has shape {list(shape)}; the spec declares {list(decl.shape)} "
                        "(-1 = any size)")


def bad_input(message: str) -> WarmdError:
    return WarmdError(Code.INVALID_ARGUMENT, message)
