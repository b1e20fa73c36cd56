"""The catalog of initializers: names, signatures, argument types and defaults.

JAX-free and shared: the server binds each entry to the JAX callable of the same
name, the client builds its methods from it, and both validate arguments with
:func:`bind_arguments`. A test checks every entry against the installed JAX's
and Flax's own signatures.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jaxinit.protocol.codec import dtype_name
from jaxinit.protocol.errors import InvalidArgument, UnknownInitializer, did_you_mean
from jaxinit.protocol.values import MAX_RANK as MAX_AXIS
from jaxinit.protocol.values import is_int, quote

__all__ = [
    "CATALOG",
    "ArgSpec",
    "InitializerSpec",
    "args_from_text",
    "bind_arguments",
    "lookup",
]

ArgType = Literal["float", "int", "axes", "choice", "dtype", "array"]
_REQUIRED: Any = object()  # sentinel for "no default"


@dataclass(frozen=True)
class ArgSpec:
    """One argument of an initializer factory."""

    name: str
    type: ArgType
    default: Any = _REQUIRED
    choices: tuple[str, ...] = ()
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    @property
    def default_json(self) -> str:
        """The default as JSON, or "" when the argument is required."""
        if self.required:
            return ""
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        return json.dumps(default)


@dataclass(frozen=True)
class InitializerSpec:
    """One registry entry.

    ``kind`` is "factory" when ``name(**args)`` returns ``init(key, shape, dtype)``,
    and "initializer" when ``name`` is such an ``init`` itself (zeros, ones).
    """

    name: str
    kind: Literal["factory", "initializer"]
    arguments: tuple[ArgSpec, ...] = ()
    source: str = "jax.nn.initializers"
    summary: str = ""
    uses_key: bool = True
    argument_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "argument_names", tuple(a.name for a in self.arguments))


_DTYPE = ArgSpec("dtype", "dtype", None, doc="the initializer's default dtype")
_FANS = (
    ArgSpec("in_axis", "axes", -2, doc="axis or sequence of axes of the input dimension"),
    ArgSpec("out_axis", "axes", -1, doc="axis or sequence of axes of the output dimension"),
    ArgSpec("batch_axis", "axes", (), doc="axis or sequence of axes ignored by fan computations"),
)
_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
_ORTHO = (
    ArgSpec("scale", "float", 1.0, doc="multiplier of the orthogonal matrix"),
    ArgSpec("column_axis", "int", -1, doc="the axis that holds the columns"),
    _DTYPE,
)


def _fan_family(name: str, summary: str) -> InitializerSpec:
    return InitializerSpec(name, "factory", (*_FANS, _DTYPE), summary=summary)


CATALOG: dict[str, InitializerSpec] = {
    spec.name: spec
    for spec in (
        InitializerSpec(
            "constant",
            "factory",
            (ArgSpec("value", "array", doc="the fill value: a number or a nested list broadcast to shape"), _DTYPE),
            summary="arrays full of a constant value",
            uses_key=False,
        ),
        InitializerSpec("delta_orthogonal", "factory", _ORTHO, summary="delta-orthogonal kernels for convolutions"),
        _fan_family("glorot_normal", "variance_scaling(1.0, 'fan_avg', 'truncated_normal')"),
        _fan_family("glorot_uniform", "variance_scaling(1.0, 'fan_avg', 'uniform')"),
        _fan_family("he_normal", "variance_scaling(2.0, 'fan_in', 'truncated_normal')"),
        _fan_family("he_uniform", "variance_scaling(2.0, 'fan_in', 'uniform')"),
        _fan_family("kaiming_normal", "alias of he_normal"),
        _fan_family("kaiming_uniform", "alias of he_uniform"),
        _fan_family("lecun_normal", "variance_scaling(1.0, 'fan_in', 'truncated_normal')"),
        _fan_family("lecun_uniform", "variance_scaling(1.0, 'fan_in', 'uniform')"),
        InitializerSpec(
            "normal",
            "factory",
            (ArgSpec("stddev", "float", 0.01, doc="standard deviation"), _DTYPE),
            summary="normal samples times stddev",
        ),
        InitializerSpec(
            "truncated_normal",
            "factory",
            (
                ArgSpec("stddev", "float", 0.01, doc="standard deviation before truncation"),
                _DTYPE,
                ArgSpec("lower", "float", -2.0, doc="lower bound, in standard deviations"),
                ArgSpec("upper", "float", 2.0, doc="upper bound, in standard deviations"),
            ),
            summary="truncated normal samples times stddev",
        ),
        InitializerSpec("ones", "initializer", summary="arrays of ones", uses_key=False),
        InitializerSpec("ones_init", "factory", source="flax.nnx.initializers", summary="returns ones", uses_key=False),
        InitializerSpec("orthogonal", "factory", _ORTHO, summary="uniformly random orthogonal matrices"),
        InitializerSpec(
            "uniform",
            "factory",
            (ArgSpec("scale", "float", 0.01, doc="upper bound of [0, scale)"), _DTYPE),
            summary="uniform samples in [0, scale)",
        ),
        InitializerSpec(
            "variance_scaling",
            "factory",
            (
                ArgSpec("scale", "float", doc="scaling factor (positive)"),
                ArgSpec("mode", "choice", choices=_MODES, doc="which fan the variance is divided by"),
                ArgSpec("distribution", "choice", choices=_DISTRIBUTIONS, doc="distribution to sample"),
                *_FANS,
                _DTYPE,
            ),
            summary="samples scaled to the shape's fan-in/fan-out",
        ),
        _fan_family("xavier_normal", "alias of glorot_normal"),
        _fan_family("xavier_uniform", "alias of glorot_uniform"),
        InitializerSpec("zeros", "initializer", summary="arrays of zeros", uses_key=False),
        InitializerSpec(
            "zeros_init", "factory", source="flax.nnx.initializers", summary="returns zeros", uses_key=False
        ),
    )
}


def lookup(name: Any) -> InitializerSpec:
    """The catalog entry for ``name``.

    Raises:
        UnknownInitializer: when no initializer has that name.
    """
    spec = CATALOG.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownInitializer(unknown_message(name))
    return spec


def unknown_message(name: Any) -> str:
    """What is said of a name no initializer has: the close ones, then every one."""
    return f"unknown initializer {quote(name)};{did_you_mean(name, CATALOG)} available: {', '.join(sorted(CATALOG))}"


def bind_arguments(spec: InitializerSpec, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate factory arguments and return them complete, defaults filled in, normalized.

    Normalized means plain Python values: float or int for numbers (ints stay
    ints, as JAX would see them), an int or a list of ints for axes, a dtype
    name or None for dtype, nested lists for array values.

    >>> bind_arguments(lookup("normal"), {"stddev": 0.02})
    {'stddev': 0.02, 'dtype': None}

    Raises:
        InvalidArgument: for unknown or missing arguments and wrong types.
    """
    args = dict(args or {})
    if spec.kind == "initializer" and args:
        raise InvalidArgument(f"{spec.name} is an initializer itself and takes no arguments; got {quote(sorted(args))}")
    unknown = sorted(set(args) - set(spec.argument_names))
    if unknown:
        takes = ", ".join(spec.argument_names) or "no arguments"
        raise InvalidArgument(f"{spec.name}() got unexpected argument(s) {quote(unknown)}; it takes {takes}")
    bound: dict[str, Any] = {}
    for arg in spec.arguments:
        if arg.name in args:
            bound[arg.name] = _check(spec.name, arg, args[arg.name])
        elif arg.required:
            raise InvalidArgument(f"{spec.name}() is missing required argument {arg.name!r}")
        else:
            default = arg.default
            bound[arg.name] = list(default) if isinstance(default, tuple) else default
    return bound


