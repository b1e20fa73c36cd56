"""KServe v2 (Open Inference Protocol) requests as jaxinit requests, for both transports.

Each initializer is a model (``lecun_normal``, ``variance_scaling``, ...). A request
carries:

- inputs ``shape`` (INT64 or INT32, 1-D: the tensor's shape; ``[0]``-shaped for a
  scalar), and the key: ``seed`` (INT64, one element: ``jax.random.key(seed)``) or
  ``key_data`` (UINT32: raw key data); optionally ``fold_in`` (UINT32, in order);
- request parameters: ``dtype`` (a jaxinit name such as ``bfloat16`` or a v2
  datatype such as ``BF16``), ``key_impl``, ``key_derive`` (further steps after
  ``fold_in``: ``fold_in:X,split:NUM:INDEX,stack:NUM``), ``threefry_partitionable``, ``enable_x64``, ``jit``,
  ``offset``/``count`` (a range in flat elements), ``jax_version``/``backend`` (pins:
  answered only by that JAX and backend, else 412 / FAILED_PRECONDITION; the
  ``x-jaxinit-jax-version`` header pins too), and every initializer argument
  by name: numbers as int64/double parameters, booleans as bool, anything else as a
  string holding a JSON literal or a plain string (``"[0, 1]"``, ``"fan_in"``);
- one output, ``output``: the tensor, little-endian, in the datatype named below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol.catalog import CATALOG, args_from_text
from jaxinit.protocol.codec import DTYPES, array_from_buffer
from jaxinit.protocol.errors import InvalidArgument, UnknownInitializer, did_you_mean
from jaxinit.protocol.keys import DEFAULT_IMPL, Key, derive_from_text
from jaxinit.protocol.values import QUOTE_CHARS, is_int, quote
from jaxinit_server.core import GenerateParams
from jaxinit_server.core.request import OPTION_PARAMETERS, pinned

__all__ = [
    "DATATYPES",
    "EXTENSIONS",
    "UNSUPPORTED",
    "MAX_JSON_DEPTH",
    "MAX_QUOTE_CHARS",
    "OUTPUT",
    "VERSION",
    "Input",
    "check_model",
    "known",
    "datatype_of",
    "json_depth",
    "model_config",
    "model_metadata",
    "model_statistics",
    "params_from_v2",
    "quote",
]

OUTPUT = "output"
# jaxinit dtype -> v2 datatype. The protocol has no names for complex or float8 types.
DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
}
_FROM_DATATYPE = {v: k for k, v in DATATYPES.items()}
_RESERVED = {*OPTION_PARAMETERS, "binary_data_output", "binary_data", "binary_data_size"}
# The deepest JSON a request may hold (a document, or an argument given as a JSON literal):
# jaxinit's own documents are a few levels deep; Python's parser recurses once a level.
MAX_JSON_DEPTH = 64
# The most characters of a caller's value an error message quotes (then its size).
MAX_QUOTE_CHARS = QUOTE_CHARS
# +1 for a byte that opens an array or object, -1 for one that closes it.
_BRACKETS = np.zeros(256, np.int8)
_BRACKETS[list(b"[{")] = 1
_BRACKETS[list(b"]}")] = -1
_DEPTH_BLOCK = 2**20


def json_depth(document: bytes | str) -> int:
    """How deeply the JSON ``document`` nests arrays and objects, found without parsing it
    (so that a document too deep to parse is refused first); exact for valid JSON.

    Vectorised, a block at a time: quick, and bounded scratch memory, for any size.
    """
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else bytes(document)
    # Escaped backslashes, then escaped quotes: what is left of a string is its brackets and "s.
    codes = np.frombuffer(data.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    depth = deepest = quotes = 0
    for start in range(0, codes.size, _DEPTH_BLOCK):
        block = codes[start : start + _DEPTH_BLOCK]
        inside = np.cumsum(block == ord('"'), dtype=np.int64)
        inside += quotes  # odd: within a string
        quotes = int(inside[-1])
        levels = _BRACKETS[block].astype(np.int64)
        levels[(inside & 1).astype(bool)] = 0
        np.cumsum(levels, out=levels)
        levels += depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


@dataclass(frozen=True)
class Input:
    """One v2 input as a transport read it: values as a flat numpy array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray


