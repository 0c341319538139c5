"""`transformers`: Hugging Face models from a local folder (config.json, safetensors weights, tokenizer),
the class chosen by the spec's `task`.

  text-generation       AutoModelForCausalLM. Input `text` (one prompt); parameters `max_new_tokens`
                        (default 64), `temperature` (0 = greedy, the default), `top_p`, `seed`, `stop` (a
                        string or a list). Streams text as it is generated (InferStream); the result's JSON
                        is {"text", "tokens", "stopped": "length" | "stop" }.
  feature-extraction    AutoModel, mean-pooled last hidden state: tensor "embedding" [n, hidden].
  text-classification   AutoModelForSequenceClassification: tensor "logits" [n, labels]; JSON
                        [{"label", "score"}] per text.
  token-classification  AutoModelForTokenClassification: JSON [[{"token", "label", "score"}]] per text.

options:
  max_length: truncate inputs to this many tokens (default: no truncation).

Code comes only from the installed transformers package: remote code in a model folder is never run.
"""
from __future__ import annotations

import os
import weakref
from typing import Any

from warmd.errors import Code, WarmdError
from warmd.providers.base import (InferRequest, InferResult, Provider, bad_input, module_bytes, move_module,
                                  release_module, torch_dtype)

TASKS = ("text-generation", "feature-extraction", "text-classification", "token-classification")


