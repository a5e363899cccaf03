from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GemmShape(_message.Message):
    __slots__ = ("m", "n", "k", "dtype", "trans_a", "trans_b", "batch")
    M_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TRANS_A_FIELD_NUMBER: _ClassVar[int]
    TRANS_B_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    n: int
    k: int
    dtype: str
    trans_a: bool
    trans_b: bool
    batch: int
    def __init__(self, m: _Optional[int] = ..., n: _Optional[int] = ..., k: _Optional[int] = ..., dtype: _Optional[str] = ..., trans_a: _Optional[bool] = ..., trans_b: _Optional[bool] = ..., batch: _Optional[int] = ...) -> None: ...

class PredictGemmRequest(_message.Message):
    __slots__ = ("device", "model_version", "shapes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    device: str
    model_version: int
    shapes: _containers.RepeatedCompositeFieldContainer[GemmShape]
    def __init__(self, device: _Optional[str] = ..., model_version: _Optional[int] = ..., shapes: _Optional[_Iterable[_Union[GemmShape, _Mapping]]] = ...) -> None: ...

class GemmColumns(_message.Message):
    __slots__ = ("m", "n", "k", "dtype", "batch", "trans_a", "trans_b")
    M_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    TRANS_A_FIELD_NUMBER: _ClassVar[int]
    TRANS_B_FIELD_NUMBER: _ClassVar[int]
    m: _containers.RepeatedScalarFieldContainer[int]
    n: _containers.RepeatedScalarFieldContainer[int]
    k: _containers.RepeatedScalarFieldContainer[int]
    dtype: _containers.RepeatedScalarFieldContainer[str]
    batch: _containers.RepeatedScalarFieldContainer[int]
    trans_a: _containers.RepeatedScalarFieldContainer[bool]
    trans_b: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, m: _Optional[_Iterable[int]] = ..., n: _Optional[_Iterable[int]] = ..., k: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Iterable[str]] = ..., batch: _Optional[_Iterable[int]] = ..., trans_a: _Optional[_Iterable[bool]] = ..., trans_b: _Optional[_Iterable[bool]] = ...) -> None: ...

