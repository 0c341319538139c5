"""`llama-cpp`: GGUF models through llama-cpp-python (llama.cpp), on the CPU or, with a CUDA build, a GPU.

  chat                The conversation (warmd.chat: `messages` and/or `text`) rendered with the model's
                      chat template, then generated token by token. Result: warmd.chat.result().
  text-generation     One prompt (`text`) continued; parameters as chat, the limit named `max_new_tokens`;
                      result {"text", "tokens", "stopped", "usage"}.
  feature-extraction  `text` -> tensor "embedding" [n, dim] (the model's pooling, mean for llama-arch).

options:
  file            the .gguf file inside the source folder (default: the only one; the first part of a split)
  n_ctx           context tokens (default: 4096, at most the model's training context)
  n_batch, n_ubatch   prompt batch sizes (default 512)
  n_gpu_layers    auto (default: as many as the GPU's budget allows, after evicting idle models),
                  -1 (all) or a number; on the CPU always 0
  threads         generation threads (default: llama-cpp-python's, half the cores)
  flash_attn      true/false (default false)
  cache_type      KV cache type: f16 (default), bf16, f32, q8_0, q4_0
  use_mmap        map the file instead of reading it (default true)
  chat_template   a Jinja chat template over the model's own
  parameters      default sampling parameters (temperature, top_p, top_k, min_p, repeat_penalty, seed, stop,
                  max_tokens); a request's parameters win
  normalize       feature-extraction: L2-normalize the embeddings (default false)

Rules held here:
- a prompt that does not fit the context, or leaves no room for max_tokens, is `invalid_argument`
  naming n_ctx (llama-cpp-python would raise a bare ValueError, or cut the generation silently);
- the caller's cancel stops generation between two tokens;
- one generation runs at a time per model (a llama.cpp context holds one sequence); further requests wait
  here, their cancellation still honoured;
- an `ollama:` source brings its template and parameters layers as defaults under the spec's options.
"""
from __future__ import annotations

import codecs
import contextlib
import ctypes
import io
import json
import logging
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from warmd import chat
from warmd.devices import gpu_index, is_gpu
from warmd.errors import Code, WarmdError
from warmd.providers.base import InferRequest, InferResult, Layers, Provider, bad_input
from warmd.spec import ModelSpec

if TYPE_CHECKING:   # imported by the calls that size or load a model: a start needs only the options schema
    from warmd.providers import gguf_memory

log = logging.getLogger(__name__)
TASKS = ("chat", "text-generation", "feature-extraction")
DEFAULT_N_CTX = 4096
# bytes per element of the KV cache types llama.cpp offers (q8_0: 34 bytes per 32, q4_0: 18 per 32)
CACHE_TYPES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
LOCK_POLL_S = 0.05
_PARAMETERS = {"type": "object", "additionalProperties": False, "properties": {
    "temperature": {"type": "number", "minimum": 0}, "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0}, "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "repeat_penalty": {"type": "number", "minimum": 0}, "seed": {"type": "integer", "minimum": 0},
    "max_tokens": {"type": "integer", "minimum": 1},
    "stop": {"oneOf": [{"type": "string", "minLength": 1},
                       {"type": "array", "items": {"type": "string", "minLength": 1}}]}}}
_LOAD_LOCK = threading.Lock()     # the dry run and the load read llama.cpp's one log


