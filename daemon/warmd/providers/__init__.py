"""Providers by name. Importing this module imports no runtime: each provider imports its own on load."""
from __future__ import annotations

from warmd.providers.base import InferRequest, InferResult, Provider
from warmd.providers.sentence_transformers import SentenceTransformersProvider
from warmd.providers.torch import TorchProvider

PROVIDERS: dict[str, type[Provider]] = {
    p.name: p for p in (TorchProvider, SentenceTransformersProvider)
}

__all__ = ["PROVIDERS", "InferRequest", "InferResult", "Provider"]
