"""`sentence-transformers`: text embeddings from a SentenceTransformer folder.

options:
  normalize: L2-normalise the embeddings (default false, as SentenceTransformer.encode)
  batch_size: texts per forward pass (default 32)

Input: `text` (one or more strings). Output: tensor "embedding", FP32 [len(text), dim].
"""
from __future__ import annotations

import os

from warmd.providers.base import InferRequest, InferResult, ModuleProvider, bad_input, module_bytes, torch_dtype


class SentenceTransformersProvider(ModuleProvider):
    name = "sentence-transformers"
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

        self.module = SentenceTransformer(str(self.files), device=self.device, local_files_only=True)
        if self.spec.precision != "fp32":
            self.module.to(torch_dtype(self.spec.precision))
        self.module.eval()
        return module_bytes(self.module)

    def infer(self, request: InferRequest) -> InferResult:
        import numpy as np

        if not request.text:
            raise bad_input(f"model {self.spec.name!r} embeds text: pass one or more texts")
        vectors = self.module.encode(
            request.text, batch_size=self.spec.options.get("batch_size", 32),
            normalize_embeddings=self.spec.options.get("normalize", False),
            convert_to_numpy=True, show_progress_bar=False)
        return InferResult(tensors={"embedding": np.asarray(vectors, dtype=np.float32)})
