"""`transformers`: Hugging Face models from a local folder (config.json, safetensors weights, tokenizer),
the class chosen by the spec's `task`.

  text-generation       AutoModelForCausalLM. Input `text` (one prompt); parameters `max_new_tokens`
                        (default 64), `temperature` (0 = greedy, the default), `top_p`, `top_k`, `min_p`,
                        `repeat_penalty`, `seed`, `stop` (a string or a list, never sent). Streams text as it
                        is generated (InferStream); the result's JSON is {"text", "tokens", "stopped":
                        "length" | "stop", "usage": {"prompt_tokens", "completion_tokens"}}.
  chat                  AutoModelForCausalLM with the tokenizer's chat template (tokenizer_config.json) or
                        options.chat_template, rendered by warmd.chat (the llama-cpp provider's request and
                        result shape; greedy unless `temperature` is given; no response_format).
  feature-extraction    AutoModel, mean-pooled last hidden state: tensor "embedding" [n, hidden].
  text-classification   AutoModelForSequenceClassification: tensor "logits" [n, labels]; JSON
                        [{"label", "score"}] per text.
  token-classification  AutoModelForTokenClassification: JSON [[{"token", "label", "score"}]] per text.

options:
  max_length: truncate inputs to this many tokens (default: no truncation).
  chat_template: a Jinja chat template over the tokenizer's own (task chat).

Code comes only from the installed transformers package: remote code in a model folder is never run.
"""
from __future__ import annotations

import os
from typing import Any

from warmd import chat
from warmd.errors import Code, WarmdError
from warmd.providers.base import InferRequest, InferResult, ModuleProvider, bad_input, module_bytes, torch_dtype

# greedy unless asked; when sampling, plain temperature (and top_p 1): generate()'s own defaults
_DEFAULTS = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}
_UNKNOWN_CONTEXT = 2048    # chat's default length limit for a model whose config has no max_position_embeddings
# The tasks it runs, each with the transformers class that loads its model.
_CLASSES = {"chat": "AutoModelForCausalLM", "text-generation": "AutoModelForCausalLM",
            "feature-extraction": "AutoModel", "text-classification": "AutoModelForSequenceClassification",
            "token-classification": "AutoModelForTokenClassification"}
TASKS = tuple(_CLASSES)