def input_from_bytes(name: str, datatype: str, shape: Sequence[int], data: bytes | memoryview) -> Input:
    """An input whose values came as raw little-endian bytes (gRPC raw contents, HTTP binary data)."""
    dtype = _datatype(name, datatype)
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"input {quote(name)}: {len(data)} bytes for {datatype}{quote(list(shape))}, expected {expected}"
        )
    return Input(name, datatype, tuple(shape), array_from_buffer(data, (math.prod(shape),), dtype))


def input_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Input:
    """An input whose values came as a list (JSON ``data``, gRPC typed contents)."""
    _datatype(name, datatype)
    try:
        flat = np.asarray(values, dtype=object).reshape(-1)
    except (ValueError, TypeError):  # ragged nesting numpy cannot lay out
        raise InvalidArgument(f"input {quote(name)}: data must be a list of integers, flat or nested") from None
    if flat.size != math.prod(shape):
        raise InvalidArgument(f"input {quote(name)}: {flat.size} values for shape {quote(list(shape))}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
        raise InvalidArgument(f"input {quote(name)} must hold integers")
    return Input(name, datatype, tuple(shape), np.asarray([int(v) for v in flat], dtype=object))


def _datatype(name: str, datatype: str) -> str:
    dtype = _FROM_DATATYPE.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidArgument(f"input {quote(name)}: unknown datatype {quote(datatype)}")
    return dtype


def datatype_of(dtype: str) -> str:
    """The v2 datatype of a jaxinit dtype. Raises InvalidArgument when the protocol has none."""
    datatype = DATATYPES.get(dtype)
    if datatype is None:
        raise InvalidArgument(f"the KServe v2 protocol has no datatype for {dtype}; use jaxinit's own API for it")
    return datatype


def _ints(item: Input, kinds: tuple[str, ...]) -> list[int]:
    if item.datatype not in kinds:
        raise InvalidArgument(f"input {quote(item.name)} must be {' or '.join(kinds)}, got {item.datatype}")
    if len(item.shape) != 1:
        raise InvalidArgument(f"input {quote(item.name)} must be 1-D, got shape {quote(list(item.shape))}")
    return [int(v) for v in item.values]


def params_from_v2(
    model: str, inputs: Sequence[Input], parameters: Mapping[str, Any], version: str = "", pin: str | None = None
) -> GenerateParams:
    """The jaxinit request a v2 inference request means (see the module docstring); ``pin``:
    the request's ``x-jaxinit-jax-version`` header or metadata.

    Raises:
        UnknownInitializer: no such model or version. InvalidArgument: inputs or parameters that do not fit.
    """
    check_model(model, version)
    by_name: dict[str, Input] = {}
    for item in inputs:
        if item.name in by_name:
            raise InvalidArgument(f"input {quote(item.name)} given twice")
        by_name[item.name] = item
    unknown = sorted(set(by_name) - {"shape", "seed", "key_data", "fold_in"})
    if unknown:
        raise InvalidArgument(f"unknown input(s) {quote(unknown)}; inputs are shape, seed or key_data, fold_in")
    if "shape" not in by_name:
        raise InvalidArgument("input 'shape' is required: the tensor's shape, INT64, 1-D")
    shape = _ints(by_name["shape"], ("INT64", "INT32"))
    key = _key(by_name, parameters)
    dtype = parameters.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise InvalidArgument(f"parameter dtype must be a string, got {quote(dtype)}")
    if isinstance(dtype, str) and dtype in _FROM_DATATYPE:
        dtype = _FROM_DATATYPE[dtype]
    for name in ("offset", "count"):
        value = parameters.get(name)
        if value is not None and not is_int(value):
            raise InvalidArgument(f"parameter {name} must be an integer (flat elements), got {quote(value)}")
    return GenerateParams(
        initializer=model,
        shape=shape,
        args=_args(parameters),
        dtype=dtype,
        key=key,
        threefry_partitionable=_flag(parameters, "threefry_partitionable"),
        enable_x64=_flag(parameters, "enable_x64"),
        jit=bool(_flag(parameters, "jit")),
        offset=parameters.get("offset"),
        count=parameters.get("count"),
        jax_version=pinned(parameters.get("jax_version"), pin),
        backend=parameters.get("backend"),
    )


def _key(by_name: Mapping[str, Input], parameters: Mapping[str, Any]) -> Key | None:
    """The key the inputs seed or key_data (and fold_in) and the key parameters make."""
    impl = parameters.get("key_impl") or DEFAULT_IMPL
    if not isinstance(impl, str):
        raise InvalidArgument(f"parameter key_impl must be a string, got {quote(impl)}")
    folds = tuple(_ints(by_name["fold_in"], ("UINT32",))) if "fold_in" in by_name else ()
    derive_text = parameters.get("key_derive") or ""
    if not isinstance(derive_text, str):
        raise InvalidArgument(
            f"parameter key_derive must be a string (fold_in:X,split:NUM:INDEX,stack:NUM), got {quote(derive_text)}"
        )
    derive = derive_from_text(derive_text)
    if "seed" in by_name and "key_data" in by_name:
        raise InvalidArgument("give one of the inputs seed or key_data, not both")
    if "seed" in by_name:
        seed = _ints(by_name["seed"], ("INT64", "INT32"))
        if len(seed) != 1:
            raise InvalidArgument(f"input 'seed' must hold one value, got {len(seed)}")
        return Key(seed=seed[0], impl=impl, fold_in=folds, derive=derive)
    if "key_data" in by_name:
        return Key(data=tuple(_ints(by_name["key_data"], ("UINT32",))), impl=impl, fold_in=folds, derive=derive)
    return None


def _args(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The initializer's arguments: the other parameters (strings read as JSON literals)."""
    text_args = {k: v for k, v in parameters.items() if k not in _RESERVED and isinstance(v, str)}
    for k, v in text_args.items():  # read as JSON literals: bound their nesting before parsing
        if json_depth(v) > MAX_JSON_DEPTH:
            raise InvalidArgument(f"parameter {quote(k)} nests deeper than {MAX_JSON_DEPTH} levels")
    args = {k: v for k, v in parameters.items() if k not in _RESERVED and not isinstance(v, str)}
    args.update(args_from_text(text_args))
    return args


def _flag(parameters: Mapping[str, Any], name: str) -> bool | None:
    value = parameters.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidArgument(f"parameter {name} must be a bool, got {quote(value)}")


# Every model (initializer) has one version: what this server's JAX makes.
VERSION = "1"


def check_model(model: str, version: str = "") -> None:
    """Raise UnknownInitializer unless ``model`` is an initializer and ``version`` (empty:
    the default) is its version."""
    if model not in CATALOG:
        hint = did_you_mean(model, CATALOG)
        raise UnknownInitializer(f"unknown model {quote(model)}:{hint} every jaxinit initializer is a model")
    if not known(model, version):
        raise UnknownInitializer(f"model {quote(model)} has no version {quote(version)}; its one version is {VERSION}")


def known(model: str, version: str = "") -> bool:
    """``model`` is an initializer and ``version`` (empty: the default) its version."""
    return model in CATALOG and version in ("", VERSION)


def model_metadata(model: str, jax_version: str, version: str = "") -> dict[str, Any]:
    """A model's v2 metadata: its inputs and its one output (shape -1: any)."""
    check_model(model, version)
    return {
        "name": model,
        "versions": [VERSION],
        "platform": f"jax-{jax_version}",
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [-1]},
            {"name": "seed", "datatype": "INT64", "shape": [1]},
            {"name": "key_data", "datatype": "UINT32", "shape": [-1]},
            {"name": "fold_in", "datatype": "UINT32", "shape": [-1]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}],
    }