class TransformersProvider(Provider):
    name = "transformers"
    parkable = True
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"max_length": {"type": "integer", "minimum": 1, "maximum": 1_000_000}},
    }

    def load(self) -> int:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if self.spec.task not in TASKS:
            raise WarmdError(Code.SPEC_INVALID, f"provider transformers runs tasks {', '.join(TASKS)}; "
                             f"the spec says {self.spec.task!r}")
        auto = {"text-generation": transformers.AutoModelForCausalLM, "feature-extraction": transformers.AutoModel,
                "text-classification": transformers.AutoModelForSequenceClassification,
                "token-classification": transformers.AutoModelForTokenClassification}[self.spec.task]
        folder = str(self.files)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = auto.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                              dtype=torch_dtype(self.spec.precision)).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise WarmdError(Code.PROVIDER_FAILED, f"transformers cannot load {folder}: {exc}") from None
        return module_bytes(self.model)

    def infer(self, request: InferRequest) -> InferResult:
        if not request.text:
            raise bad_input(f"model {self.spec.name!r} takes text: pass one or more texts")
        import torch

        with torch.inference_mode():
            if self.spec.task == "text-generation":
                return self._generate(request)
            batch = self._encode(request.text)
            out = self.model(**batch)
        if self.spec.task == "feature-extraction":
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
            return InferResult(tensors={"embedding": pooled.float().cpu().numpy()})
        probs = out.logits.float().softmax(-1).cpu()
        labels = self.model.config.id2label
        if self.spec.task == "text-classification":
            best = probs.max(-1)
            return InferResult(tensors={"logits": out.logits.float().cpu().numpy()},
                               json=[{"label": labels[int(i)], "score": float(s)}
                                     for s, i in zip(best.values, best.indices)])
        tokens = [self.tokenizer.convert_ids_to_tokens(ids) for ids in batch["input_ids"].cpu().tolist()]
        best = probs.max(-1)
        return InferResult(json=[[{"token": t, "label": labels[int(i)], "score": float(s)}
                                  for t, s, i, m in zip(toks, scores, idx, mask) if m]
                                 for toks, scores, idx, mask in zip(tokens, best.values, best.indices,
                                                                    batch["attention_mask"].cpu().tolist())])

    def _encode(self, texts: list[str], new_tokens: int = 0) -> Any:
        """Tokenize, refusing inputs that (with `new_tokens` to generate) exceed the model's context: past
        it, position embeddings run out (an IndexError deep inside the model)."""
        limit = self.spec.options.get("max_length")
        batch = self.tokenizer(texts, padding=True, truncation=limit is not None or None, max_length=limit,
                               return_tensors="pt")
        context = getattr(self.model.config, "max_position_embeddings", None)
        length = int(batch["input_ids"].shape[1])
        if isinstance(context, int) and length + new_tokens > context:
            if new_tokens:
                room = f"ask for at most {context - length} new tokens" if length < context else "shorten the prompt"
                raise bad_input(f"the prompt ({length} tokens) plus max_new_tokens ({new_tokens}) exceeds the "
                                f"context length of model {self.spec.name!r} ({context} tokens, "
                                f"max_position_embeddings in its config.json); {room}")
            raise bad_input(f"the input is {length} tokens, over the context length of model {self.spec.name!r} "
                            f"({context} tokens, max_position_embeddings in its config.json); shorten it, or set "
                            "options.max_length in the spec to truncate inputs")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _generate(self, request: InferRequest) -> InferResult:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        if len(request.text) != 1:
            raise bad_input("text-generation takes one prompt per request")
        p = request.parameters
        stop = [p["stop"]] if isinstance(p.get("stop"), str) else p.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise bad_input(f"parameter 'stop' must be a string or a list of non-empty strings, got {stop!r}")
        max_new = _number_param(p, "max_new_tokens", 64, 1, 32768)
        temperature = _number_param(p, "temperature", 0.0, 0.0, 100.0, float)
        top_p = _number_param(p, "top_p", 1.0, 0.0, 1.0, float)
        if "seed" in p:
            torch.manual_seed(_number_param(p, "seed", 0, 0, 2**63 - 1))
        ctx = request.context
        pieces: list[str] = []

        tokenizer = self.tokenizer

        class Stream(BaseStreamer):
            """Hands each new piece of text to the caller as soon as its token is decoded (generate() first
            puts the prompt, then one token at a time)."""

            def __init__(self) -> None:
                self.ids: list[int] = []
                self.sent = 0
                self.prompt_seen = False

            def put(self, value) -> None:  # type: ignore[no-untyped-def]
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                self.ids.extend(value.reshape(-1).tolist())
                text = tokenizer.decode(self.ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):      # half of a multi-byte character: wait for the rest
                    return
                if len(text) > self.sent:
                    pieces.append(text[self.sent:])
                    ctx.emit(text[self.sent:])
                    self.sent = len(text)

            def end(self) -> None:
                pass

        class Stop(StoppingCriteria):
            """Between tokens: the caller cancelled (or ran out of time), or a stop string appeared."""

            def __init__(self) -> None:
                self.hit = False

            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[no-untyped-def]
                self.hit = bool(stop) and any(s in "".join(pieces) for s in stop)
                done = self.hit or ctx.cancelled.is_set() or ctx.past_deadline()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        stopper = Stop()
        batch = self._encode(request.text, new_tokens=max_new)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} \
            if temperature > 0 else {"do_sample": False}
        output = self.model.generate(
            **batch, max_new_tokens=max_new, streamer=Stream(),
            stopping_criteria=StoppingCriteriaList([stopper]), pad_token_id=self.tokenizer.pad_token_id
            or self.tokenizer.eos_token_id, **sampling)
        ctx.check()                   # cancelled mid-stream: the caller gets `cancelled`, not a short text
        text = "".join(pieces)
        for s in stop:
            if s in text:
                text = text[:text.index(s)]
        produced = int(output.shape[1] - batch["input_ids"].shape[1])
        return InferResult(json={"text": text, "tokens": produced, "stopped": "stop" if stopper.hit else "length"})

    def to_host(self) -> None:
        self.model = move_module(self.model, self.device, to_host=True)

    def to_device(self) -> None:
        self.model = move_module(self.model, self.device, to_host=False)

    def unload(self) -> None:
        if getattr(self, "model", None) is None:
            return
        ref = weakref.ref(self.model)
        self.model = None
        release_module(ref, self.device)


def _number_param(params: dict, name: str, default: float, low: float, high: float, kind: type = int) -> Any:
    """A numeric parameter within [low, high]: an integer (`kind` int) or any number (`kind` float)."""
    value = params.get(name, default)
    allowed = (int,) if kind is int else (int, float)
    if not isinstance(value, allowed) or isinstance(value, bool) or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise bad_input(f"parameter {name!r} must be {what} from {low} to {high}, got {value!r}")
    return kind(value)
