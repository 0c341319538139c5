"""V2 `ModelConfig` from a spec, and a V2 load's `config` override mapped back onto spec fields.

Rules:
  - The config is synthesized, never stored: name, platform and backend (the provider), version policy
    (latest 1: a spec serves one version), max_batch_size (`max_batch`, 0 when batching is off), inputs
    and outputs with Triton's data types (BYTES is TYPE_STRING) and dims (without the batch dimension
    when max_batch_size > 0), dynamic batching when the provider batches, one instance group on the
    model's device (where it is resident, else what the spec asks for).
  - An override maps onto spec fields: `max_batch_size` (`max_batch`), `dynamic_batching.
    max_queue_delay_microseconds` (`max_delay_ms`) and one `instance_group` (`device`: its kind and at most
    one GPU). Any other field is accepted only when it equals what ModelConfig reports (tools send a fetched
    config back with one change); otherwise it is refused, naming the field, as is JSON that does not
    parse or a field this config has no place for. Values are checked against the spec schema's limits.
"""
from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from warmd.devices import gpu_index, is_gpu
from warmd.errors import Code, WarmdError
from warmd.scheduler import ModelView
from warmd.spec import ModelSpec, schema
from warmd.v2 import inference_pb2 as v2

_MAPPED = ("max_batch_size", "dynamic_batching", "instance_group")
_KIND = v2.ModelInstanceGroup.Kind


def data_type(dtype: str) -> int:
    """Triton's DataType for a protocol dtype name."""
    return v2.DataType.Value("TYPE_STRING" if dtype == "BYTES" else f"TYPE_{dtype}")


def synthesize(spec: ModelSpec, view: ModelView, batches: bool) -> v2.ModelConfig:
    """The ModelConfig of `spec` as it is now (`view`); `batches`: its provider joins requests."""
    batch = spec.max_batch if spec.max_batch > 1 else 0
    config = v2.ModelConfig(name=spec.name, platform=spec.provider, backend=spec.provider, max_batch_size=batch,
                            version_policy=v2.ModelVersionPolicy(latest=v2.ModelVersionPolicy.Latest(num_versions=1)))
    for decl in spec.inputs:
        config.input.add(name=decl.name, data_type=data_type(decl.dtype), dims=_dims(decl.shape, batch))
    for decl in spec.outputs:
        config.output.add(name=decl.name, data_type=data_type(decl.dtype), dims=_dims(decl.shape, batch))
    if batch and batches:
        config.dynamic_batching.max_queue_delay_microseconds = round(spec.max_delay_ms * 1000)
    device = view.resident.device if view.resident is not None else spec.device
    group = config.instance_group.add(name=spec.name, count=1)
    if device == "cpu":
        group.kind = _KIND.KIND_CPU
    elif is_gpu(device):
        group.kind = _KIND.KIND_GPU
        group.gpus.extend([gpu_index(device)] if ":" in device else [])    # bare "cuda": any GPU
    return config


def _dims(shape: tuple[int, ...], batch: int) -> list[int]:
    return list(shape[1:] if batch and shape else shape)


def override(spec: ModelSpec, text: str, current: v2.ModelConfig) -> dict[str, Any]:
    """The spec fields a load's `config` JSON sets (empty: nothing to change).

    Args:
        spec: the model's spec.
        text: the `config` parameter, a JSON ModelConfig (Triton's format).
        current: what ModelConfig reports now, for fields that must stay as they are.
    Returns:
        ModelSpec field names and values.
    Raises:
        WarmdError: `invalid_argument` naming what cannot be taken and what to do instead.
    """
    wanted = v2.ModelConfig()
    try:
        json_format.Parse(text, wanted)
    except json_format.ParseError as exc:
        first = str(exc).splitlines()[0]
        raise _refused(f"the config override is not a ModelConfig in JSON that warmd can take ({first}); "
                       "it may set max_batch_size, dynamic_batching.max_queue_delay_microseconds and "
                       "instance_group") from None
    for field, _ in wanted.ListFields():
        if field.name == "name" and wanted.name != spec.name:
            raise _refused(f"the config override names model {wanted.name!r}; it must be {spec.name!r}")
        if field.name not in _MAPPED and getattr(wanted, field.name) != getattr(current, field.name):
            raise _refused(f"config field {field.name!r} cannot be overridden; change it in the spec "
                           f"file {spec.file}")
    fields: dict[str, Any] = {}
    if wanted.HasField("dynamic_batching"):
        fields["max_delay_ms"] = wanted.dynamic_batching.max_queue_delay_microseconds / 1000
    if wanted.HasField("max_batch_size"):
        fields["max_batch"] = max(1, wanted.max_batch_size)
    if wanted.instance_group:
        fields["device"] = _device(wanted.instance_group)
    import jsonschema     # only for a load that brings a config: not on the start's path

    for key, value in fields.items():
        for err in jsonschema.Draft202012Validator(schema()["properties"][key]).iter_errors(value):
            raise _refused(f"the config override sets {key} to {value}: {err.message}")
    return fields


def _device(groups: Any) -> str:
    group = groups[0]
    if len(groups) > 1 or group.count > 1 or len(group.gpus) > 1:
        raise _refused("warmd runs one copy of a model on one device: give one instance_group with "
                       "count 1 and at most one GPU (max_in_flight in the spec sets how many requests run at once)")
    if group.kind == _KIND.KIND_CPU:
        return "cpu"
    if group.kind == _KIND.KIND_GPU:
        return f"cuda:{group.gpus[0]}" if group.gpus else "cuda"
    if group.kind == _KIND.KIND_AUTO and not group.gpus:
        return "auto"
    raise _refused(f"instance_group kind {_KIND.Name(group.kind)} with gpus {list(group.gpus)} has no "
                   "equivalent; use KIND_CPU, KIND_GPU (gpus: [N]) or KIND_AUTO")


def _refused(message: str) -> WarmdError:
    return WarmdError(Code.INVALID_ARGUMENT, message)