# The protocol extensions this server implements, as /v2 and ServerMetadata list them.
EXTENSIONS = ("binary_tensor_data", "parameters", "model_configuration", "statistics")
# Triton's extensions this server does not implement: each answered with one sentence
# (REST: 501 and the protocol's error body; gRPC: UNIMPLEMENTED), never a bare 404.
UNSUPPORTED = {
    "system_shared_memory": "jaxinit does not support Triton's system shared memory extension; same-host "
    "callers get their tensors in shared memory through jaxinit's own API (docs/api.md, Same-host shared memory)",
    "cuda_shared_memory": "jaxinit does not support Triton's CUDA shared memory extension; it makes tensors on the "
    "CPU and sends their bytes",
    "model_control": "jaxinit does not support loading or unloading models: every initializer is always loaded "
    "(POST /v2/repository/index lists them)",
    "trace": "jaxinit does not support Triton's trace extension; each response carries its request id "
    "(x-request-id) and the server logs one line per request",
    "logging": "jaxinit does not support changing log settings at run time; set --log-level and --log-format "
    "when the server starts",
    "sequence": "jaxinit does not support streaming inference (ModelStreamInfer); call ModelInfer, or stream "
    "large tensors with jaxinit's own Generate RPC",
}


def model_config(model: str, jax_version: str, version: str = "") -> dict[str, Any]:
    """A model's configuration in Triton's form (``model_config.proto`` as JSON): what
    Triton's tools (perf_analyzer, model_analyzer) read before anything else. No batching
    (``max_batch_size`` 0): each request is one tensor."""
    check_model(model, version)
    return {
        "name": model,
        "platform": f"jax-{jax_version}",
        "backend": "jaxinit",
        "version_policy": {"specific": {"versions": [int(VERSION)]}},
        "max_batch_size": 0,
        "input": [
            {"name": "shape", "data_type": "TYPE_INT64", "format": "FORMAT_NONE", "dims": [-1], "optional": False},
            {"name": "seed", "data_type": "TYPE_INT64", "format": "FORMAT_NONE", "dims": [1], "optional": True},
            {"name": "key_data", "data_type": "TYPE_UINT32", "format": "FORMAT_NONE", "dims": [-1], "optional": True},
            {"name": "fold_in", "data_type": "TYPE_UINT32", "format": "FORMAT_NONE", "dims": [-1], "optional": True},
        ],
        # The datatype of the default dtype; the `dtype` parameter picks another.
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [-1]}],
        # Its arguments, given as request parameters (comma-separated names).
        "parameters": {"arguments": {"string_value": ",".join(CATALOG[model].argument_names)}},
    }


