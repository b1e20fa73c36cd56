from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Key(_message.Message):
    __slots__ = ("seed", "data", "impl", "fold_in", "derive")
    SEED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMPL_FIELD_NUMBER: _ClassVar[int]
    FOLD_IN_FIELD_NUMBER: _ClassVar[int]
    DERIVE_FIELD_NUMBER: _ClassVar[int]
    seed: int
    data: KeyData
    impl: str
    fold_in: _containers.RepeatedScalarFieldContainer[int]
    derive: _containers.RepeatedCompositeFieldContainer[KeyStep]
    def __init__(self, seed: _Optional[int] = ..., data: _Optional[_Union[KeyData, _Mapping]] = ..., impl: _Optional[str] = ..., fold_in: _Optional[_Iterable[int]] = ..., derive: _Optional[_Iterable[_Union[KeyStep, _Mapping]]] = ...) -> None: ...

class KeyStep(_message.Message):
    __slots__ = ("fold_in", "split", "stack")
    FOLD_IN_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    fold_in: int
    split: Split
    stack: int
    def __init__(self, fold_in: _Optional[int] = ..., split: _Optional[_Union[Split, _Mapping]] = ..., stack: _Optional[int] = ...) -> None: ...

class Split(_message.Message):
    __slots__ = ("num", "index")
    NUM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    num: int
    index: int
    def __init__(self, num: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class KeyData(_message.Message):
    __slots__ = ("words",)
    WORDS_FIELD_NUMBER: _ClassVar[int]
    words: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, words: _Optional[_Iterable[int]] = ...) -> None: ...

