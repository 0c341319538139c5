"""Tiny GGUF models for tests and benchmarks, written with the `gguf` package: llama architecture, random
weights from a seed, a small SentencePiece-style vocabulary and a Jinja chat template, so llama.cpp loads
and runs them for real in milliseconds.

The vocabulary has the 256 byte tokens `<0x00>`..`<0xFF>` (llama.cpp looks up `<0x0A>` for a newline and
falls back to bytes for anything else), a few hundred words, and control tokens for the chat template.
Random weights would emit control bytes and stop at random: hidden dimension 0 is kept constant through
every layer (its embedding is 1, no block writes to it), and the output layer reads it to push byte,
control and end-of-sequence tokens far down, so generations are printable words and run to max_tokens.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from models import WORDS

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONTROL = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


@dataclass(frozen=True)
class TinyLlama:
    """The shape of a tiny model (defaults: ~1 MiB of F32 weights)."""

    layers: int = 2
    hidden: int = 64
    ff: int = 128
    heads: int = 4
    kv_heads: int = 2
    context: int = 4096       # the model's training context (n_ctx_train)
    seed: int = 0


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types): <unk> <s> </s>, the control tokens, 256 bytes, then words and letters."""
    import gguf

    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", *CONTROL]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, *[T.CONTROL] * len(CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    words = sorted(set(WORDS.split()))
    pieces = [f"\u2581{w}" for w in words] + list("abcdefghijklmnopqrstuvwxyz") + ["\u2581", ",", ".", "!", "?"]
    tokens += pieces
    types += [T.NORMAL] * len(pieces)
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i) / 10 for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: Path, shape: TinyLlama = TinyLlama(), embedding: bool = False) -> Path:
    """Write a runnable llama-architecture GGUF file at `path` (`embedding`: mean pooling, for
    feature-extraction). Returns the path."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(shape.seed)
    tokens, scores, types = vocabulary()
    n_vocab, d, head_dim = len(tokens), shape.hidden, shape.hidden // shape.heads
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(shape.layers)
    w.add_context_length(shape.context)
    w.add_embedding_length(d)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if embedding:
        w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_eot_token_id(tokens.index("<|end|>"))
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(*dims: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(dims) * scale / np.sqrt(dims[-1])).astype(np.float32)

    embd = rand(n_vocab, d, scale=8.0)
    embd[:, 0] = 1.0                      # the constant dimension the output layer reads
    w.add_tensor("token_embd.weight", embd)
    for i in range(shape.layers):
        writes = {"attn_output": rand(d, d), "ffn_down": rand(d, shape.ff)}
        for out in writes.values():
            out[0, :] = 0.0               # no block writes to dimension 0: it stays constant
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(d, d))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(shape.kv_heads * head_dim, d))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(shape.kv_heads * head_dim, d))
        w.add_tensor(f"blk.{i}.attn_output.weight", writes["attn_output"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(shape.ff, d))
        w.add_tensor(f"blk.{i}.ffn_down.weight", writes["ffn_down"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(shape.ff, d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    output = rand(n_vocab, d, scale=4.0)
    unwanted = [i for i, t in enumerate(types) if t != int(gguf.TokenType.NORMAL)]
    output[unwanted, 0] = -200.0          # bytes, control tokens and EOS: never likely
    w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_spec(path: Path, *, task: str = "chat", options: str = "", extra: str = "") -> str:
    """A spec file's text serving the GGUF at `path` through the llama-cpp provider on the CPU."""
    return (f"provider: llama-cpp\ntask: {task}\ndevice: cpu\nsource: {{path: {path}}}\n"
            + (f"options: {{{options}}}\n" if options else "") + extra)


def write_ollama_store(root: Path, gguf_path: Path, name: str = "tiny", tag: str = "latest",
                       template: str | None = None, params: dict | None = None) -> Path:
    """Lay out an Ollama model store under `root` (what `ollama pull` leaves): the GGUF as a blob named by
    its sha256, optional template and params layers, and the manifest. Returns the model blob."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return f"sha256:{digest}", len(data)

    layers = []
    for media, data in (("model", gguf_path.read_bytes()),
                        ("template", template.encode() if template is not None else None),
                        ("params", json.dumps(params).encode() if params is not None else None)):
        if data is not None:
            digest, size = blob(data)
            layers.append({"mediaType": f"application/vnd.ollama.image.{media}", "digest": digest, "size": size})
    config_digest, config_size = blob(json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": config_digest, "size": config_size}, "layers": layers}
    folder = root / "manifests" / "registry.ollama.ai" / "library" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tag).write_text(json.dumps(manifest))
    return blobs / f"sha256-{layers[0]['digest'].split(':')[1]}"


if __name__ == "__main__":       # `python tests/gguf_models.py OUT.gguf`: a tiny chat model to try warmd with
    import sys

    print(write_tiny_llama(Path(sys.argv[1]).expanduser()))
