"""Provider `triton-example`: what Triton's example models that torch cannot express compute (BYTES
tensors, sequences), as a warmd provider plugin. `options.model` picks one:

    simple_string                 OUTPUT0/OUTPUT1 = sum/difference of INPUT0 and INPUT1, decimal text in BYTES
    simple_identity               OUTPUT0 = INPUT0 (BYTES)
    simple_sequence               OUTPUT = INPUT + START (1 on a sequence's first request)
    simple_dyna_sequence          OUTPUT = INPUT + START, plus the correlation id on the sequence's last request
    simple_string_dyna_sequence   OUTPUT = running sum of INPUT over the sequence, plus the id on the last request

Sequences come as Triton's clients send them: the `sequence_id`, `sequence_start` and `sequence_end`
request parameters (the id an integer or a string of digits).
"""
from __future__ import annotations

import threading

import numpy as np

from warmd.providers import InferResult, Provider
from warmd.providers.base import bad_input

MODELS = ["simple_string", "simple_identity", "simple_sequence", "simple_dyna_sequence",
          "simple_string_dyna_sequence"]


class TritonExample(Provider):
    name = "triton-example"
    options_schema = {"type": "object", "additionalProperties": False, "required": ["model"],
                      "properties": {"model": {"enum": MODELS}}}

    @classmethod
    def estimate(cls, spec, files):  # type: ignore[no-untyped-def]
        return 0

    def load(self) -> int:
        self._sums: dict[int, np.ndarray] = {}     # sequence id -> running sum (simple_string_dyna_sequence)
        self._lock = threading.Lock()
        return 0

    def unload(self) -> None:
        self._sums = {}

    def infer(self, request):  # type: ignore[no-untyped-def]
        model = self.spec.options["model"]
        tensors = request.tensors
        if model == "simple_string":
            a, b = (_numbers(tensors[n]) for n in ("INPUT0", "INPUT1"))
            return InferResult(tensors={"OUTPUT0": _text(a + b), "OUTPUT1": _text(a - b)})
        if model == "simple_identity":
            return InferResult(tensors={"OUTPUT0": tensors["INPUT0"]})
        return InferResult(tensors={"OUTPUT": self._sequence(model, tensors["INPUT"], request.parameters)})

    def _sequence(self, model: str, value: np.ndarray, params: dict) -> np.ndarray:  # type: ignore[type-arg]
        start, end = bool(params.get("sequence_start")), bool(params.get("sequence_end"))
        if model == "simple_sequence":
            return value + int(start)
        corrid = _correlation_id(params)
        if model == "simple_dyna_sequence":
            return value + int(start) + (corrid if end else 0)
        with self._lock:
            total = value if start else self._sums.get(corrid, 0) + value
            if end:
                self._sums.pop(corrid, None)
            else:
                self._sums[corrid] = total
        return (total + (corrid if end else 0)).astype(np.int32)


def _numbers(items: np.ndarray) -> np.ndarray:
    try:
        return np.vectorize(lambda item: int(item.decode()), otypes=[np.int64])(items)
    except (ValueError, UnicodeDecodeError):
        raise bad_input("simple_string takes BYTES elements that are decimal integers") from None


def _text(values: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: str(v).encode(), otypes=[object])(values)


def _correlation_id(params: dict) -> int:  # type: ignore[type-arg]
    try:
        return int(params["sequence_id"])
    except (KeyError, ValueError):
        raise bad_input("a dynamic sequence model needs a sequence_id that is an integer (or a string of "
                        "digits)") from None
