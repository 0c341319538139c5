"""What a GGUF model occupies once llama.cpp loads it, known before the load, and what it measured after.

Before a load (`Footprint`):
- weights: every tensor's bytes from the GGUF header (its type and shape), read with the `gguf` package
  without touching the tensor data;
- KV cache: layers x KV heads x (key + value head dim) x cells x the cache type's size, where cells is
  n_ctx rounded up to 256 as llama.cpp does;
- compute buffers: measured by llama.cpp itself in a dry run (the model loaded with `no_alloc`, only its
  metadata read, and a context reserved for the same parameters), remembered per file and parameters;
  the output rows of one sequence (n_vocab + n_embd floats; per batch row for embeddings);
- llama-cpp-python's own host arrays: the logits rows (n_batch x n_vocab float32) and the token ids.
After a load, `measured()` adds up the buffers llama.cpp reports it allocated (no C API returns them: its
log lines "<buffer> model|KV|compute|output buffer size = N MiB" are read while the load holds the log).
Buffers named CUDA<n> are on that GPU; every other buffer (CPU, CPU_Mapped, CUDA_Host) is host memory.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("warmd.llama_cpp")
MIB = 2**20
KV_PAD = 256
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([0-9.]+) MiB")
_GPU_BUFFER = re.compile(r"^CUDA\d+$")
ENCODERS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert", "neo-bert"}


@dataclass(frozen=True)
class Header:
    """The facts of a GGUF file that decide its memory."""

    arch: str
    n_layer: int
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    kv_width: tuple[int, ...]       # per layer: n_head_kv x (key length + value length)
    weights: int                    # bytes of every tensor
    layer_bytes: tuple[int, ...]    # bytes of blk.<i>.* per layer
    output_bytes: int               # output.weight and output_norm (offloaded with the last "layer")
    chat_template: str
    bos: str = ""
    eos: str = ""


@dataclass(frozen=True)
class Footprint:
    """Bytes before a load, by part."""

    weights: int
    kv: int
    compute: int                    # compute buffers (dry run) + output rows
    host_arrays: int                # llama-cpp-python's logits rows and token ids

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.host_arrays


@dataclass
class Measured:
    """Buffers llama.cpp reported while loading, in bytes, by where they live."""

    device: int = 0
    host: int = 0
    parts: dict[str, int] = field(default_factory=dict)    # "CPU_Mapped model" -> bytes
    errors: list[str] = field(default_factory=list)        # what llama.cpp logged as errors meanwhile

    def add(self, buffer: str, kind: str, mib: float) -> None:
        size = round(mib * MIB)
        self.parts[f"{buffer} {kind}"] = self.parts.get(f"{buffer} {kind}", 0) + size
        if _GPU_BUFFER.match(buffer):
            self.device += size
        else:
            self.host += size

    @property
    def total(self) -> int:
        return self.device + self.host


@functools.lru_cache(maxsize=64)
def _header(path: str, size: int, mtime_ns: int) -> Header:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    arch = fields["general.architecture"]

    def key(name: str, default: Any = None) -> Any:
        return fields.get(f"{arch}.{name}", default)

    n_layer = int(key("block_count"))
    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    heads_kv = key("attention.head_count_kv", n_head)
    heads_kv = list(heads_kv) if isinstance(heads_kv, list) else [heads_kv] * n_layer
    k_len = int(key("attention.key_length", n_embd // n_head))
    v_len = int(key("attention.value_length", n_embd // n_head))
    layers = [0] * n_layer
    output = 0
    for t in reader.tensors:
        match = re.match(r"blk\.(\d+)\.", t.name)
        if match and int(match.group(1)) < n_layer:
            layers[int(match.group(1))] += int(t.n_bytes)
        elif t.name.startswith("output"):
            output += int(t.n_bytes)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    n_vocab = len(tokens.data)
    special = {name: fields.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos")}
    texts = {name: str(tokens.contents(int(i))) if i is not None else "" for name, i in special.items()}
    return Header(arch=arch, n_layer=n_layer, n_ctx_train=int(key("context_length", 0)), n_vocab=n_vocab, n_embd=n_embd,
                  kv_width=tuple(int(h) * (k_len + v_len) for h in heads_kv),
                  weights=sum(int(t.n_bytes) for t in reader.tensors), layer_bytes=tuple(layers),
                  output_bytes=output, chat_template=str(fields.get("tokenizer.chat_template", "")),
                  bos=texts["bos"], eos=texts["eos"])


def header(path: Path) -> Header:
    """The GGUF file's header facts (cached per path, size and mtime).

    Raises:
        ValueError: not a GGUF file, or one without the keys llama.cpp needs.
    """
    st = path.stat()
    try:
        return _header(str(path), st.st_size, st.st_mtime_ns)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path} lacks a GGUF key llama.cpp needs ({exc})") from None


def kv_bytes(h: Header, n_ctx: int, element_bytes: float) -> int:
    """The KV cache for `n_ctx` tokens: K and V of every layer, in a cache type of `element_bytes` each."""
    if h.arch in ENCODERS:
        return 0        # non-causal encoders keep no cache
    cells = -(-n_ctx // KV_PAD) * KV_PAD
    return int(sum(cells * width for width in h.kv_width) * element_bytes)


class LogCapture:
    """llama.cpp's log, routed to logging; while `capture()` is held, buffer sizes are collected too.

    llama.cpp has one process-wide log callback: loads that read it are serialized by `capture()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._measured: Measured | None = None
        self._callback: Any = None

    def install(self) -> None:
        import llama_cpp

        if self._callback is None:
            @llama_cpp.llama_log_callback
            def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                self._line(level, text.decode("utf-8", errors="replace"))

            self._callback = callback       # kept referenced: llama.cpp calls it for the life of the process
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    @contextmanager
    def capture(self) -> Iterator[Measured]:
        with self._lock:
            self._measured = Measured()
            try:
                yield self._measured
            finally:
                self._measured = None

    def _line(self, level: int, text: str) -> None:
        measured = self._measured
        if measured is not None and (m := _BUFFER.search(text)):
            measured.add(m.group(1), m.group(2), float(m.group(3)))
        if measured is not None and level == 4:
            measured.errors.append(text.strip())
        if text.strip():
            # ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation
            log.log({3: logging.WARNING, 4: logging.ERROR}.get(level, logging.DEBUG), "%s", text.rstrip())


LOG = LogCapture()
