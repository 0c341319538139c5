"""`sentence-transformers`: text embeddings from a SentenceTransformer folder.

options:
  normalize: L2-normalise the embeddings (default false, as SentenceTransformer.encode)
  batch_size: texts per forward pass (default 32)

Input: `text` (one or more strings). Output: tensor "embedding", FP32 [len(text), dim].
"""
from __future__ import annotations

import os
import weakref

from warmd.providers.base import (InferRequest, InferResult, Provider, bad_input, module_bytes, move_module,
                                  release_module, torch_dtype)


class SentenceTransformersProvider(Provider):
    name = "sentence-transformers"
    parkable = True
    batchable = True
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "normalize": {"type": "boolean"},
            "batch_size": {"type": "integer", "minimum": 1, "maximum": 4096},
        },
    }

    def load(self) -> int:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # no bars in the daemon's log
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.model = SentenceTransformer(str(self.files), device=self.device, local_files_only=True)
        if self.spec.precision != "fp32":
            self.model.to(torch_dtype(self.spec.precision))
        self.model.eval()
        return module_bytes(self.model)

    def infer(self, request: InferRequest) -> InferResult:
        import numpy as np

        if not request.text:
            raise bad_input(f"model {self.spec.name!r} embeds text: pass one or more texts")
        vectors = self.model.encode(
            request.text, batch_size=self.spec.options.get("batch_size", 32),
            normalize_embeddings=self.spec.options.get("normalize", False),
            convert_to_numpy=True, show_progress_bar=False)
        return InferResult(tensors={"embedding": np.asarray(vectors, dtype=np.float32)})

    def to_host(self) -> None:
        self.model = move_module(self.model, self.device, to_host=True)

    def to_device(self) -> None:
        self.model = move_module(self.model, self.device, to_host=False)

    def unload(self) -> None:
        if self.model is None:
            return
        ref = weakref.ref(self.model)
        self.model = None
        release_module(ref, self.device)