def model_statistics(counters: Mapping[str, Mapping[str, int]], model: str = "", version: str = "") -> dict[str, Any]:
    """Triton's statistics answer (``ModelStatisticsResponse`` as JSON) for ``model`` (empty:
    every model), from the server's own per-initializer counters (``Telemetry.model_counters``)."""
    if model:
        check_model(model, version)
    elif version:
        raise InvalidArgument("a model version needs a model name")
    stats = []
    for name in [model] if model else sorted(CATALOG):
        c = counters.get(name, {})

        def duration(key: str, c: Mapping[str, int] = c) -> dict[str, int]:
            return {"count": c.get(f"{key}_count", 0), "ns": c.get(f"{key}_ns", 0)}

        stats.append(
            {
                "name": name,
                "version": VERSION,
                "last_inference": c.get("last_inference", 0),
                "inference_count": c.get("success_count", 0),
                "execution_count": c.get("success_count", 0),
                "inference_stats": {
                    key: duration(key)
                    for key in (
                        "success",
                        "fail",
                        "queue",
                        "compute_input",
                        "compute_infer",
                        "compute_output",
                        "cache_hit",
                        "cache_miss",
                    )
                },
                "batch_stats": [],
                "memory_usage": [],
            }
        )
    return {"model_stats": stats}