class PredictGemmColumnsRequest(_message.Message):
    __slots__ = ("device", "model_version", "shapes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    device: str
    model_version: int
    shapes: GemmColumns
    def __init__(self, device: _Optional[str] = ..., model_version: _Optional[int] = ..., shapes: _Optional[_Union[GemmColumns, _Mapping]] = ...) -> None: ...

class PredictionColumns(_message.Message):
    __slots__ = ("latency_ms", "latency_std_ms", "power_available", "power_w", "power_std_w", "energy_j", "energy_std_j", "device", "model_version", "power_extrapolated", "latency_extrapolated")
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_STD_MS_FIELD_NUMBER: _ClassVar[int]
    POWER_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_STD_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_STD_J_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POWER_EXTRAPOLATED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_EXTRAPOLATED_FIELD_NUMBER: _ClassVar[int]
    latency_ms: _containers.RepeatedScalarFieldContainer[float]
    latency_std_ms: _containers.RepeatedScalarFieldContainer[float]
    power_available: bool
    power_w: _containers.RepeatedScalarFieldContainer[float]
    power_std_w: _containers.RepeatedScalarFieldContainer[float]
    energy_j: _containers.RepeatedScalarFieldContainer[float]
    energy_std_j: _containers.RepeatedScalarFieldContainer[float]
    device: str
    model_version: int
    power_extrapolated: _containers.RepeatedScalarFieldContainer[bool]
    latency_extrapolated: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, latency_ms: _Optional[_Iterable[float]] = ..., latency_std_ms: _Optional[_Iterable[float]] = ..., power_available: _Optional[bool] = ..., power_w: _Optional[_Iterable[float]] = ..., power_std_w: _Optional[_Iterable[float]] = ..., energy_j: _Optional[_Iterable[float]] = ..., energy_std_j: _Optional[_Iterable[float]] = ..., device: _Optional[str] = ..., model_version: _Optional[int] = ..., power_extrapolated: _Optional[_Iterable[bool]] = ..., latency_extrapolated: _Optional[_Iterable[bool]] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("kind", "params", "dtype", "batch", "name")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    params: _containers.ScalarMap[str, int]
    dtype: str
    batch: int
    name: str
    def __init__(self, kind: _Optional[str] = ..., params: _Optional[_Mapping[str, int]] = ..., dtype: _Optional[str] = ..., batch: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class PredictOpsRequest(_message.Message):
    __slots__ = ("device", "model_version", "ops")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    device: str
    model_version: int
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    def __init__(self, device: _Optional[str] = ..., model_version: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("latency_ms", "latency_std_ms", "power_available", "power_w", "power_std_w", "energy_j", "energy_std_j", "name", "gemm_count", "power_extrapolated", "latency_extrapolated")
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_STD_MS_FIELD_NUMBER: _ClassVar[int]
    POWER_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_STD_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_STD_J_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GEMM_COUNT_FIELD_NUMBER: _ClassVar[int]
    POWER_EXTRAPOLATED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_EXTRAPOLATED_FIELD_NUMBER: _ClassVar[int]
    latency_ms: float
    latency_std_ms: float
    power_available: bool
    power_w: float
    power_std_w: float
    energy_j: float
    energy_std_j: float
    name: str
    gemm_count: int
    power_extrapolated: bool
    latency_extrapolated: bool
    def __init__(self, latency_ms: _Optional[float] = ..., latency_std_ms: _Optional[float] = ..., power_available: _Optional[bool] = ..., power_w: _Optional[float] = ..., power_std_w: _Optional[float] = ..., energy_j: _Optional[float] = ..., energy_std_j: _Optional[float] = ..., name: _Optional[str] = ..., gemm_count: _Optional[int] = ..., power_extrapolated: _Optional[bool] = ..., latency_extrapolated: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions", "device", "model_version")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    device: str
    model_version: int
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., device: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class PredictNetworkRequest(_message.Message):
    __slots__ = ("device", "model_version", "batch", "dtype", "ops", "nasbench201")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    NASBENCH201_FIELD_NUMBER: _ClassVar[int]
    device: str
    model_version: int
    batch: int
    dtype: str
    ops: OpList
    nasbench201: str
    def __init__(self, device: _Optional[str] = ..., model_version: _Optional[int] = ..., batch: _Optional[int] = ..., dtype: _Optional[str] = ..., ops: _Optional[_Union[OpList, _Mapping]] = ..., nasbench201: _Optional[str] = ...) -> None: ...

class OpList(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    def __init__(self, ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ...) -> None: ...

class PredictNetworkResponse(_message.Message):
    __slots__ = ("total", "layers", "device", "model_version", "method")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    total: Prediction
    layers: _containers.RepeatedCompositeFieldContainer[Prediction]
    device: str
    model_version: int
    method: str
    def __init__(self, total: _Optional[_Union[Prediction, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., device: _Optional[str] = ..., model_version: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("model", "kind", "sm_count", "memory_bytes", "measurements", "has_model")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SM_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    HAS_MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    kind: str
    sm_count: int
    memory_bytes: int
    measurements: int
    has_model: bool
    def __init__(self, model: _Optional[str] = ..., kind: _Optional[str] = ..., sm_count: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., measurements: _Optional[int] = ..., has_model: _Optional[bool] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("device", "version", "target", "training_samples", "has_power", "created_utc", "sha256", "metrics_json", "latest", "data_from_utc", "data_to_utc", "libraries", "features", "dtypes", "retired", "default_for_dtypes")
    class LibrariesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HAS_POWER_FIELD_NUMBER: _ClassVar[int]
    CREATED_UTC_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FROM_UTC_FIELD_NUMBER: _ClassVar[int]
    DATA_TO_UTC_FIELD_NUMBER: _ClassVar[int]
    LIBRARIES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FOR_DTYPES_FIELD_NUMBER: _ClassVar[int]
    device: str
    version: int
    target: str
    training_samples: int
    has_power: bool
    created_utc: str
    sha256: str
    metrics_json: str
    latest: bool
    data_from_utc: str
    data_to_utc: str
    libraries: _containers.ScalarMap[str, str]
    features: _containers.RepeatedScalarFieldContainer[str]
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    retired: bool
    default_for_dtypes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device: _Optional[str] = ..., version: _Optional[int] = ..., target: _Optional[str] = ..., training_samples: _Optional[int] = ..., has_power: _Optional[bool] = ..., created_utc: _Optional[str] = ..., sha256: _Optional[str] = ..., metrics_json: _Optional[str] = ..., latest: _Optional[bool] = ..., data_from_utc: _Optional[str] = ..., data_to_utc: _Optional[str] = ..., libraries: _Optional[_Mapping[str, str]] = ..., features: _Optional[_Iterable[str]] = ..., dtypes: _Optional[_Iterable[str]] = ..., retired: _Optional[bool] = ..., default_for_dtypes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelMetadata]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelMetadata, _Mapping]]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("device", "version", "target", "dtype")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    device: str
    version: int
    target: str
    dtype: str
    def __init__(self, device: _Optional[str] = ..., version: _Optional[int] = ..., target: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...
