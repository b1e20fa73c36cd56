"""KServe v2 (Open Inference Protocol) requests as jaxinit requests, for both transports.

Each initializer is a model (``lecun_normal``, ``variance_scaling``, ...). A request
carries:

- inputs ``shape`` (INT64 or INT32, 1-D: the tensor's shape; ``[0]``-shaped for a
  scalar), and the key: ``seed`` (INT64, one element: ``jax.random.key(seed)``) or
  ``key_data`` (UINT32: raw key data); optionally ``fold_in`` (UINT32, in order);
- request parameters: ``dtype`` (a jaxinit name such as ``bfloat16`` or a v2
  datatype such as ``BF16``), ``key_impl``, ``threefry_partitionable``, ``enable_x64``,
  ``offset``/``count`` (a range in flat elements), and every initializer argument
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

from jaxinit._catalog import CATALOG, args_from_text
from jaxinit._codec import DTYPES, array_from_buffer
from jaxinit._errors import InvalidArgument, UnknownInitializer
from jaxinit._keys import Key
from jaxinit_server.core import GenerateParams

__all__ = ["DATATYPES", "OUTPUT", "Input", "datatype_of", "model_metadata", "params_from_v2"]

OUTPUT = "output"
# jaxinit dtype -> v2 datatype. The protocol has no names for complex or float8 types.
DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}
_FROM_DATATYPE = {v: k for k, v in DATATYPES.items()}
_RESERVED = {"dtype", "key_impl", "threefry_partitionable", "enable_x64", "offset", "count",
             "binary_data_output", "binary_data", "binary_data_size"}


@dataclass(frozen=True)
class Input:
    """One v2 input as a transport read it: values as a flat numpy array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray


def input_from_bytes(name: str, datatype: str, shape: Sequence[int], data: bytes | memoryview) -> Input:
    """An input whose values came as raw little-endian bytes (gRPC raw contents, HTTP binary data)."""
    dtype = _FROM_DATATYPE.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if len(data) != expected:
        raise InvalidArgument(f"input {name!r}: {len(data)} bytes for {datatype}{list(shape)}, expected {expected}")
    return Input(name, datatype, tuple(shape), array_from_buffer(data, (math.prod(shape),), dtype))


def input_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Input:
    """An input whose values came as a list (JSON ``data``, gRPC typed contents)."""
    dtype = _FROM_DATATYPE.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}")
    flat = np.asarray(values, dtype=object).reshape(-1)
    if flat.size != math.prod(shape):
        raise InvalidArgument(f"input {name!r}: {flat.size} values for shape {list(shape)}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
        raise InvalidArgument(f"input {name!r} must hold integers")
    return Input(name, datatype, tuple(shape), np.asarray([int(v) for v in flat], dtype=object))


def datatype_of(dtype: str) -> str:
    """The v2 datatype of a jaxinit dtype. Raises InvalidArgument when the protocol has none."""
    datatype = DATATYPES.get(dtype)
    if datatype is None:
        raise InvalidArgument(
            f"the KServe v2 protocol has no datatype for {dtype}; use jaxinit's own API for it"
        )
    return datatype


def _ints(item: Input, kinds: tuple[str, ...]) -> list[int]:
    if item.datatype not in kinds:
        raise InvalidArgument(f"input {item.name!r} must be {' or '.join(kinds)}, got {item.datatype}")
    if len(item.shape) != 1:
        raise InvalidArgument(f"input {item.name!r} must be 1-D, got shape {list(item.shape)}")
    return [int(v) for v in item.values]


def params_from_v2(model: str, inputs: Sequence[Input], parameters: Mapping[str, Any]) -> GenerateParams:
    """The jaxinit request a v2 inference request means (see the module docstring).

    Raises:
        UnknownInitializer: no such model. InvalidArgument: inputs or parameters that do not fit.
    """
    if model not in CATALOG:
        raise UnknownInitializer(f"unknown model {model!r}: every jaxinit initializer is a model")
    by_name: dict[str, Input] = {}
    for item in inputs:
        if item.name in by_name:
            raise InvalidArgument(f"input {item.name!r} given twice")
        by_name[item.name] = item
    unknown = sorted(set(by_name) - {"shape", "seed", "key_data", "fold_in"})
    if unknown:
        raise InvalidArgument(f"unknown input(s) {unknown}; inputs are shape, seed or key_data, fold_in")
    if "shape" not in by_name:
        raise InvalidArgument("input 'shape' is required: the tensor's shape, INT64, 1-D")
    shape = _ints(by_name["shape"], ("INT64", "INT32"))
    impl = parameters.get("key_impl") or "threefry2x32"
    if not isinstance(impl, str):
        raise InvalidArgument(f"parameter key_impl must be a string, got {impl!r}")
    folds = tuple(_ints(by_name["fold_in"], ("UINT32",))) if "fold_in" in by_name else ()
    key = None
    if "seed" in by_name and "key_data" in by_name:
        raise InvalidArgument("give one of the inputs seed or key_data, not both")
    if "seed" in by_name:
        seed = _ints(by_name["seed"], ("INT64", "INT32"))
        if len(seed) != 1:
            raise InvalidArgument(f"input 'seed' must hold one value, got {len(seed)}")
        key = Key(seed=seed[0], impl=impl, fold_in=folds)
    elif "key_data" in by_name:
        key = Key(data=tuple(_ints(by_name["key_data"], ("UINT32",))), impl=impl, fold_in=folds)
    dtype = parameters.get("dtype")
    if isinstance(dtype, str) and dtype in _FROM_DATATYPE:
        dtype = _FROM_DATATYPE[dtype]
    text_args = {k: v for k, v in parameters.items() if k not in _RESERVED and isinstance(v, str)}
    args = {k: v for k, v in parameters.items() if k not in _RESERVED and not isinstance(v, str)}
    args.update(args_from_text(text_args))
    return GenerateParams(
        initializer=model,
        shape=shape,
        args=args,
        dtype=dtype,
        key=key,
        threefry_partitionable=_flag(parameters, "threefry_partitionable"),
        enable_x64=_flag(parameters, "enable_x64"),
        offset=parameters.get("offset"),
        count=parameters.get("count"),
    )


def _flag(parameters: Mapping[str, Any], name: str) -> bool | None:
    value = parameters.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidArgument(f"parameter {name} must be a bool, got {value!r}")


def model_metadata(model: str, jax_version: str) -> dict[str, Any]:
    """A model's v2 metadata: its inputs and its one output (shape -1: any)."""
    if model not in CATALOG:
        raise UnknownInitializer(f"unknown model {model!r}: every jaxinit initializer is a model")
    return {
        "name": model,
        "versions": ["1"],
        "platform": f"jax-{jax_version}",
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [-1]},
            {"name": "seed", "datatype": "INT64", "shape": [1]},
            {"name": "key_data", "datatype": "UINT32", "shape": [-1]},
            {"name": "fold_in", "datatype": "UINT32", "shape": [-1]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}],
    }
