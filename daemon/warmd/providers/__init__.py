"""Providers by name. Importing this module imports no runtime: each provider imports its own on load."""
from __future__ import annotations

from warmd.providers.base import CallContext, InferRequest, InferResult, Provider
from warmd.providers.llama_cpp import LlamaCppProvider
from warmd.providers.onnx import OnnxProvider
from warmd.providers.remote import RemoteProvider
from warmd.providers.sentence_transformers import SentenceTransformersProvider
from warmd.providers.torch import TorchProvider
from warmd.providers.transformers import TransformersProvider

PROVIDERS: dict[str, type[Provider]] = {
    p.name: p for p in (TorchProvider, SentenceTransformersProvider, TransformersProvider, OnnxProvider,
                        RemoteProvider, LlamaCppProvider)
}

__all__ = ["PROVIDERS", "CallContext", "InferRequest", "InferResult", "Provider"]