class LlamaCppProvider(Provider):
    name = "llama-cpp"
    tasks = TASKS
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "minLength": 1},
            "n_ctx": {"type": "integer", "minimum": 16, "maximum": 10_000_000},
            "n_batch": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "n_ubatch": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "n_gpu_layers": {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": -1, "maximum": 100_000}]},
            "threads": {"type": "integer", "minimum": 1, "maximum": 1024},
            "flash_attn": {"type": "boolean"},
            "cache_type": {"enum": sorted(CACHE_TYPES)},
            "use_mmap": {"type": "boolean"},
            "chat_template": {"type": "string", "minLength": 1},
            "parameters": _PARAMETERS,
            "normalize": {"type": "boolean"},
        },
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, list[Any]]]:
        yield from super().validate_options(options)
        if options.get("cache_type", "f16") in ("q8_0", "q4_0") and not options.get("flash_attn"):
            yield "a quantized cache_type (q8_0, q4_0) needs flash_attn: true (llama.cpp's rule)", ["cache_type"]

    # ---- before a load -------------------------------------------------------------------------
    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        return cls.footprint(spec, files).total

    @classmethod
    def footprint(cls, spec: ModelSpec, files: Path) -> gguf_memory.Footprint:
        """The model's bytes before loading, by part (see gguf_memory)."""
        from warmd.providers import gguf_memory

        path, settings = model_file(spec, files), Settings.of(spec, files)
        head = _header(path)
        kv = settings.kv_bytes(head)
        compute = _dry_run(str(path), path.stat().st_mtime_ns, settings)
        # the output rows (logits, or embeddings) of one sequence; the dry run does not size them
        outputs = (head.n_vocab + head.n_embd) * 4 * (settings.n_batch if settings.embedding else 1)
        return gguf_memory.Footprint(weights=head.weights, kv=kv, compute=compute + outputs,
                                     host_arrays=settings.host_arrays(head))

    @classmethod
    def layers(cls, spec: ModelSpec, files: Path) -> Layers | None:
        path, settings = model_file(spec, files), Settings.of(spec, files)
        head = _header(path)
        per_layer_kv = settings.kv_bytes(head) // max(1, head.n_layer)
        # llama.cpp offloads the output layer first, then blocks from the last one down
        sizes = (head.output_bytes, *(b + per_layer_kv for b in reversed(head.layer_bytes)))
        wanted = spec.options.get("n_gpu_layers", "auto")
        count = len(sizes) if wanted in ("auto", -1) else min(int(wanted), len(sizes))
        return Layers(sizes=sizes, host=head.weights - head.output_bytes - sum(head.layer_bytes)
                      + settings.host_arrays(head), wanted=count, flexible=wanted == "auto")

    # ---- load / unload -------------------------------------------------------------------------
    def load(self) -> int:
        from warmd.providers import gguf_memory

        llama_cpp = _import()
        self.check_task()
        path, settings = model_file(self.spec, self.files), Settings.of(self.spec, self.files)
        total_layers = _header(path).n_layer + 1          # the blocks and the output layer
        on_gpu = self.gpu_layers if self.gpu_layers is not None else -1
        self.offloaded = (total_layers if on_gpu < 0 else min(on_gpu, total_layers), total_layers)
        real_gpu = is_gpu(self.device)          # a simulated GPU's device is "cpu"
        if real_gpu and not llama_cpp.llama_supports_gpu_offload():
            raise WarmdError(Code.DEVICE_UNAVAILABLE, f"{self.spec.name} is placed on {self.device}, but this "
                             "llama-cpp-python is a CPU build; rebuild it with CMAKE_ARGS=\"-DGGML_CUDA=on\" "
                             "(see README, llama-cpp) or set `device: cpu`")
        self.template = self._template(path) if self.spec.task == "chat" else ""
        self.defaults = {**source_defaults(self.spec).parameters, **self.spec.options.get("parameters", {})}
        kwargs = settings.llama_kwargs(on_gpu if real_gpu else 0, self.device)
        with _LOAD_LOCK, gguf_memory.LOG.capture() as measured, contextlib.redirect_stderr(io.StringIO()) as said:
            try:
                self.llm = llama_cpp.Llama(model_path=str(path), **kwargs, verbose=True)
            except (ValueError, RuntimeError) as exc:
                raise WarmdError(Code.PROVIDER_FAILED, f"llama.cpp cannot load {path}: {exc}") from None
        log.debug("llama-cpp-python on loading %s: %s", path.name, said.getvalue())
        self.llm.verbose = False      # its per-request prints would go to the daemon's stderr
        self._lock = threading.Lock()
        self._vocab = self.llm._model.vocab
        self._bos = self.llm._model.token_get_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
        self._eos = self.llm._model.token_get_text(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        total = measured.total + self.llm.scores.nbytes + self.llm.input_ids.nbytes
        if real_gpu:
            self.host_bytes = total - measured.device
            return measured.device
        if self.gpu_layers is None:
            self.offloaded = (0, total_layers)
            return total
        # a simulated GPU (tensors in host memory): the split follows the plan
        plan = self.layers(self.spec, self.files)
        self.host_bytes = plan.host_bytes(self.offloaded[0]) if plan is not None else 0
        return max(0, total - self.host_bytes)

    def unload(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()

    # ---- requests ------------------------------------------------------------------------------
    def infer(self, request: InferRequest) -> InferResult:
        if self.spec.task == "feature-extraction":
            if not request.text:
                raise bad_input(f"model {self.spec.name!r} takes text: pass one or more texts")
            with self._turn(request):
                return self._embed(request.text)
        if self.spec.task == "chat":
            conversation = chat.messages(request.parameters, request.text)
            sampling = chat.sampling(request.parameters, self.defaults)
            prompt = chat.render(self.template, conversation, bos_token=self._bos, eos_token=self._eos,
                                 tools=request.parameters.get("tools"))
            with self._turn(request):
                tokens = self.llm.tokenize(prompt.encode(), add_bos=not (self._bos and prompt.startswith(self._bos)),
                                           special=True)
                text, produced, stopped = self._generate(tokens, sampling, request)
            return InferResult(json=chat.result(text, stopped, len(tokens), produced))
        if len(request.text) != 1:
            raise bad_input("text-generation takes one prompt per request (`text`)")
        sampling = chat.sampling(request.parameters, self.defaults, max_name="max_new_tokens")
        with self._turn(request):
            tokens = self.llm.tokenize(request.text[0].encode(), add_bos=True, special=False)
            text, produced, stopped = self._generate(tokens, sampling, request)
        return InferResult(json={"text": text, "tokens": produced, "stopped": stopped,
                                 "usage": {"prompt_tokens": len(tokens), "completion_tokens": produced}})

    @contextlib.contextmanager
    def _turn(self, request: InferRequest):  # type: ignore[no-untyped-def]
        """This model's context, once the request before has finished (the wait honours cancellation)."""
        while not self._lock.acquire(timeout=LOCK_POLL_S):
            request.context.check()
        try:
            request.context.check()
            yield
        finally:
            self._lock.release()

    def _generate(self, tokens: list[int], s: chat.Sampling, request: InferRequest) -> tuple[str, int, str]:
        """Generate after `tokens`; returns (text without stop strings, tokens generated, why it stopped)."""
        import llama_cpp

        n_ctx = self.llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise bad_input(f"the prompt is {len(tokens)} tokens; the context (n_ctx) holds {n_ctx}: shorten it or "
                            "raise options.n_ctx in the spec")
        room = n_ctx - len(tokens)
        if s.max_tokens is not None and s.max_tokens > room:
            raise bad_input(f"the prompt is {len(tokens)} tokens and max_tokens {s.max_tokens}: together more than "
                            f"the context (n_ctx {n_ctx}); lower max_tokens to {room} or raise options.n_ctx")
        limit = s.max_tokens or room
        self.llm.set_seed(s.seed if s.seed is not None else random.randrange(2**32))
        ctx, stops = request.context, chat.StopFilter(s.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        produced, stopped = 0, "length"
        steps = self.llm.generate(tokens, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, temp=s.temperature,
                                  repeat_penalty=s.repeat_penalty, grammar=_grammar(s.response_format))
        try:
            for token in steps:
                ctx.check()                                      # the caller cancelled: stop between tokens
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    stopped = "stop"
                    break
                produced += 1
                if piece := stops.feed(decoder.decode(self._piece(token))):
                    ctx.emit(piece)
                if stops.hit:
                    stopped = "stop"
                    break
                if produced >= limit:
                    break
        finally:
            steps.close()
        if tail := stops.feed(decoder.decode(b"", final=True)) + stops.flush():
            ctx.emit(tail)
        return stops.text, produced, stopped

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:                                  # longer than the buffer: -n is the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _embed(self, texts: list[str]) -> InferResult:
        import numpy as np

        n_ctx = self.llm.n_ctx()
        for i, text in enumerate(texts):
            count = len(self.llm.tokenize(text.encode(), add_bos=True))
            if count > min(n_ctx, self.llm.n_batch):
                raise bad_input(f"text {i} is {count} tokens; this model embeds at most {min(n_ctx, self.llm.n_batch)}"
                                " (n_ctx / n_batch): shorten it or raise options.n_batch and n_ctx")
        vectors = self.llm.embed(texts, normalize=self.spec.options.get("normalize", False), truncate=False)
        return InferResult(tensors={"embedding": np.asarray(vectors, dtype=np.float32)})

    def _template(self, path: Path) -> str:
        template = (self.spec.options.get("chat_template") or source_defaults(self.spec).template
                    or _header(path).chat_template)
        if not template:
            raise WarmdError(Code.SPEC_INVALID, f"{path.name} has no chat template (tokenizer.chat_template); set "
                             "options.chat_template in the spec, or use task text-generation")
        chat.compile_template(template)       # a template that does not parse fails the load, not a request
        return template


class Settings:
    """The load parameters of one spec, as llama-cpp-python and the dry run both get them."""

    def __init__(self, spec: ModelSpec, n_ctx_train: int, defaults_n_ctx: int | None) -> None:
        o = spec.options
        default_ctx = defaults_n_ctx or DEFAULT_N_CTX
        self.n_ctx = o.get("n_ctx", min(default_ctx, n_ctx_train) if n_ctx_train else default_ctx)
        self.n_batch = min(self.n_ctx, o.get("n_batch", 512))
        self.n_ubatch = min(self.n_batch, o.get("n_ubatch", 512))
        self.flash_attn = o.get("flash_attn", False)
        self.cache_type = o.get("cache_type", "f16")
        self.use_mmap = o.get("use_mmap", True)
        self.threads = o.get("threads")
        self.embedding = spec.task == "feature-extraction"

    @classmethod
    def of(cls, spec: ModelSpec, files: Path) -> "Settings":
        return cls(spec, _header(model_file(spec, files)).n_ctx_train, source_defaults(spec).n_ctx)

    def kv_bytes(self, head: gguf_memory.Header) -> int:
        """The KV cache these settings make llama.cpp allocate (see gguf_memory)."""
        from warmd.providers import gguf_memory

        return gguf_memory.kv_bytes(head, self.n_ctx, CACHE_TYPES[self.cache_type])

    def host_arrays(self, head: gguf_memory.Header) -> int:
        """llama-cpp-python's own host arrays: logits rows (n_batch x n_vocab float32) and token ids."""
        return (self.n_batch * head.n_vocab + self.n_ctx) * 4

    def key(self) -> tuple:
        return (self.n_ctx, self.n_batch, self.n_ubatch, self.flash_attn, self.cache_type, self.embedding)

    def llama_kwargs(self, gpu_layers: int, device: str) -> dict[str, Any]:
        import llama_cpp

        cache = getattr(llama_cpp, f"GGML_TYPE_{self.cache_type.upper()}")
        kwargs: dict[str, Any] = dict(
            n_ctx=self.n_ctx, n_batch=self.n_batch, n_ubatch=self.n_ubatch, flash_attn=self.flash_attn,
            type_k=cache, type_v=cache, use_mmap=self.use_mmap, embedding=self.embedding,
            n_gpu_layers=gpu_layers, offload_kqv=gpu_layers != 0)
        index = gpu_index(device)
        if index is not None and gpu_layers:
            kwargs.update(main_gpu=index, split_mode=llama_cpp.LLAMA_SPLIT_MODE_NONE)
        if self.embedding:
            kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED   # the model's own (mean: llama)
        if self.threads:
            kwargs.update(n_threads=self.threads, n_threads_batch=self.threads)
        return kwargs


_dry_runs: dict[tuple, int] = {}


def _dry_run(path: str, mtime_ns: int, settings: Settings) -> int:
    """The compute buffers llama.cpp reserves for a context with these settings, measured by llama.cpp
    without allocating anything (the model loaded with no_alloc: only its metadata is read; the dry run
    sizes no other buffer). Remembered per file and settings."""
    key = (path, mtime_ns, settings.key())
    if key in _dry_runs:
        return _dry_runs[key]
    from warmd.providers import gguf_memory

    llama_cpp = _import()
    with _LOAD_LOCK, gguf_memory.LOG.capture() as measured:
        mparams = llama_cpp.llama_model_default_params()
        mparams.no_alloc, mparams.n_gpu_layers, mparams.load_mode = True, 0, llama_cpp.LLAMA_LOAD_MODE_NONE
        model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not model:
            raise WarmdError(Code.PROVIDER_FAILED, f"llama.cpp cannot read {path}: {'; '.join(measured.errors[-2:])}")
        try:
            cparams = llama_cpp.llama_context_default_params()
            for name, value in settings.llama_kwargs(0, "cpu").items():
                if name in ("n_ctx", "n_batch", "n_ubatch", "offload_kqv"):
                    setattr(cparams, name, value)
            cparams.type_k = cparams.type_v = getattr(llama_cpp, f"GGML_TYPE_{settings.cache_type.upper()}")
            cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn
                                       else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            cparams.embeddings = settings.embedding
            if settings.embedding:    # as llama-cpp-python sets them for embedding models
                cparams.n_seq_max = min(settings.n_batch, llama_cpp.llama_max_parallel_sequences())
                cparams.kv_unified = True
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if not ctx:
                raise WarmdError(Code.PROVIDER_FAILED, f"llama.cpp cannot make a context for {path}: "
                                 f"{'; '.join(measured.errors[-2:])}")
            llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    _dry_runs[key] = compute = sum(v for k, v in measured.parts.items() if k.endswith(" compute"))
    return compute


def model_file(spec: ModelSpec, files: Path) -> Path:
    """The .gguf file to load: the source itself, options.file, or the only (first split) .gguf in the folder.

    Raises:
        WarmdError: `weights_missing` when there is none, `spec_invalid` when the choice is ambiguous.
    """
    if files.is_file():
        return files
    if "file" in spec.options:
        path = (files / spec.options["file"]).resolve()
        if not path.is_relative_to(files.resolve()):
            raise WarmdError(Code.SPEC_INVALID, f"options.file {spec.options['file']!r} points outside the model's files")
        if not path.is_file():
            raise WarmdError(Code.WEIGHTS_MISSING, f"{path} does not exist; set options.file")
        return path
    found = sorted(p for p in files.rglob("*.gguf") if "-of-" not in p.name or "-00001-of-" in p.name)
    if len(found) != 1:
        raise WarmdError(Code.WEIGHTS_MISSING if not found else Code.SPEC_INVALID,
                         f"{files} holds {len(found)} GGUF files ({', '.join(p.name for p in found[:5])}); "
                         "narrow the source (allow_patterns) or set options.file")
    return found[0]


def source_defaults(spec: ModelSpec):  # type: ignore[no-untyped-def]
    """The template and parameters the source brings (Ollama's layers), or empty ones."""
    from warmd.store.sources import handler

    return handler(spec.source).defaults(spec.source)


def _header(path: Path) -> gguf_memory.Header:
    from warmd.providers import gguf_memory

    try:
        return gguf_memory.header(path)
    except ImportError:
        raise WarmdError(Code.UNSUPPORTED_PROVIDER, "the llama-cpp provider needs the gguf package: "
                         "pip install 'warmd[llama-cpp]'") from None
    except ValueError as exc:
        raise WarmdError(Code.PROVIDER_FAILED, f"{path} is not a GGUF file llama.cpp can load: {exc}") from None


_grammars: dict[str, Any] = {}


def _grammar(response_format: Any) -> Any:
    """llama.cpp's grammar for a JSON response format (compiled once per schema), or None."""
    if response_format is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    schema = response_format.get("schema")
    key = json.dumps(schema, sort_keys=True) if schema is not None else ""
    if key not in _grammars:
        try:
            _grammars[key] = (LlamaGrammar.from_json_schema(key, verbose=False) if schema is not None
                              else LlamaGrammar.from_string(JSON_GBNF, verbose=False))
        except Exception as exc:  # noqa: BLE001 - the schema converter asserts, raises KeyError, ValueError...
            raise bad_input(f"response_format.schema cannot be turned into a grammar: "
                            f"{type(exc).__name__}: {exc}") from None
    return _grammars[key]


def _import():  # type: ignore[no-untyped-def]
    from warmd.providers import gguf_memory

    try:
        import llama_cpp
    except ImportError:
        raise WarmdError(Code.UNSUPPORTED_PROVIDER, "the llama-cpp provider needs llama-cpp-python: "
                         "pip install 'warmd[llama-cpp]' (see README, llama-cpp)") from None
    gguf_memory.LOG.install()
    return llama_cpp