class PrngSettings(_message.Message):
    __slots__ = ("threefry_partitionable", "enable_x64", "jit")
    THREEFRY_PARTITIONABLE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_X64_FIELD_NUMBER: _ClassVar[int]
    JIT_FIELD_NUMBER: _ClassVar[int]
    threefry_partitionable: bool
    enable_x64: bool
    jit: bool
    def __init__(self, threefry_partitionable: _Optional[bool] = ..., enable_x64: _Optional[bool] = ..., jit: _Optional[bool] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("float_value", "int_value", "string_value", "bool_value", "int_list", "list_value", "null_value")
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_LIST_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    float_value: float
    int_value: int
    string_value: str
    bool_value: bool
    int_list: IntList
    list_value: NestedList
    null_value: bool
    def __init__(self, float_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., int_list: _Optional[_Union[IntList, _Mapping]] = ..., list_value: _Optional[_Union[NestedList, _Mapping]] = ..., null_value: _Optional[bool] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class NestedList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, items: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "initializer", "args", "shape", "dtype", "key", "prng", "offset", "count", "shared_memory", "jax_version", "backend", "jit")
    class ArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRNG_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    JAX_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    JIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    initializer: str
    args: _containers.MessageMap[str, Value]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    key: Key
    prng: PrngSettings
    offset: int
    count: int
    shared_memory: str
    jax_version: str
    backend: str
    jit: bool
    def __init__(self, request_id: _Optional[str] = ..., initializer: _Optional[str] = ..., args: _Optional[_Mapping[str, Value]] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., prng: _Optional[_Union[PrngSettings, _Mapping]] = ..., offset: _Optional[int] = ..., count: _Optional[int] = ..., shared_memory: _Optional[str] = ..., jax_version: _Optional[str] = ..., backend: _Optional[str] = ..., jit: _Optional[bool] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("jaxinit_version", "jax_version", "jaxlib_version", "backend", "device_kind", "key_impl", "key_data", "threefry_partitionable", "enable_x64", "canonical_request", "request_digest")
    JAXINIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    JAX_VERSION_FIELD_NUMBER: _ClassVar[int]
    JAXLIB_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_IMPL_FIELD_NUMBER: _ClassVar[int]
    KEY_DATA_FIELD_NUMBER: _ClassVar[int]
    THREEFRY_PARTITIONABLE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_X64_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    jaxinit_version: str
    jax_version: str
    jaxlib_version: str
    backend: str
    device_kind: str
    key_impl: str
    key_data: _containers.RepeatedScalarFieldContainer[int]
    threefry_partitionable: bool
    enable_x64: bool
    canonical_request: str
    request_digest: str
    def __init__(self, jaxinit_version: _Optional[str] = ..., jax_version: _Optional[str] = ..., jaxlib_version: _Optional[str] = ..., backend: _Optional[str] = ..., device_kind: _Optional[str] = ..., key_impl: _Optional[str] = ..., key_data: _Optional[_Iterable[int]] = ..., threefry_partitionable: _Optional[bool] = ..., enable_x64: _Optional[bool] = ..., canonical_request: _Optional[str] = ..., request_digest: _Optional[str] = ...) -> None: ...

class TensorHeader(_message.Message):
    __slots__ = ("shape", "dtype", "byte_order", "total_bytes", "chunk_bytes", "provenance", "offset", "count", "digest_algorithm", "model_bytes", "cache", "region")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_ORDER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    byte_order: str
    total_bytes: int
    chunk_bytes: int
    provenance: Provenance
    offset: int
    count: int
    digest_algorithm: str
    model_bytes: int
    cache: str
    region: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., byte_order: _Optional[str] = ..., total_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., offset: _Optional[int] = ..., count: _Optional[int] = ..., digest_algorithm: _Optional[str] = ..., model_bytes: _Optional[int] = ..., cache: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorDigest(_message.Message):
    __slots__ = ("algorithm", "digest")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    digest: bytes
    def __init__(self, algorithm: _Optional[str] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "type", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    type: str
    message: str
    def __init__(self, code: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("request_id", "header", "data", "error", "digest")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    header: TensorHeader
    data: DataChunk
    error: Error
    digest: TensorDigest
    def __init__(self, request_id: _Optional[str] = ..., header: _Optional[_Union[TensorHeader, _Mapping]] = ..., data: _Optional[_Union[DataChunk, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., digest: _Optional[_Union[TensorDigest, _Mapping]] = ...) -> None: ...

class InitModelRequest(_message.Message):
    __slots__ = ("model_json", "key", "mode", "layout", "fix_rng_separator", "param_dtype", "prng", "shared_memory", "jax_version", "backend", "jit")
    MODEL_JSON_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    FIX_RNG_SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    PARAM_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PRNG_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    JAX_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    JIT_FIELD_NUMBER: _ClassVar[int]
    model_json: str
    key: Key
    mode: str
    layout: str
    fix_rng_separator: bool
    param_dtype: str
    prng: PrngSettings
    shared_memory: str
    jax_version: str
    backend: str
    jit: bool
    def __init__(self, model_json: _Optional[str] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., mode: _Optional[str] = ..., layout: _Optional[str] = ..., fix_rng_separator: _Optional[bool] = ..., param_dtype: _Optional[str] = ..., prng: _Optional[_Union[PrngSettings, _Mapping]] = ..., shared_memory: _Optional[str] = ..., jax_version: _Optional[str] = ..., backend: _Optional[str] = ..., jit: _Optional[bool] = ...) -> None: ...

class ListInitializersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ArgumentSpec(_message.Message):
    __slots__ = ("name", "type", "required", "default_json", "choices", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_JSON_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    required: bool
    default_json: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    doc: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., required: _Optional[bool] = ..., default_json: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., doc: _Optional[str] = ...) -> None: ...

class InitializerSpec(_message.Message):
    __slots__ = ("name", "kind", "arguments", "source", "summary", "uses_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    USES_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    arguments: _containers.RepeatedCompositeFieldContainer[ArgumentSpec]
    source: str
    summary: str
    uses_key: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., arguments: _Optional[_Iterable[_Union[ArgumentSpec, _Mapping]]] = ..., source: _Optional[str] = ..., summary: _Optional[str] = ..., uses_key: _Optional[bool] = ...) -> None: ...

class ListInitializersResponse(_message.Message):
    __slots__ = ("initializers", "dtypes", "key_impls", "server", "shared_memory_directory")
    INITIALIZERS_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    KEY_IMPLS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    initializers: _containers.RepeatedCompositeFieldContainer[InitializerSpec]
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    key_impls: _containers.RepeatedScalarFieldContainer[str]
    server: Provenance
    shared_memory_directory: str
    def __init__(self, initializers: _Optional[_Iterable[_Union[InitializerSpec, _Mapping]]] = ..., dtypes: _Optional[_Iterable[str]] = ..., key_impls: _Optional[_Iterable[str]] = ..., server: _Optional[_Union[Provenance, _Mapping]] = ..., shared_memory_directory: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    def __init__(self, scope: _Optional[str] = ...) -> None: ...

class ServedVersion(_message.Message):
    __slots__ = ("jax_version", "jaxlib_version", "backend", "device_kind", "jaxinit_version", "key_impls", "dtypes", "threefry_partitionable", "enable_x64", "default", "reachable")
    JAX_VERSION_FIELD_NUMBER: _ClassVar[int]
    JAXLIB_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    JAXINIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_IMPLS_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    THREEFRY_PARTITIONABLE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_X64_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    jax_version: str
    jaxlib_version: str
    backend: str
    device_kind: str
    jaxinit_version: str
    key_impls: _containers.RepeatedScalarFieldContainer[str]
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    threefry_partitionable: bool
    enable_x64: bool
    default: bool
    reachable: bool
    def __init__(self, jax_version: _Optional[str] = ..., jaxlib_version: _Optional[str] = ..., backend: _Optional[str] = ..., device_kind: _Optional[str] = ..., jaxinit_version: _Optional[str] = ..., key_impls: _Optional[_Iterable[str]] = ..., dtypes: _Optional[_Iterable[str]] = ..., threefry_partitionable: _Optional[bool] = ..., enable_x64: _Optional[bool] = ..., default: _Optional[bool] = ..., reachable: _Optional[bool] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ServedVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ServedVersion, _Mapping]]] = ...) -> None: ...