def _number(where: str, arg: ArgSpec, value: Any) -> Any:
    if is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise InvalidArgument(f"{where} must be a number, got {quote(value)}")


def _int(where: str, arg: ArgSpec, value: Any) -> Any:
    if is_int(value):
        return _axis(where, int(value))
    raise InvalidArgument(f"{where} must be an int, got {quote(value)}")


def _axes(where: str, arg: ArgSpec, value: Any) -> Any:
    if is_int(value):
        return _axis(where, int(value))
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and all(map(is_int, value)):
        return [_axis(where, int(v)) for v in value]
    raise InvalidArgument(f"{where} must be an int or a sequence of ints, got {quote(value)}")


def _choice(where: str, arg: ArgSpec, value: Any) -> Any:
    if isinstance(value, str) and value in arg.choices:
        return value
    raise InvalidArgument(f"{where} must be one of {list(arg.choices)}, got {quote(value)}")


def _dtype(where: str, arg: ArgSpec, value: Any) -> Any:
    return None if value is None else dtype_name(value)


def _array(where: str, arg: ArgSpec, value: Any) -> Any:
    return _array_value(where, value)


# Argument type -> its check, which returns the value normalized.
_CHECKS: dict[str, Callable[[str, ArgSpec, Any], Any]] = {
    "float": _number,
    "int": _int,
    "axes": _axes,
    "choice": _choice,
    "dtype": _dtype,
    "array": _array,
}


def _check(initializer: str, arg: ArgSpec, value: Any) -> Any:
    return _CHECKS[arg.type](f"{initializer}() argument {arg.name!r}", arg, value)


def _axis(where: str, axis: int) -> int:
    if not -MAX_AXIS <= axis < MAX_AXIS:
        raise InvalidArgument(f"{where}: axis {axis} is out of range for any array")
    return axis


def _array_value(where: str, value: Any, depth: int = 0) -> Any:
    if depth > MAX_AXIS:  # deeper than any array: refused before numpy (or recursion) sees it
        raise InvalidArgument(f"{where} is nested more than {MAX_AXIS} deep; no array has that many dimensions")
    if isinstance(value, bool):
        return value
    if is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return _array_value(where, value.tolist(), depth)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return _array_items(where, [_array_value(where, v, depth + 1) for v in value])
    if isinstance(value, numbers.Complex):
        raise InvalidArgument(f"{where}: complex values are not supported yet")
    raise InvalidArgument(f"{where} must be a number or a nested list of numbers, got {quote(value)}")


def _array_items(where: str, items: list[Any]) -> list[Any]:
    """A nested list's items, checked rectangular: all lists of one length, or no list."""
    if items and isinstance(items[0], list):
        if any(not isinstance(i, list) or len(i) != len(items[0]) for i in items):
            raise InvalidArgument(f"{where} must be a rectangular nested list")
    elif any(isinstance(i, list) for i in items):
        raise InvalidArgument(f"{where} must be a rectangular nested list")
    return items


def args_from_text(text_args: Mapping[str, str]) -> dict[str, Any]:
    """Arguments given as text (query parameters): JSON literals, else plain strings.

    >>> args_from_text({"scale": "2", "mode": "fan_in", "batch_axis": "[0]"})
    {'scale': 2, 'mode': 'fan_in', 'batch_axis': [0]}
    """
    # Types are checked later, by bind_arguments, as for any other request.
    out: dict[str, Any] = {}
    for name, text in text_args.items():
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text
    return out