class TransformersProvider(ModuleProvider):
    name = "transformers"
    tasks = TASKS
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"max_length": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                       "chat_template": {"type": "string", "minLength": 1}},
    }

    def load(self) -> int:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.check_task()
        auto = getattr(transformers, _CLASSES[self.spec.task])
        folder = str(self.files)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.module = auto.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                              dtype=torch_dtype(self.spec.precision)).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise WarmdError(Code.PROVIDER_FAILED, f"transformers cannot load {folder}: {exc}") from None
        if self.spec.task == "chat":
            self.template = self.spec.options.get("chat_template") or self.tokenizer.chat_template or ""
            if not isinstance(self.template, str) or not self.template:
                raise WarmdError(Code.SPEC_INVALID, f"{folder} has no chat template (tokenizer_config.json "
                                 "chat_template); set options.chat_template in the spec, or use task text-generation")
            chat.compile_template(self.template)
        return module_bytes(self.module)

    def infer(self, request: InferRequest) -> InferResult:
        if self.spec.task == "chat":
            return self._chat(request)
        if not request.text:
            raise bad_input(f"model {self.spec.name!r} takes text: pass one or more texts")
        import torch

        if self.spec.task == "text-generation":
            return self._generate(request)
        with torch.inference_mode():
            batch = self._encode(request.text)
            out = self.module(**batch)
        if self.spec.task == "feature-extraction":
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
            return InferResult(tensors={"embedding": pooled.float().cpu().numpy()})
        probs = out.logits.float().softmax(-1).cpu()
        labels = self.module.config.id2label
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
        """Tokenize, refusing inputs that (with `new_tokens` to generate) exceed the model's context."""
        limit = self.spec.options.get("max_length")
        batch = self.tokenizer(texts, padding=True, truncation=limit is not None or None, max_length=limit,
                               return_tensors="pt")
        self._check_context(int(batch["input_ids"].shape[1]), new_tokens)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _context(self) -> int | None:
        """The model's context length in tokens (max_position_embeddings), when its config says."""
        context = getattr(self.module.config, "max_position_embeddings", None)
        return context if isinstance(context, int) else None

    def _check_context(self, length: int, new_tokens: int = 0, asked: str = "max_new_tokens") -> None:
        """Refuse `length` input tokens (and `new_tokens` to generate, the parameter `asked`) past the
        model's context, before running: past it, position embeddings run out (an IndexError deep inside
        the model).

        Raises:
            WarmdError: `invalid_argument` naming the context length and what fits.
        """
        context = self._context()
        if context is None or length + new_tokens <= context:
            return
        where = (f"the context length of model {self.spec.name!r} ({context} tokens, max_position_embeddings in "
                 "its config.json)")
        if not new_tokens:
            raise bad_input(f"the input is {length} tokens, over {where}; shorten it, or set options.max_length "
                            "in the spec to truncate inputs")
        room = f"ask for at most {context - length} new tokens" if length < context else "shorten the prompt"
        raise bad_input(f"the prompt ({length} tokens) plus {asked} ({new_tokens}) exceeds {where}; {room}")

    def _generate(self, request: InferRequest) -> InferResult:
        if len(request.text) != 1:
            raise bad_input("text-generation takes one prompt per request")
        s = chat.sampling(request.parameters, _DEFAULTS, max_name="max_new_tokens")
        max_new = s.max_tokens or 64
        batch = self._encode(request.text, new_tokens=max_new)
        text, produced, stopped = self._run(batch, s, max_new, request)
        return InferResult(json={"text": text, "tokens": produced, "stopped": stopped,
                                 "usage": {"prompt_tokens": int(batch["input_ids"].shape[1]),
                                           "completion_tokens": produced}})

    def _chat(self, request: InferRequest) -> InferResult:
        conversation = chat.messages(request.parameters, request.text)
        s = chat.sampling(request.parameters, _DEFAULTS)
        if s.response_format is not None:
            raise bad_input("the transformers provider has no grammar for response_format; serve the model "
                            "as GGUF with provider llama-cpp for structured output")
        tok = self.tokenizer
        prompt = chat.render(self.template, conversation, bos_token=tok.bos_token or "",
                             eos_token=tok.eos_token or "")
        batch = {k: v.to(self.device) for k, v in tok(prompt, add_special_tokens=False, return_tensors="pt").items()}
        length = int(batch["input_ids"].shape[1])
        # without max_tokens: until the end of the turn or of the context
        max_new = s.max_tokens or max(1, (self._context() or _UNKNOWN_CONTEXT) - length)
        self._check_context(length, max_new, asked="max_tokens")
        text, produced, stopped = self._run(batch, s, max_new, request)
        return InferResult(json=chat.result(text, stopped, length, produced))

    def _run(self, batch: Any, s: chat.Sampling, max_new: int, request: InferRequest) -> tuple[str, int, str]:
        """generate() with streaming, stop strings (held back, never sent) and cancellation between tokens;
        returns (text, tokens generated, "stop" | "length")."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        if s.seed is not None:
            torch.manual_seed(s.seed)
        ctx, stops, tokenizer = request.context, chat.StopFilter(s.stop), self.tokenizer

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
                if len(text) > self.sent and (piece := stops.feed(text[self.sent:])):
                    ctx.emit(piece)
                self.sent = len(text)

            def end(self) -> None:
                if tail := stops.flush():
                    ctx.emit(tail)

        class Stop(StoppingCriteria):
            """Between tokens: the caller cancelled (or ran out of time), or a stop string appeared."""

            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[no-untyped-def]
                done = stops.hit or ctx.cancelled.is_set() or ctx.past_deadline()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p,
                    **({"top_k": s.top_k} if s.top_k else {}), **({"min_p": s.min_p} if s.min_p else {})} \
            if s.temperature > 0 else {"do_sample": False}
        if s.repeat_penalty != 1.0:
            sampling["repetition_penalty"] = s.repeat_penalty
        with torch.inference_mode():
            output = self.module.generate(
                **batch, max_new_tokens=max_new, streamer=Stream(), stopping_criteria=StoppingCriteriaList([Stop()]),
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id, **sampling)
        ctx.check()                   # cancelled mid-stream: the caller gets `cancelled`, not a short text
        produced = int(output.shape[1] - batch["input_ids"].shape[1])
        return stops.text, produced, "stop" if stops.hit or produced < max_new else "length"

