from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    AVAILABLE: _ClassVar[ModelState]
    LOADING: _ClassVar[ModelState]
    READY: _ClassVar[ModelState]
    UNLOADING: _ClassVar[ModelState]
    FAILED: _ClassVar[ModelState]
MODEL_STATE_UNSPECIFIED: ModelState
AVAILABLE: ModelState
LOADING: ModelState
READY: ModelState
UNLOADING: ModelState
FAILED: ModelState

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "raw", "region")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw: bytes
    region: RegionRef
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw: _Optional[bytes] = ..., region: _Optional[_Union[RegionRef, _Mapping]] = ...) -> None: ...

class RegionRef(_message.Message):
    __slots__ = ("region", "offset", "byte_size")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    byte_size: int
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Residency(_message.Message):
    __slots__ = ("device", "estimated_bytes", "measured_bytes", "loaded_at", "last_used", "expires_at", "in_flight", "pinned", "tier", "gpu_layers", "total_layers", "location")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    device: str
    estimated_bytes: int
    measured_bytes: int
    loaded_at: float
    last_used: float
    expires_at: float
    in_flight: int
    pinned: bool
    tier: str
    gpu_layers: int
    total_layers: int
    location: str
    def __init__(self, device: _Optional[str] = ..., estimated_bytes: _Optional[int] = ..., measured_bytes: _Optional[int] = ..., loaded_at: _Optional[float] = ..., last_used: _Optional[float] = ..., expires_at: _Optional[float] = ..., in_flight: _Optional[int] = ..., pinned: _Optional[bool] = ..., tier: _Optional[str] = ..., gpu_layers: _Optional[int] = ..., total_layers: _Optional[int] = ..., location: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "version", "description", "tags", "task", "provider", "source", "device", "precision", "pin", "keep_alive_s", "preload", "file", "signature", "state", "residency", "error_code", "error", "inputs", "outputs", "files", "downloads", "downloadable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    PRELOAD_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    task: str
    provider: str
    source: str
    device: str
    precision: str
    pin: bool
    keep_alive_s: float
    preload: bool
    file: str
    signature: str
    state: ModelState
    residency: Residency
    error_code: str
    error: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    files: Files
    downloads: _containers.RepeatedCompositeFieldContainer[DownloadRecord]
    downloadable: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., provider: _Optional[str] = ..., source: _Optional[str] = ..., device: _Optional[str] = ..., precision: _Optional[str] = ..., pin: _Optional[bool] = ..., keep_alive_s: _Optional[float] = ..., preload: _Optional[bool] = ..., file: _Optional[str] = ..., signature: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., residency: _Optional[_Union[Residency, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., files: _Optional[_Union[Files, _Mapping]] = ..., downloads: _Optional[_Iterable[_Union[DownloadRecord, _Mapping]]] = ..., downloadable: _Optional[bool] = ...) -> None: ...

class DownloadRecord(_message.Message):
    __slots__ = ("started", "finished", "source", "revision", "result", "error_code", "message", "bytes")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    started: float
    finished: float
    source: str
    revision: str
    result: str
    error_code: str
    message: str
    bytes: int
    def __init__(self, started: _Optional[float] = ..., finished: _Optional[float] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., result: _Optional[str] = ..., error_code: _Optional[str] = ..., message: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class Discovered(_message.Message):
    __slots__ = ("repo_id", "revisions", "size_on_disk", "path", "source")
    REPO_ID_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    SIZE_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    repo_id: str
    revisions: _containers.RepeatedScalarFieldContainer[str]
    size_on_disk: int
    path: str
    source: str
    def __init__(self, repo_id: _Optional[str] = ..., revisions: _Optional[_Iterable[str]] = ..., size_on_disk: _Optional[int] = ..., path: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class Files(_message.Message):
    __slots__ = ("state", "bytes_on_disk", "revision", "bytes_total")
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    state: str
    bytes_on_disk: int
    revision: str
    bytes_total: int
    def __init__(self, state: _Optional[str] = ..., bytes_on_disk: _Optional[int] = ..., revision: _Optional[str] = ..., bytes_total: _Optional[int] = ...) -> None: ...

class SpecError(_message.Message):
    __slots__ = ("file", "code", "field", "line", "message")
    FILE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    file: str
    code: str
    field: str
    line: int
    message: str
    def __init__(self, file: _Optional[str] = ..., code: _Optional[str] = ..., field: _Optional[str] = ..., line: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("task", "tag", "state", "include_discovered")
    TASK_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DISCOVERED_FIELD_NUMBER: _ClassVar[int]
    task: str
    tag: str
    state: ModelState
    include_discovered: bool
    def __init__(self, task: _Optional[str] = ..., tag: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., include_discovered: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "rejected", "discovered")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    rejected: _containers.RepeatedCompositeFieldContainer[SpecError]
    discovered: _containers.RepeatedCompositeFieldContainer[Discovered]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[SpecError, _Mapping]]] = ..., discovered: _Optional[_Iterable[_Union[Discovered, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "keep_alive_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    keep_alive_s: float
    def __init__(self, name: _Optional[str] = ..., keep_alive_s: _Optional[float] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("freed_bytes", "removed")
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    freed_bytes: int
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, freed_bytes: _Optional[int] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class AddModelRequest(_message.Message):
    __slots__ = ("source", "revision", "name")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    source: str
    revision: str
    name: str
    def __init__(self, source: _Optional[str] = ..., revision: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class AddModelResponse(_message.Message):
    __slots__ = ("file", "name", "provider", "task")
    FILE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    file: str
    name: str
    provider: str
    task: str
    def __init__(self, file: _Optional[str] = ..., name: _Optional[str] = ..., provider: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class PinModelRequest(_message.Message):
    __slots__ = ("name", "pinned")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    name: str
    pinned: bool
    def __init__(self, name: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("name", "total", "budget", "used", "free", "reserve", "simulated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    total: int
    budget: int
    used: int
    free: int
    reserve: int
    simulated: bool
    def __init__(self, name: _Optional[str] = ..., total: _Optional[int] = ..., budget: _Optional[int] = ..., used: _Optional[int] = ..., free: _Optional[int] = ..., reserve: _Optional[int] = ..., simulated: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "pid", "started_at", "socket", "tcp", "specs_dir", "config_file", "log_file", "torch_imported", "resident", "models", "rejected", "offline", "downloads", "hf_cache", "devices", "plugins_dir", "plugins", "jobs")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    SPECS_DIR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    LOG_FILE_FIELD_NUMBER: _ClassVar[int]
    TORCH_IMPORTED_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADS_FIELD_NUMBER: _ClassVar[int]
    HF_CACHE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_DIR_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    started_at: float
    socket: str
    tcp: str
    specs_dir: str
    config_file: str
    log_file: str
    torch_imported: bool
    resident: _containers.RepeatedCompositeFieldContainer[Model]
    models: int
    rejected: int
    offline: bool
    downloads: str
    hf_cache: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceStatus]
    plugins_dir: str
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ..., socket: _Optional[str] = ..., tcp: _Optional[str] = ..., specs_dir: _Optional[str] = ..., config_file: _Optional[str] = ..., log_file: _Optional[str] = ..., torch_imported: _Optional[bool] = ..., resident: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., models: _Optional[int] = ..., rejected: _Optional[int] = ..., offline: _Optional[bool] = ..., downloads: _Optional[str] = ..., hf_cache: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceStatus, _Mapping]]] = ..., plugins_dir: _Optional[str] = ..., plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("id", "kind", "model", "progress", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    model: str
    progress: Progress
    message: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("name", "provider", "folder", "error", "source", "commit", "state", "gate", "models", "isolated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    folder: str
    error: str
    source: str
    commit: str
    state: str
    gate: GateResult
    models: _containers.RepeatedScalarFieldContainer[str]
    isolated: bool
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., folder: _Optional[str] = ..., error: _Optional[str] = ..., source: _Optional[str] = ..., commit: _Optional[str] = ..., state: _Optional[str] = ..., gate: _Optional[_Union[GateResult, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., isolated: _Optional[bool] = ...) -> None: ...

class GateResult(_message.Message):
    __slots__ = ("result", "step", "message", "output", "commit", "at", "seconds")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    result: str
    step: str
    message: str
    output: str
    commit: str
    at: float
    seconds: float
    def __init__(self, result: _Optional[str] = ..., step: _Optional[str] = ..., message: _Optional[str] = ..., output: _Optional[str] = ..., commit: _Optional[str] = ..., at: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class InstallPluginRequest(_message.Message):
    __slots__ = ("source", "name", "draft", "accept")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    draft: bool
    accept: bool
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ..., draft: _Optional[bool] = ..., accept: _Optional[bool] = ...) -> None: ...

class UpdatePluginRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemovePluginRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemovePluginResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    def __init__(self, plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ...) -> None: ...

class ModelSignature(_message.Message):
    __slots__ = ("name", "version", "signature", "source", "revision", "precision", "device")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    signature: str
    source: str
    revision: str
    precision: str
    device: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., signature: _Optional[str] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., precision: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model", "inputs", "text", "parameters_json", "outputs", "keep_alive_s", "output_regions")
    class OutputRegionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RegionRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RegionRef, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_REGIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    text: _containers.RepeatedScalarFieldContainer[str]
    parameters_json: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    keep_alive_s: float
    output_regions: _containers.MessageMap[str, RegionRef]
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., text: _Optional[_Iterable[str]] = ..., parameters_json: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., keep_alive_s: _Optional[float] = ..., output_regions: _Optional[_Mapping[str, RegionRef]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("model", "outputs", "json", "signature")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    model: str
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    json: str
    signature: ModelSignature
    def __init__(self, model: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., json: _Optional[str] = ..., signature: _Optional[_Union[ModelSignature, _Mapping]] = ...) -> None: ...

class InferChunk(_message.Message):
    __slots__ = ("text", "progress", "result")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    text: str
    progress: Progress
    result: InferResponse
    def __init__(self, text: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[InferResponse, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("kinds", "model")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    model: str
    def __init__(self, kinds: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "done", "total", "unit")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    phase: str
    done: int
    total: int
    unit: str
    def __init__(self, phase: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "kind", "model", "file", "message", "job_id", "progress", "error_code", "reason", "eviction", "plugin", "diff")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVICTION_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    kind: str
    model: str
    file: str
    message: str
    job_id: str
    progress: Progress
    error_code: str
    reason: str
    eviction: Eviction
    plugin: str
    diff: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., file: _Optional[str] = ..., message: _Optional[str] = ..., job_id: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error_code: _Optional[str] = ..., reason: _Optional[str] = ..., eviction: _Optional[_Union[Eviction, _Mapping]] = ..., plugin: _Optional[str] = ..., diff: _Optional[str] = ...) -> None: ...

class Eviction(_message.Message):
    __slots__ = ("time", "model", "action", "reason", "device", "bytes", "for_model", "policy", "requests_per_min", "back_s", "back_measured", "cost", "idle_s", "message")
    TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FOR_MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    BACK_S_FIELD_NUMBER: _ClassVar[int]
    BACK_MEASURED_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    time: float
    model: str
    action: str
    reason: str
    device: str
    bytes: int
    for_model: str
    policy: str
    requests_per_min: float
    back_s: float
    back_measured: bool
    cost: float
    idle_s: float
    message: str
    def __init__(self, time: _Optional[float] = ..., model: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., device: _Optional[str] = ..., bytes: _Optional[int] = ..., for_model: _Optional[str] = ..., policy: _Optional[str] = ..., requests_per_min: _Optional[float] = ..., back_s: _Optional[float] = ..., back_measured: _Optional[bool] = ..., cost: _Optional[float] = ..., idle_s: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class PlanLoadRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LoadPlan(_message.Message):
    __slots__ = ("model", "action", "device", "bytes", "free_bytes", "evictions", "download", "policy", "message", "gpu_layers", "total_layers", "host_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HOST_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: str
    device: str
    bytes: int
    free_bytes: int
    evictions: _containers.RepeatedCompositeFieldContainer[Eviction]
    download: bool
    policy: str
    message: str
    gpu_layers: int
    total_layers: int
    host_bytes: int
    def __init__(self, model: _Optional[str] = ..., action: _Optional[str] = ..., device: _Optional[str] = ..., bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., evictions: _Optional[_Iterable[_Union[Eviction, _Mapping]]] = ..., download: _Optional[bool] = ..., policy: _Optional[str] = ..., message: _Optional[str] = ..., gpu_layers: _Optional[int] = ..., total_layers: _Optional[int] = ..., host_bytes: _Optional[int] = ...) -> None: ...

class ListEvictionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListEvictionsResponse(_message.Message):
    __slots__ = ("evictions",)
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    evictions: _containers.RepeatedCompositeFieldContainer[Eviction]
    def __init__(self, evictions: _Optional[_Iterable[_Union[Eviction, _Mapping]]] = ...) -> None: ...

class RegisterRegionRequest(_message.Message):
    __slots__ = ("name", "key", "offset", "byte_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    offset: int
    byte_size: int
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class RegisterRegionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterRegionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnregisterRegionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "scope")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scope: str
    def __init__(self, name: _Optional[str] = ..., scope: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "info")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: TokenInfo
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("name", "scope", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    scope: str
    created: float
    def __init__(self, name: _Optional[str] = ..., scope: _Optional[str] = ..., created: _Optional[float] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResolveRoleRequest(_message.Message):
    __slots__ = ("role", "profile")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    role: str
    profile: str
    def __init__(self, role: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class RoleChoice(_message.Message):
    __slots__ = ("role", "model", "passed_over", "candidates", "chosen")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PASSED_OVER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    role: str
    model: str
    passed_over: _containers.RepeatedCompositeFieldContainer[PassedOver]
    candidates: _containers.RepeatedScalarFieldContainer[str]
    chosen: str
    def __init__(self, role: _Optional[str] = ..., model: _Optional[str] = ..., passed_over: _Optional[_Iterable[_Union[PassedOver, _Mapping]]] = ..., candidates: _Optional[_Iterable[str]] = ..., chosen: _Optional[str] = ...) -> None: ...

class ChooseRoleModelRequest(_message.Message):
    __slots__ = ("role", "model")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    role: str
    model: str
    def __init__(self, role: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class PassedOver(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProfilesResponse(_message.Message):
    __slots__ = ("active", "profiles", "roles")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    active: str
    profiles: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedCompositeFieldContainer[RoleChoice]
    def __init__(self, active: _Optional[str] = ..., profiles: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[_Union[RoleChoice, _Mapping]]] = ...) -> None: ...

class UseProfileRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UseProfileResponse(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[RoleChoice]
    def __init__(self, roles: _Optional[_Iterable[_Union[RoleChoice, _Mapping]]] = ...) -> None: ...
