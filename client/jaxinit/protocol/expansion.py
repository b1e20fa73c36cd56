"""Whole-model init: a model description expanded into its parameters, as Flax makes them.

JAX-free and shared: the client expands a description into one request per
parameter, and the server's model endpoints use the very same expansion, so
both transports and the REST download agree byte for byte.

A description is plain data (JSON/YAML-able dicts), or built with the helpers
at the bottom (``Dense(784, 256)``, ``Module(...)``). Each parameter's key is
derived from the root key as Flax derives it:

- ``linen``: ``fold_in(root, H(*module_path, n))``, where ``H`` is the first 4
  bytes (big-endian) of a SHA-1 over the path's names (UTF-8) and ``n``, the
  1-based count of parameters created in that module so far (as
  ``flax.core.scope._fold_in_static`` with lazy RNGs, Flax's default);
  ``fix_rng_separator`` mirrors ``flax_fix_rng_separator``.
- ``nnx``: ``fold_in(root, i)``, ``i`` counting every draw from the stream the
  parameters use, from 0 in constructor order: ``root`` is that stream's key. The
  root module's ``rng_streams`` names the streams of the model's ``nnx.Rngs``
  (``["params"]`` when left out; ``["default"]`` for ``nnx.Rngs(0)``,
  ``["params", "dropout"]`` for ``nnx.Rngs(params=0, dropout=1)``). Parameters draw
  from ``params``, else ``default``; a ``Dropout`` given rngs and an attention with
  ``dropout_rate > 0`` draw one count from ``dropout``, else ``default``, so with
  one shared stream they shift every later parameter's key, as in Flax. A draw
  from a stream the Rngs lacks, with no ``default`` to fall back on, is refused
  (Flax raises there too).

Every parameter consumes one count, zero-initialised biases included, exactly
as in Flax.

A ``Scan`` stacks ``length`` copies of its module on a leading axis of every
parameter; each parameter is then one request with a stacked key (see
:func:`jaxinit.stacked`):

- ``linen`` (``nn.scan(Block, variable_axes={'params': 0}, split_rngs={'params':
  True}, length=L)``): layer ``i``'s key is ``fold_in(split(root, L)[i], H(*path,
  n))``, ``path`` the full path (the scan's name included), and ``n`` the count
  in its module offset by the module's own number of parameters (Flax traces the
  scanned body twice at init, so the counts of the first trace are spent). The
  body is compiled, so each parameter has ``jit`` values (``jax.jit(init)``'s).
  ``"transform": "vmap"`` is linen's ``nn.vmap`` with the same arguments: the same keys
  with the plain counts, eager values.
- ``nnx`` (a block built by ``nnx.split_rngs(splits=L)`` over ``nnx.vmap`` of its
  constructor): the parameters' stream gives one count ``n`` to the split, and
  layer ``i``'s parameters count from 0 on the key ``split(fold_in(root, n), L)[i]``;
  eager, as vmap is.

Nested scans are refused (their key derivation is not verified).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxinit.protocol.catalog import bind_arguments, lookup
from jaxinit.protocol.codec import SIXTY_FOUR_BIT, dtype_name
from jaxinit.protocol.errors import InvalidArgument, ProtocolError, did_you_mean
from jaxinit.protocol.keys import Key, Step, derive_from_json, step_json

__all__ = [
    "LAYOUTS",
    "MAX_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_PARAMS",
    "MAX_PATH_COMPONENTS",
    "MODES",
    "MODULE_TYPES",
    "Param",
    "Output",
    "expand",
    "file_metadata",
    "linen_fold_in",
    "model_canonical",
    "model_prng",
    "nest",
    "outputs",
    "plan_jit",
]

MODES = ("linen", "nnx")
LAYOUTS = ("flax", "torch")
MAX_PARAMS = 100_000  # parameters per model description
MAX_DEPTH = 32  # nesting of modules (far below Python's recursion limit: parsing recurses per level)
MAX_PATH_COMPONENTS = 64  # names in a parameter's path: its modules', then its own (raw form: dotted parts)
MAX_NAME_CHARS = 256  # characters in one name of a path (a module's or a parameter's)
QUOTE_CHARS = 80  # how much of a caller's value an error message quotes
_RELAYED_CHARS = 600  # how much of a message from elsewhere (catalog, dtypes) is passed on

Init = tuple[str, dict[str, Any]]  # (initializer name, factory arguments)

LECUN_NORMAL: Init = ("lecun_normal", {})
ZEROS: Init = ("zeros", {})
HE_UNIFORM: Init = ("he_uniform", {})
NO_TORCH = "none"  # a parameter with no PyTorch layout (outputs() refuses the torch layout)
ONES: Init = ("ones", {})
EMBED: Init = ("variance_scaling", {"scale": 1.0, "mode": "fan_in", "distribution": "normal", "out_axis": 0})


@dataclass(frozen=True)
class Param:
    """One parameter of a model: what to generate, with which derived key, and where it goes.

    ``init_shape`` is the shape the initializer is called with; ``shape`` the
    parameter's (they differ for DenseGeneral, which Flax initialises as a 2-D
    matrix and reshapes: the bytes are the same).
    """

    path: tuple[str, ...]  # module names, then the parameter's own name
    initializer: str
    args: dict[str, Any]
    shape: tuple[int, ...]
    init_shape: tuple[int, ...]
    dtype: str
    fold_in: int | None  # the key is fold_in(root key, fold_in); None: no key (a torch buffer)
    module: str  # the module type that owns it ("Dense", "Conv", "Param", ...)
    role: str  # "kernel", "bias", "scale", "embedding", or the raw parameter's name
    torch: tuple[str, str] = ("", "")  # (leaf name, conversion) in the PyTorch layout
    # Key steps from the root before fold_in (a stacked layer's: ("stack", L), ...), so
    # the key is root.then(*key_prefix, ("fold_in", fold_in)); shape then starts with L.
    key_prefix: tuple[Step, ...] = ()
    jit: bool = False  # made as jax.jit(init) makes it (inside nn.scan: compiled)
    stack_at: int = 0  # a stacked parameter: how many names of its path precede the layer index

    @property
    def name(self) -> str:
        """Dotted name, as in a state dict: ``"Dense_0.kernel"``."""
        return ".".join(self.path)


# --- description parsing --------------------------------------------------------------------


class _Reader:
    """Typed access to one description node, with messages that say where the problem is."""

    def __init__(self, node: Any, where: str) -> None:
        if not isinstance(node, Mapping):
            raise InvalidArgument(f"{where}: a module must be an object with a 'type', got {_quote(node)}")
        self.node = node
        self.where = where
        self.used: set[str] = {"type", "name"}

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.node.get(key, default)

    def integer(self, key: str, default: Any = None, *, minimum: int = 1) -> int:
        value = self._get(key, default)
        if value is None:
            raise InvalidArgument(f"{self.where}: '{key}' is required (an int >= {minimum})")
        if not _is_int(value) or value < minimum:
            raise InvalidArgument(f"{self.where}: '{key}' must be an int >= {minimum}, got {_quote(value)}")
        return int(value)

    def integers(self, key: str, default: Any = None) -> tuple[int, ...]:
        """An int or a non-empty list of ints (>= 1), as a tuple."""
        value = self._get(key, default)
        if value is None:
            raise InvalidArgument(f"{self.where}: '{key}' is required (an int or a list of ints)")
        items = [value] if _is_int(value) else value
        if (
            isinstance(items, (str, bytes, Mapping))
            or not isinstance(items, Sequence)
            or not items
            or not all(_is_int(v) and v >= 1 for v in items)
        ):
            raise InvalidArgument(
                f"{self.where}: '{key}' must be a positive int or a non-empty list of them, got {_quote(value)}"
            )
        return tuple(int(v) for v in items)

    def fraction(self, key: str, default: float) -> float:
        """A number in [0, 1] (a dropout rate)."""
        value = self._get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise InvalidArgument(f"{self.where}: '{key}' must be a number in [0, 1], got {_quote(value)}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise InvalidArgument(f"{self.where}: '{key}' must be true or false, got {_quote(value)}")
        return value

    def dtype(self, inherited: str) -> str:
        value = self._get("param_dtype", None)
        if value is None:
            return inherited
        try:
            return dtype_name(value)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{self.where}: param_dtype: {_relay(exc.message, value)}") from None

    def init(self, key: str, default: Init) -> Init:
        value = self._get(key, None)
        if value is None:
            return default[0], dict(default[1])
        return _init(value, f"{self.where}: '{key}'")

    def modules(self, key: str) -> list[Any]:
        value = self._get(key, None)
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise InvalidArgument(f"{self.where}: '{key}' must be a list of modules, got {_quote(value)}")
        return list(value)

    def done(self) -> None:
        unknown = _names(set(self.node) - self.used)
        if unknown:
            # What the parser read is every field this module type has.
            hint = did_you_mean(unknown[0], self.used) if len(unknown) == 1 else ""
            raise InvalidArgument(
                f"{self.where}: unknown field(s) {_quote(unknown)} for {self.node.get('type')};{hint} "
                f"its fields: {', '.join(sorted(self.used))}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --- quoting a caller's values in messages ----------------------------------------------------


def _quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters of it.

    A longer one is cut and ends in ``...`` and the value's size. The work is bounded
    whatever the value's size or nesting: only as much of it is rendered as is shown.

    >>> _quote("abc"), _quote("x" * 100, 8)
    ("'abc'", "'xxxxxxx... (100 characters)")
    """
    text = ""
    for part in _repr_parts(value, limit + 1):
        text += part
        if len(text) > limit:
            break
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...{_size(value)}"


def _repr_parts(value: Any, budget: int) -> Iterator[str]:
    """``repr(value)`` in pieces, lazily, so that a consumer that stops early pays only for what it
    read; strings are cut to ``budget`` characters first. Every container yields its opening
    bracket first, so a consumer that stops after ``budget`` characters is at most that deep."""
    kind = type(value)
    if kind is str or kind is bytes:
        yield repr(value[:budget])
    elif kind is dict:
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _repr_parts(k, budget)
            yield ": "
            yield from _repr_parts(v, budget)
        yield "}"
    elif kind is list or kind is tuple:
        yield "[" if kind is list else "("
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _repr_parts(item, budget)
        yield "]" if kind is list else ("," if len(value) == 1 else "") + ")"
    else:
        try:
            yield repr(value)
        except Exception:  # an int past Python's digit limit, a repr that raises
            yield f"<{kind.__name__}>"


def _size(value: Any) -> str:
    """`` (N characters)`` and the like, for a cut quote; empty where the value has no length."""
    if isinstance(value, str):
        return f" ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)):
        return f" ({len(value)} bytes)"
    if isinstance(value, Sized):
        try:
            n = len(value)
        except Exception:
            return ""
        return f" ({n} item{'' if n == 1 else 's'})"
    return ""


def _relay(message: str, *values: Any) -> str:
    """A message from elsewhere (the catalog, the dtype table), which may quote a caller's value
    whole: each long ``repr`` of ``values`` in it quoted short, and the whole kept bounded.

    The message may hold only the start of a ``repr`` (where it was cut to a length): that
    part is what is replaced.
    """
    if len(message) <= QUOTE_CHARS:  # too short to hold a long repr
        return message
    for value in values:
        try:
            text = repr(value)
        except Exception:  # too deep to repr: the clip below bounds what was said of it
            continue
        if len(text) <= QUOTE_CHARS:
            continue
        start = message.find(text[:QUOTE_CHARS])
        if start < 0:
            continue
        # The longest start of ``text`` the message holds there (binary search, compared in C).
        low, high = QUOTE_CHARS, min(len(text), len(message) - start)
        while low < high:
            mid = (low + high + 1) // 2
            if message[start : start + mid] == text[:mid]:
                low = mid
            else:
                high = mid - 1
        message = f"{message[:start]}{_quote(value)}{message[start + low :]}"
    if len(message) > _RELAYED_CHARS:
        message = f"{message[:_RELAYED_CHARS]}... ({len(message)} characters)"
    return message


def _at(where: str) -> str:
    """A place in the description, its middle left out when it is long (deep nesting)."""
    return where if len(where) <= 120 else f"{where[:50]}...{where[-60:]}"


def _names(keys: Any) -> list[Any]:
    """Field names, sorted (as text where they are not all strings)."""
    return sorted(keys, key=str)


def _init(value: Any, where: str) -> Init:
    """An initializer override: a registry name, or {"initializer": name, "args": {...}}."""
    args: Any
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, Mapping) and set(value) <= {"initializer", "args"} and "initializer" in value:
        name, args = value["initializer"], value.get("args") or {}
        if not isinstance(args, Mapping):
            raise InvalidArgument(f"{where}: 'args' must be an object, got {_quote(args)}")
    else:
        raise InvalidArgument(
            f'{where}: an initializer is a registry name or {{"initializer": name, "args": {{...}}}}, '
            f"got {_quote(value)}"
        )
    try:
        spec = lookup(name)
        bound = bind_arguments(spec, args)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {_relay(exc.message, name, *args, *args.values())}") from None
    except Exception as exc:  # UnknownInitializer: keep its class, say where
        raise type(exc)(f"{where}: {_relay(str(exc), name, *args, *args.values())}") from None
    return spec.name, {k: bound[k] for k in args}


@dataclass
class _Leaf:
    """A parameter as a module type declares it, before keys and paths are decided."""

    role: str
    init: Init
    shape: tuple[int, ...]
    dtype: str
    init_shape: tuple[int, ...] | None = None
    torch: tuple[str, str] = ("", "")
    # The raw form's explicit key (an exporter's plan): steps from the root, the last a fold_in
    key: tuple[Step, ...] | None = None
    jit: bool = False
    stack_at: int = 0
    module: str = ""


def _dense(r: _Reader, dtype: str) -> list[_Leaf]:
    inp, out = r.integer("in_features"), r.integer("features")
    leaves = [_Leaf("kernel", r.init("kernel_init", LECUN_NORMAL), (inp, out), dtype, torch=("weight", "t"))]
    if r.flag("use_bias", True):
        leaves.append(_Leaf("bias", r.init("bias_init", ZEROS), (out,), dtype, torch=("bias", "")))
    return leaves


def _dense_general(r: _Reader, dtype: str) -> list[_Leaf]:
    # flax: the kernel is initialised as (prod(in), prod(out)) and reshaped; the bias flat.
    inp, out = r.integers("in_features"), r.integers("features")
    kernel = _Leaf(
        "kernel",
        r.init("kernel_init", LECUN_NORMAL),
        inp + out,
        dtype,
        init_shape=(math.prod(inp), math.prod(out)),
        torch=("weight", "flat_t"),
    )
    leaves = [kernel]
    if r.flag("use_bias", True):
        leaves.append(
            _Leaf("bias", r.init("bias_init", ZEROS), out, dtype, init_shape=(math.prod(out),), torch=("bias", "flat"))
        )
    return leaves


def _conv(r: _Reader, dtype: str) -> list[_Leaf]:
    inp, out = r.integer("in_features"), r.integer("features")
    size = r.integers("kernel_size")
    groups = r.integer("feature_group_count", 1)
    if inp % groups or out % groups:
        raise InvalidArgument(
            f"{r.where}: in_features {_quote(inp)} and features {_quote(out)} must both be multiples of "
            f"feature_group_count {_quote(groups)}"
        )
    kernel = _Leaf(
        "kernel", r.init("kernel_init", LECUN_NORMAL), (*size, inp // groups, out), dtype, torch=("weight", "conv")
    )
    leaves = [kernel]
    if r.flag("use_bias", True):
        leaves.append(_Leaf("bias", r.init("bias_init", ZEROS), (out,), dtype, torch=("bias", "")))
    return leaves


def _conv_transpose(r: _Reader, dtype: str) -> list[_Leaf]:
    """``nn.ConvTranspose`` / ``nnx.ConvTranspose``: kernel (*kernel_size, in, features), or
    (*kernel_size, features, in) with ``transpose_kernel``. No PyTorch layout: torch's
    ConvTranspose computes with the kernel flipped, which jaxinit has not verified."""
    inp, out = r.integer("in_features"), r.integer("features")
    size = r.integers("kernel_size")
    shape = (*size, out, inp) if r.flag("transpose_kernel", False) else (*size, inp, out)
    leaves = [_Leaf("kernel", r.init("kernel_init", LECUN_NORMAL), shape, dtype, torch=("", NO_TORCH))]
    if r.flag("use_bias", True):
        leaves.append(_Leaf("bias", r.init("bias_init", ZEROS), (out,), dtype, torch=("", NO_TORCH)))
    return leaves


def _einsum_bias_shape(einsum_str: str, kernel: tuple[int, ...], where: str) -> tuple[int, ...]:
    """linen's ``nn.Einsum`` bias: the kernel's axes that remain in the result, in the
    result's order (as ``Einsum._get_bias_shape`` reads the equation)."""
    text = einsum_str.replace(" ", "")
    operands, arrow, result = text.partition("->")
    parts = operands.split(",")
    if not arrow or len(parts) != 2 or "." in parts[1] or len(parts[1]) != len(kernel):
        raise InvalidArgument(
            f"{where}: 'einsum_str' must read 'lhs,rhs->result' (explicit, as Flax requires) with one letter per "
            f"kernel axis on the right ({len(kernel)} for kernel_shape {list(kernel)}), got {_quote(einsum_str)}"
        )
    rhs = parts[1]
    if len(set(rhs)) != len(rhs):
        raise InvalidArgument(f"{where}: the kernel's letters in 'einsum_str' must differ, got {_quote(einsum_str)}")
    return tuple(kernel[rhs.index(c)] for c in result if c in rhs)


def _einsum(r: _Reader, dtype: str, mode: str) -> list[_Leaf]:
    """``nn.Einsum(shape, einsum_str, use_bias=True)`` (bias shape read from the equation)
    or ``nnx.Einsum(einsum_str, kernel_shape, bias_shape=None)`` (a bias only when given)."""
    kernel = r.integers("kernel_shape")
    einsum_str = r._get("einsum_str", None)
    if einsum_str is not None and not isinstance(einsum_str, str):
        raise InvalidArgument(f"{r.where}: 'einsum_str' must be a string, got {_quote(einsum_str)}")
    bias: tuple[int, ...] | None = None
    if mode == "linen":
        if r.node.get("bias_shape") is not None:
            raise InvalidArgument(f"{r.where}: linen's Einsum has no 'bias_shape' (it reads it from 'einsum_str')")
        if einsum_str is None:
            raise InvalidArgument(f"{r.where}: linen's Einsum needs 'einsum_str'")
        shape = _einsum_bias_shape(einsum_str, kernel, r.where)  # checked whether or not there is a bias
        bias = shape if r.flag("use_bias", True) else None
    else:
        if r.node.get("use_bias") is not None:
            raise InvalidArgument(f"{r.where}: nnx's Einsum has no 'use_bias'; it has a bias when given 'bias_shape'")
        if einsum_str is not None:
            _einsum_bias_shape(einsum_str, kernel, r.where)
        bias = r.integers("bias_shape") if r.node.get("bias_shape") is not None else None
    r.used.update(("bias_shape", "use_bias"))
    leaves = [_Leaf("kernel", r.init("kernel_init", LECUN_NORMAL), kernel, dtype, torch=("kernel", ""))]
    if bias is not None:
        leaves.append(_Leaf("bias", r.init("bias_init", ZEROS), bias, dtype, torch=("bias", "")))
    return leaves


def _lora(r: _Reader, dtype: str) -> list[_Leaf]:
    """``nnx.LoRA(in_features, lora_rank, out_features)``: lora_a (in, rank) he_uniform,
    lora_b (rank, out) zeros, kept under their own names in the PyTorch layout."""
    inp, rank, out = r.integer("in_features"), r.integer("lora_rank"), r.integer("out_features")
    return [
        _Leaf("lora_a", r.init("a_initializer", HE_UNIFORM), (inp, rank), dtype, torch=("lora_a", "")),
        _Leaf("lora_b", r.init("b_initializer", ZEROS), (rank, out), dtype, torch=("lora_b", "")),
    ]


def _embed(r: _Reader, dtype: str) -> list[_Leaf]:
    num, features = r.integer("num_embeddings"), r.integer("features")
    return [_Leaf("embedding", r.init("embedding_init", EMBED), (num, features), dtype, torch=("weight", ""))]


def _norm(*, bias: bool, groups: bool = False) -> Callable[[_Reader, str], list[_Leaf]]:
    def leaves(r: _Reader, dtype: str) -> list[_Leaf]:
        features = r.integer("features")
        if groups:
            num_groups = r.integer("num_groups", 32)
            if features % num_groups:
                raise InvalidArgument(
                    f"{r.where}: features {_quote(features)} must be a multiple of num_groups {_quote(num_groups)}"
                )
        out = []
        if r.flag("use_scale", True):
            out.append(_Leaf("scale", r.init("scale_init", ONES), (features,), dtype, torch=("weight", "")))
        if bias and r.flag("use_bias", True):
            out.append(_Leaf("bias", r.init("bias_init", ZEROS), (features,), dtype, torch=("bias", "")))
        return out

    return leaves


def _param(r: _Reader, dtype: str) -> list[_Leaf]:
    name = r.node.get("name")
    shape = r._get("shape", None)
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise InvalidArgument(f"{r.where}: 'shape' must be a list of non-negative ints, got {_quote(shape)}")
    value = r._get("initializer", None)
    if value is None:
        raise InvalidArgument(f"{r.where}: 'initializer' is required (a registry name)")
    args = r._get("args", None)
    init = _init(value if args is None else {"initializer": value, "args": args}, r.where)
    # A Param's name is checked (a non-empty string) where it is placed, among a Module's children.
    name = name if isinstance(name, str) else ""
    return [_Leaf(name, init, tuple(int(d) for d in shape), dtype, torch=(name, ""))]


# Module type -> its parameters, in the order Flax creates them.
_LEAF_MODULES: dict[str, Callable[[_Reader, str], list[_Leaf]]] = {
    "Dense": _dense,
    "DenseGeneral": _dense_general,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "LoRA": _lora,
    "Embed": _embed,
    "LayerNorm": _norm(bias=True),
    "RMSNorm": _norm(bias=False),
    "BatchNorm": _norm(bias=True),
    "GroupNorm": _norm(bias=True, groups=True),
    "Param": _param,
}
MODULE_TYPES: tuple[str, ...] = (
    *_LEAF_MODULES,
    "MultiHeadAttention",
    "Module",
    "Sequential",
    "Function",
    "Dropout",
    "Einsum",
    "LoRALinear",
    "Scan",
)
MAX_SCAN_LENGTH = 4096  # layers one Scan stacks (a stacked key's slices)
DEFAULT_STREAMS = ("params",)
_ATTENTION_CLASSES = ("MultiHeadAttention", "MultiHeadDotProductAttention", "SelfAttention")


@dataclass(frozen=True)
class _Draw:
    """nnx: one count a module takes from a stream at construction, creating no parameter
    (``rngs.dropout.fork()``)."""

    stream: str
    where: str
    kind: str


@dataclass
class _Node:
    """A parsed module: its leaves (own parameters), the draws it takes from rng
    streams, and named children, in creation order."""

    type: str
    items: list[tuple[str, _Leaf | _Node | _Draw]] = field(default_factory=list)
    cls: str = ""  # the Flax class name linen auto-names an unnamed instance after (default: type)
    length: int = 0  # a Scan: how many layers it stacks
    transform: str = ""  # a Scan: linen's "scan" or "vmap", nnx's "vmap"


def _parse(node: Any, where: str, dtype: str, depth: int, mode: str, *, parent: str = "") -> _Node:
    if depth > MAX_DEPTH:  # before anything else, so that recursion stops here
        raise InvalidArgument(f"{_at(where)}: modules nest deeper than {MAX_DEPTH} levels")
    r = _Reader(node, where)
    kind = node.get("type")
    if kind is None:
        fields = _names(node)[:20]
        raise InvalidArgument(
            f"{where}: a module needs a 'type' (one of {', '.join(MODULE_TYPES)}), or a description in the raw "
            f"form a 'params' list; got the field(s) {_quote(fields)}"
        )
    if kind not in MODULE_TYPES:
        hint = did_you_mean(kind, MODULE_TYPES)
        raise InvalidArgument(f"{where}: unknown module type {_quote(kind)};{hint} known: {', '.join(MODULE_TYPES)}")
    if kind == "Param" and parent != "Module":
        raise InvalidArgument(f"{where}: a Param belongs among the children of a Module")
    if kind in ("LoRA", "LoRALinear") and mode == "linen":
        raise InvalidArgument(f"{where}: {kind} is an nnx module (linen has none); describe it with mode 'nnx'")
    if kind == "Function" and parent != "Sequential":
        raise InvalidArgument(f"{where}: a Function (a parameter-free layer) belongs in a Sequential's layers")
    dtype = r.dtype(dtype)
    out = _Node(kind)
    if kind == "Function":
        r.used.add("fn")  # what it computes (relu, gelu, ...): documentation only
    elif kind == "Dropout":
        # linen's nn.Dropout takes its rng when applied, never at init; nnx's takes a count
        # from its stream at construction when given rngs (rngs=True here).
        r.fraction("rate", 0.5)  # what it drops when applied: checked, no part in init
        stream = r._get("rng_collection", "dropout")
        if not isinstance(stream, str) or not stream:
            raise InvalidArgument(f"{where}: 'rng_collection' must be a stream name, got {_quote(stream)}")
        if r.flag("rngs", False) and mode == "nnx":
            out.items = [("", _Draw(stream, where, "Dropout"))]
    elif kind == "Einsum":
        out.items = [(leaf.role, leaf) for leaf in _einsum(r, dtype, mode)]
    elif kind == "LoRALinear":
        # nnx.LoRALinear: a Linear (kernel, bias) with a LoRA child named `lora`, whose
        # parameters take lora_param_dtype (Flax's default float32), not the Linear's dtype
        out.items = [(leaf.role, leaf) for leaf in _dense(r, dtype)]
        lora = {k: r.node[k] for k in ("a_initializer", "b_initializer") if k in r.node}
        r.used.update(lora)
        rank = r.integer("lora_rank")
        child = {"type": "LoRA", "in_features": r.integer("in_features"), "lora_rank": rank, **lora}
        child["out_features"] = r.integer("features")
        child["param_dtype"] = r._get("lora_param_dtype", None) or "float32"
        out.items.append(("lora", _parse(child, f"{where}.lora", dtype, depth + 1, mode, parent="LoRALinear")))
    elif kind in _LEAF_MODULES:
        out.items = [(leaf.role, leaf) for leaf in _LEAF_MODULES[kind](r, dtype)]
    elif kind == "Scan":
        # Its module's parameters and children, each stacked: the scan's scope is the
        # module's (linen names an unnamed one Scan<Class>_i).
        out.length = r.integer("length")
        out.transform = r._get("transform", "scan" if mode == "linen" else "vmap")
        allowed = ("scan", "vmap") if mode == "linen" else ("vmap",)
        if out.transform not in allowed:
            raise InvalidArgument(
                f"{where}: a Scan's 'transform' is one of {', '.join(allowed)} in {mode} (linen: nn.scan or nn.vmap; "
                f"nnx: split_rngs + nnx.vmap), got {_quote(out.transform)}"
            )
        if out.length > MAX_SCAN_LENGTH:
            raise InvalidArgument(f"{where}: a Scan stacks at most {MAX_SCAN_LENGTH} layers, got {out.length}")
        inner_desc = r._get("module", None)
        r.used.add("module")
        if not isinstance(inner_desc, Mapping):
            raise InvalidArgument(f"{where}: a Scan needs the 'module' it stacks (a module description)")
        inner = _parse(inner_desc, f"{where}.module", dtype, depth + 1, mode, parent="Scan")
        if _has_scan(inner):
            raise InvalidArgument(f"{where}: a Scan inside a Scan is not supported (its keys are not verified)")
        if inner.type in ("Param", "Function"):
            raise InvalidArgument(f"{where}: a Scan stacks a module with parameters, not a {inner.type}")
        out.items = list(inner.items)  # a scanned Dense's kernel and bias are the scan's own
        inner_cls = inner_desc.get("class", inner.type) if inner.type == "Module" else inner.cls or inner.type
        out.cls = f"Scan{inner_cls}"
    elif kind == "MultiHeadAttention":
        # linen names an unnamed one after its class: nn.MultiHeadAttention,
        # nn.MultiHeadDotProductAttention and nn.SelfAttention make the same parameters.
        out.cls = r._get("class", "MultiHeadAttention")
        if out.cls not in _ATTENTION_CLASSES:
            raise InvalidArgument(
                f"{where}: 'class' is one of {', '.join(_ATTENTION_CLASSES)} (the linen class, for its "
                f"automatic name), got {_quote(out.cls)}"
            )
        out.items = _attention(r, dtype, depth)
        rate = r.fraction("dropout_rate", 0.0)
        keep_rngs = r.flag("keep_rngs", True)  # nnx's: whether it stores a fork of the dropout stream
        if mode == "nnx" and rate > 0 and keep_rngs:
            # rngs.dropout.fork(), after its parameters
            out.items.append(("", _Draw("dropout", where, "MultiHeadAttention")))
    elif kind == "Sequential":
        # linen's nn.Sequential names its layers layers_0, layers_1, ...; nnx.Sequential
        # keeps them in a list attribute `layers`, so its paths read layers.0, layers.1.
        # Parameter-free layers (Function: relu, ...) take a position all the same.
        for i, child in enumerate(r.modules("layers")):
            sub = f"{where}.layers[{i}]"
            if isinstance(child, Mapping) and "name" in child:
                raise InvalidArgument(f"{sub}: layers of a Sequential are named by position; drop 'name'")
            name = f"layers_{i}" if mode == "linen" else f"layers.{i}"
            out.items.append((name, _parse(child, sub, dtype, depth + 1, mode, parent="Sequential")))
    else:  # Module: children in creation order; unnamed ones auto-named as linen does
        r.used.add("class")
        counts: dict[str, int] = {}
        for i, child in enumerate(r.modules("children")):
            sub = f"{where}.children[{i}]"
            parsed = _parse(child, sub, dtype, depth + 1, mode, parent="Module")
            name = child.get("name")
            if parsed.type == "Param":
                if not isinstance(name, str) or not name:
                    raise InvalidArgument(f"{sub}: a Param needs a 'name'")
                out.items.append((name, parsed.items[0][1]))
                continue
            if name is None:
                cls = child.get("class", parsed.type) if parsed.type == "Module" else parsed.cls or parsed.type
                name = f"{cls}_{counts.get(cls, 0)}"
                counts[cls] = counts.get(cls, 0) + 1
            out.items.append((name, parsed))
        names = [name for name, _ in out.items]
        for name in names:
            if not isinstance(name, str) or not name or "." in name or "/" in name:
                raise InvalidArgument(
                    f"{where}: names must be non-empty strings without '.' or '/', got {_quote(name)}"
                )
            if len(name) > MAX_NAME_CHARS:
                raise InvalidArgument(f"{where}: a name has at most {MAX_NAME_CHARS} characters, got {_quote(name)}")
        counts_by_name = Counter(names)
        if len(counts_by_name) != len(names):
            dup = sorted(n for n, c in counts_by_name.items() if c > 1)
            raise InvalidArgument(f"{where}: names must be unique among siblings; repeated: {_quote(dup)}")
    r.done()
    return out


def _has_scan(node: _Node) -> bool:
    return node.type == "Scan" or any(isinstance(item, _Node) and _has_scan(item) for _, item in node.items)


def _attention(r: _Reader, dtype: str, depth: int) -> list[tuple[str, _Leaf | _Node | _Draw]]:
    """flax's MultiHeadAttention: DenseGeneral query, key, value to (heads, head_dim), then out."""
    inp = r.integer("in_features")
    heads = r.integer("num_heads")
    qkv = r.integer("qkv_features", inp)
    out = r.integer("out_features", inp)
    if qkv % heads:
        raise InvalidArgument(f"{r.where}: qkv_features {_quote(qkv)} must be a multiple of num_heads {_quote(heads)}")
    shared = {k: r.node[k] for k in ("use_bias", "kernel_init", "bias_init") if k in r.node}
    r.used.update(shared)
    head_dim = qkv // heads
    items: list[tuple[str, _Leaf | _Node | _Draw]] = []
    for name, in_f, feat in (
        ("query", [inp], [heads, head_dim]),
        ("key", [inp], [heads, head_dim]),
        ("value", [inp], [heads, head_dim]),
        ("out", [heads, head_dim], [out]),
    ):
        desc = {"type": "DenseGeneral", "in_features": in_f, "features": feat, **shared}
        items.append((name, _parse(desc, f"{r.where}.{name}", dtype, depth + 1, "")))
    return items


# --- expansion ------------------------------------------------------------------------------


def linen_fold_in(path: Sequence[str | int], *, fix_rng_separator: bool = False) -> int:
    """The uint32 linen folds into the root key for ``path`` (module names, then a count).

    >>> linen_fold_in((1,)) == int.from_bytes(hashlib.sha1(bytes([1])).digest()[:4], "big")
    True
    """
    m = hashlib.sha1()
    for x in path:
        if fix_rng_separator:
            m.update(b"\0")
        if isinstance(x, str):
            m.update(x.encode("utf-8"))
        else:
            m.update(int(x).to_bytes((int(x).bit_length() + 7) // 8, byteorder="big"))
    return int.from_bytes(m.digest()[:4], byteorder="big")


def expand(
    description: Any,
    *,
    mode: str = "linen",
    fix_rng_separator: bool = False,
    param_dtype: Any = "float32",
) -> list[Param]:
    """Every parameter of a model description, in creation order, with its derived key.

    ``description`` is a module (a dict with a ``type``), or the raw form
    ``{"params": [{"path": "a.b.kernel", "initializer": ..., "args": ..., "shape": ...,
    "dtype": ...}, ...]}`` whose parameters are created in the order listed.

    Raises:
        InvalidArgument: with the place in the description that is wrong.
    """
    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {_quote(mode)}")
    if not isinstance(fix_rng_separator, bool):
        raise InvalidArgument(f"fix_rng_separator must be true or false, got {_quote(fix_rng_separator)}")
    dtype = _dtype_name(param_dtype)
    streams: tuple[str, ...] = DEFAULT_STREAMS
    if isinstance(description, Mapping) and "rng_streams" in description:
        description = dict(description)
        given = _streams(description.pop("rng_streams"))
        # linen: parameters always take the 'params' rng of init(rngs=...); streams are nnx's
        streams = given if mode == "nnx" else DEFAULT_STREAMS
    if isinstance(description, Mapping) and "params" in description and "type" not in description:
        root = _raw(description, dtype)
    else:
        root = _parse(description, "model", dtype, 0, mode)
    params: list[Param] = []
    _walk(root, (), mode, fix_rng_separator, params, _Streams(streams))
    if not params:
        raise InvalidArgument("model: the description has no parameters")
    counts = Counter(p.name for p in params)
    if len(counts) != len(params):
        dup = sorted(n for n, c in counts.items() if c > 1)
        raise InvalidArgument(f"model: parameter names repeat: {_quote(dup)}")
    return params


def _dtype_name(value: Any) -> str:
    """``dtype_name``, its error quoting the caller's value short."""
    try:
        return dtype_name(value)
    except InvalidArgument as exc:
        raise type(exc)(_relay(exc.message, value)) from None


def _streams(value: Any) -> tuple[str, ...]:
    if (
        isinstance(value, (str, bytes, Mapping))
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(v, str) and v for v in value)
        or len(set(value)) != len(value)
    ):
        raise InvalidArgument(
            "model: 'rng_streams' must be a non-empty list of distinct stream names, as the model's nnx.Rngs has "
            f"them (['default'] for nnx.Rngs(0), ['params', 'dropout'] for nnx.Rngs(params=0, dropout=1)); got "
            f"{_quote(value)}"
        )
    return tuple(value)


class _Streams:
    """nnx's rng streams while a model is built: which stream the parameters draw from
    (``params``, else ``default``) and how many counts it has given so far."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.params = self.resolve("params", "model: its parameters")
        self.count = 0

    def resolve(self, stream: str, who: str) -> str:
        """The stream ``rngs.<stream>`` is (Flax falls back to ``default``)."""
        if stream in self.names:
            return stream
        if "default" in self.names:
            return "default"
        raise InvalidArgument(
            f"{who} draw(s) from the {_quote(stream)} rng stream, which the model's nnx.Rngs (rng_streams "
            f"{_quote(list(self.names))}) lacks, with no 'default' stream to fall back on (Flax raises here "
            "too); name the model's streams in 'rng_streams' at its root"
        )

    def draw(self, item: _Draw) -> None:
        if self.resolve(item.stream, f"{item.where}: the {item.kind}") == self.params:
            self.count += 1  # a shared stream: every later parameter's key moves on


@dataclass(frozen=True)
class _Stacked:
    """Inside a Scan: the key steps before each parameter's fold_in, whether its values are
    compiled ones, and where the layer index goes in a PyTorch name."""

    prefix: tuple[Step, ...]
    jit: bool
    stack_at: int
    traced_twice: bool = False  # linen's nn.scan: the first trace's counts are spent


def _walk(
    node: _Node,
    path: tuple[str, ...],
    mode: str,
    fix: bool,
    out: list[Param],
    streams: _Streams,
    stacked: _Stacked | None = None,
) -> None:
    if node.type == "Scan":
        _walk_scan(node, path, mode, fix, out, streams)
        return
    count = 0  # linen: parameters created in this module so far
    if stacked is not None and stacked.traced_twice:
        # Flax traces a scanned body twice at init: each module's first-trace counts are spent
        count = sum(isinstance(item, _Leaf) for _, item in node.items)
    for name, item in node.items:
        if isinstance(item, _Node):
            _walk(item, (*path, name), mode, fix, out, streams, stacked)
            continue
        if isinstance(item, _Draw):
            streams.draw(item)
            continue
        count += 1
        if len(out) >= MAX_PARAMS:
            raise InvalidArgument(f"model: more than {MAX_PARAMS} parameters")
        if item.key is not None:  # explicit (the raw form of an exported plan): as written
            out.append(
                Param(
                    path=(*path, name),
                    initializer=item.init[0],
                    args=item.init[1],
                    shape=item.shape,
                    init_shape=item.init_shape or item.shape,
                    dtype=item.dtype,
                    fold_in=item.key[-1][1],
                    module=item.module or node.type,
                    role=item.role,
                    torch=item.torch,
                    key_prefix=item.key[:-1],
                    jit=item.jit,
                    stack_at=item.stack_at,
                )
            )
            continue
        if mode == "linen":
            fold = linen_fold_in((*path, count), fix_rng_separator=fix)
        else:
            fold, streams.count = streams.count, streams.count + 1
        layers = tuple(step[1] for step in stacked.prefix if step[0] == "stack") if stacked else ()
        out.append(
            Param(
                path=(*path, name),
                initializer=item.init[0],
                args=item.init[1],
                shape=(*layers, *item.shape),
                init_shape=(*layers, *(item.init_shape or item.shape)),
                dtype=item.dtype,
                fold_in=fold,
                module=node.type,
                role=item.role,
                torch=item.torch,
                key_prefix=stacked.prefix if stacked else (),
                jit=(stacked.jit if stacked else False) or item.jit,
                stack_at=stacked.stack_at if stacked else 0,
            )
        )


def _walk_scan(node: _Node, path: tuple[str, ...], mode: str, fix: bool, out: list[Param], streams: _Streams) -> None:
    """A Scan's layers: linen splits the root key (the path hash then tells the parameters
    apart); nnx splits one key drawn from the parameters' stream, counting from 0 in each layer."""
    inner = _Node("Module", node.items, node.cls)
    if mode == "linen":
        scan = node.transform == "scan"  # nn.scan: compiled, traced twice; nn.vmap: eager, once
        _walk(inner, path, mode, fix, out, streams, _Stacked((("stack", node.length),), scan, len(path), scan))
        return
    drawn = streams.count
    streams.count = 0
    _walk(
        inner, path, mode, fix, out, streams, _Stacked((("fold_in", drawn), ("stack", node.length)), False, len(path))
    )
    streams.count = drawn + 1


_EXPLICIT = ("key", "jit", "init_shape", "torch", "stack_at", "module")


def _explicit(entry: Mapping[str, Any], leaf: _Leaf, where: str) -> bool:
    """An exported plan's fields of a raw entry, onto its leaf: ``key`` (the steps from the
    root key, the last a fold_in), ``jit``, ``init_shape`` (the shape the initializer is
    called with), ``torch`` ([name, conversion]), ``stack_at`` and ``module``. True when it
    has a ``key``."""
    if "init_shape" in entry:
        init_shape = entry["init_shape"]
        if not isinstance(init_shape, list) or not all(_is_int(d) and d >= 0 for d in init_shape):
            raise InvalidArgument(
                f"{where}: 'init_shape' must be a list of non-negative ints, got {_quote(init_shape)}"
            )
        if math.prod(init_shape) != math.prod(leaf.shape):
            raise InvalidArgument(f"{where}: 'init_shape' {_quote(init_shape)} has another size than 'shape'")
        leaf.init_shape = tuple(int(d) for d in init_shape)
    if "torch" in entry:
        torch = entry["torch"]
        if not (
            isinstance(torch, list)
            and len(torch) == 2
            and isinstance(torch[0], str)
            and torch[0]
            and torch[1] in (*_CONVERSIONS, NO_TORCH)
        ):
            raise InvalidArgument(
                f"{where}: 'torch' is [name, conversion], conversion one of {_CONVERSIONS + (NO_TORCH,)}, "
                f"got {_quote(torch)}"
            )
        leaf.torch = (torch[0], torch[1])
    if "module" in entry:
        if entry["module"] not in MODULE_TYPES:
            raise InvalidArgument(
                f"{where}: 'module' is one of {', '.join(MODULE_TYPES)}, got {_quote(entry['module'])}"
            )
        leaf.module = entry["module"]
    jit = entry.get("jit", False)
    if not isinstance(jit, bool):
        raise InvalidArgument(f"{where}: 'jit' must be true or false, got {_quote(jit)}")
    leaf.jit = jit
    stack_at = entry.get("stack_at", 0)
    if not _is_int(stack_at) or not 0 <= stack_at < MAX_PATH_COMPONENTS:
        raise InvalidArgument(f"{where}: 'stack_at' must be a small non-negative int, got {_quote(stack_at)}")
    leaf.stack_at = int(stack_at)
    if "key" not in entry:
        return False
    steps = derive_from_json(entry["key"])
    if not steps or steps[-1][0] != "fold_in":
        raise InvalidArgument(
            f"{where}: 'key' is the steps from the root key, the last a fold_in; got {_quote(entry['key'])}"
        )
    Key(seed=0, derive=steps)  # its limits (steps, split and stack counts)
    stack = tuple(step[1] for step in steps if step[0] == "stack")
    if (leaf.init_shape or leaf.shape)[: len(stack)] != stack:
        raise InvalidArgument(f"{where}: a key with stack steps {list(stack)} needs a shape that starts with them")
    leaf.key = steps
    return True


def plan_jit(description: Any) -> bool:
    """Whether a raw form (an exported plan) says its user initialises under ``jax.jit``
    (``"jit": true``): every tensor then has the ``jit`` values unless a request says otherwise."""
    if not isinstance(description, Mapping) or "params" not in description or "type" in description:
        return False
    jit = description.get("jit", False)
    if not isinstance(jit, bool):
        raise InvalidArgument(f"model.jit must be true or false, got {_quote(jit)}")
    return jit


def _raw(description: Mapping[str, Any], dtype: str) -> _Node:
    """The raw form as a tree of plain modules whose leaves are Params, in the order listed."""
    unknown = _names(set(description) - {"params", "param_dtype", "jit"})
    if unknown:
        hint = did_you_mean(unknown[0], ("params", "param_dtype", "jit")) if len(unknown) == 1 else ""
        raise InvalidArgument(
            f"model: unknown field(s) {_quote(unknown)} in the raw form;{hint} its fields: params, param_dtype, jit"
        )
    jit = plan_jit(description)
    if "param_dtype" in description:
        dtype = _dtype_name(description["param_dtype"])
    entries = description["params"]
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise InvalidArgument("model.params must be a list of parameters")
    if len(entries) > MAX_PARAMS:  # as _walk would find, before the work
        raise InvalidArgument(f"model: more than {MAX_PARAMS} parameters")
    root = _Node("Module")
    # Each module's items by name, the first of a name (a module, or a parameter) kept, as a
    # scan of its items in order would find: (id of the module, name) -> item. Every module
    # stays in the tree, so no id is reused while this lives.
    found_by_name: dict[tuple[int, str], _Leaf | _Node] = {}
    explicit_first: bool | None = None
    for i, entry in enumerate(entries):
        where = f"model.params[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(f"{where}: a parameter must be an object, got {_quote(entry)}")
        path = entry.get("path")
        # At most MAX_PATH_COMPONENTS + 1 parts: however long the path, the split is bounded.
        parts = path.split(".", MAX_PATH_COMPONENTS) if isinstance(path, str) else [""]
        if any(not part for part in parts):
            raise InvalidArgument(f"{where}: 'path' must be a dotted name such as 'encoder.kernel', got {_quote(path)}")
        if len(parts) > MAX_PATH_COMPONENTS:
            raise InvalidArgument(
                f"{where}: 'path' has more than {MAX_PATH_COMPONENTS} dotted components, got {_quote(path)}"
            )
        for part in parts:
            if len(part) > MAX_NAME_CHARS:
                raise InvalidArgument(
                    f"{where}: each name in 'path' has at most {MAX_NAME_CHARS} characters, got {_quote(part)}"
                )
        *modules, name = parts
        r = _Reader(
            {
                **{k: v for k, v in entry.items() if k not in ("path", "dtype", *_EXPLICIT)},
                "type": "Param",
                "name": name,
                **({"param_dtype": entry["dtype"]} if "dtype" in entry else {}),
            },
            where,
        )
        leaf = _param(r, r.dtype(dtype))[0]
        r.done()
        explicit = _explicit(entry, leaf, where)
        if leaf.stack_at >= len(parts):
            raise InvalidArgument(
                f"{where}: 'stack_at' {leaf.stack_at} puts the layer index after the parameter's own name; it counts "
                f"the module names before the index, at most {len(parts) - 1} for the path {_quote(path)}"
            )
        leaf.jit = leaf.jit or jit
        # A value no key changes (zeros, ones, a constant) needs none among explicit keys.
        if explicit or lookup(leaf.init[0]).uses_key:
            if explicit_first is not None and explicit != explicit_first:
                raise InvalidArgument(f"{where}: give every parameter of the raw form a 'key', or none")
            explicit_first = explicit
        node = root
        for module in modules:
            found = found_by_name.get((id(node), module))
            if isinstance(found, _Leaf):
                raise InvalidArgument(f"{where}: {_quote(module)} is a parameter, not a module")
            if found is None:
                found = _Node("Module")
                node.items.append((module, found))
                found_by_name[id(node), module] = found
            node = found
        node.items.append((name, leaf))
        found_by_name.setdefault((id(node), name), leaf)
    return root


# --- output ---------------------------------------------------------------------------------


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.kernel": x}`` as ``{"a": {"b": {"kernel": x}}}`` (the Flax tree's shape)."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *modules, leaf = name.split(".")
        node = tree
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = value
    return tree


_CONVERSIONS = ("", "t", "conv", "flat_t", "flat")


@dataclass(frozen=True)
class Output:
    """One tensor of the result: which parameter makes it, its name and shape there, and
    how the generated array becomes it (a reshape, and in the PyTorch layout a transpose).
    """

    name: str
    param: Param
    shape: tuple[int, ...]
    convert: str = ""  # one of _CONVERSIONS

    @property
    def dtype(self) -> str:
        return self.param.dtype

    @property
    def keyed(self) -> bool:
        """False for PyTorch's BatchNorm buffers: constants, whatever the key and PRNG settings."""
        return self.param.fold_in is not None

    def key(self, root: Key) -> Key | None:
        """This tensor's key: the root key (with whatever steps derived it), the parameter's
        ``key_prefix`` (a stacked layer's split), and then its ``fold_in``."""
        if self.param.fold_in is None:
            return None
        for step in self.param.key_prefix:
            root = root.then(step)
        return root.then(("fold_in", self.param.fold_in))

    @property
    def needs_whole(self) -> bool:
        """True when the bytes are rearranged (a transpose), not merely reshaped."""
        return self.convert in ("t", "conv", "flat_t")

    def describe(self) -> dict[str, Any]:
        """This tensor as plain data (an entry of a model's plan): what it is, how it is
        made, and how the generated array becomes it. :meth:`from_description` reads it back."""
        p = self.param
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": p.dtype,
            "initializer": p.initializer,
            "args": p.args,
            "init_shape": list(p.init_shape),
            "param": p.name,
            "param_shape": list(p.shape),
            "fold_in": p.fold_in,
            "module": p.module,
            "role": p.role,
            "convert": self.convert,
            "key_prefix": [step_json(step) for step in p.key_prefix],
            "jit": p.jit,
        }

    @classmethod
    def from_description(cls, entry: Mapping[str, Any]) -> Output:
        """The tensor a plan entry describes (a server's plan, or :meth:`describe`'s).

        Raises:
            ProtocolError: the entry is not a plan entry this version understands.
        """
        try:
            fold_in = entry["fold_in"]
            param = Param(
                path=tuple(str(entry["param"]).split(".")),
                initializer=str(entry["initializer"]),
                args=dict(entry["args"]),
                shape=tuple(int(d) for d in entry["param_shape"]),
                init_shape=tuple(int(d) for d in entry["init_shape"]),
                dtype=str(entry["dtype"]),
                fold_in=None if fold_in is None else int(fold_in),
                module=str(entry["module"]),
                role=str(entry["role"]),
                key_prefix=derive_from_json(list(entry.get("key_prefix", []))),
                jit=bool(entry.get("jit", False)),
            )
            convert = str(entry["convert"])
            if convert not in _CONVERSIONS:
                raise ValueError(f"unknown conversion {convert!r}")
            return cls(str(entry["name"]), param, tuple(int(d) for d in entry["shape"]), convert)
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ProtocolError(f"a model plan entry this client cannot read ({exc!r}): {dict(entry)!r:.200}") from None

    def finish(self, generated: np.ndarray) -> np.ndarray:
        """The delivered array from what the initializer returned (its ``init_shape``)."""
        array = generated.reshape(self.param.shape)  # Flax's own reshape: the bytes stay
        if self.convert == "t":
            array = array.T
        elif self.convert == "conv":
            rank = array.ndim
            array = array.transpose(rank - 1, rank - 2, *range(rank - 2))
        elif self.convert == "flat_t":
            array = array.reshape(self.param.init_shape).T
        return np.ascontiguousarray(array).reshape(self.shape)


def model_prng(
    outs: Sequence[Output], threefry_partitionable: bool | None, enable_x64: bool | None
) -> Callable[[Output], tuple[bool | None, bool | None]]:
    """The PRNG settings (threefry_partitionable, enable_x64) each tensor of a model is
    made with, for the client and the server alike: as asked, for every keyed tensor; a
    constant (a torch buffer) takes none. ``enable_x64`` unset becomes on for the whole
    model when any of its tensors is a 64-bit type: a Flax user with float64 parameters
    runs with x64 on, and x64 changes the key of a seed outside [0, 2**32) for every
    parameter, float32 ones included."""
    # keyed tensors only: torch's int64 num_batches_tracked buffer is a constant, not a parameter
    if enable_x64 is None and any(out.keyed and out.param.dtype in SIXTY_FOUR_BIT for out in outs):
        enable_x64 = True

    def settings(out: Output) -> tuple[bool | None, bool | None]:
        return (threefry_partitionable, enable_x64) if out.keyed else (None, None)

    return settings


def outputs(params: Sequence[Param], layout: str = "flax") -> list[Output]:
    """The tensors of the result, in order, for a layout.

    ``flax``: each parameter under its Flax path (``Dense_0.kernel``), as Flax holds it.
    ``torch``: as PyTorch's modules hold them. Dense kernels (in, out) become ``weight``
    (out, in); Conv kernels (*spatial, in, out) become (out, in, *spatial); DenseGeneral
    kernels the 2-D ``weight`` of a ``Linear`` over the flattened feature axes,
    (prod(out), prod(in)), and their biases flat; scale and embedding become ``weight``.
    A BatchNorm also gets PyTorch's buffers (running_mean 0, running_var 1,
    num_batches_tracked 0, the values Flax keeps in ``batch_stats``), so that
    ``load_state_dict`` finds everything it expects.
    """
    if layout not in LAYOUTS:
        raise InvalidArgument(f"layout must be one of {', '.join(LAYOUTS)}, got {_quote(layout)}")
    if layout == "flax":
        return _distinct([(Output(p.name, p, p.shape), _quote(p.name)) for p in params], layout)
    out: list[tuple[Output, str]] = []  # each with the parameter it comes from, for messages
    buffers_done: set[str] = set()
    tensors = sum(math.prod(step[1] for step in p.key_prefix if step[0] == "stack") for p in params)
    if tensors > MAX_PARAMS:  # before any is made: each stacked layer is a tensor of its own here
        raise InvalidArgument(
            f"model: in the torch layout its stacked layers make {tensors} tensors, more than {MAX_PARAMS}; "
            "ask for layout 'flax'"
        )
    for p, source in _unstacked(params):
        leaf, how = p.torch
        if how == NO_TORCH:
            raise InvalidArgument(
                f"{p.name}: a {p.module}'s parameters have no PyTorch layout jaxinit has verified; ask for "
                "layout 'flax' and arrange them yourself"
            )
        dot = ".".join(p.path[:-1]) + "." if len(p.path) > 1 else ""
        shape = p.shape
        if how == "t":
            shape = shape[::-1]
        elif how == "conv":
            if len(shape) < 2:
                raise InvalidArgument(
                    f"{_quote(p.name)}: the torch conversion 'conv' moves the last two axes first; the parameter "
                    f"has shape {list(shape)[:8]}, fewer than 2 dimensions"
                )
            shape = (shape[-1], shape[-2], *shape[:-2])
        elif how == "flat_t":
            shape = p.init_shape[::-1]
        elif how == "flat":
            shape = (math.prod(shape),)
        out.append((Output(dot + leaf, p, shape, how), source))
        if p.module == "BatchNorm" and dot not in buffers_done:
            buffers_done.add(dot)
            for name, init, dtype, bshape in (
                ("running_mean", "zeros", "float32", p.shape),
                ("running_var", "ones", "float32", p.shape),
                ("num_batches_tracked", "zeros", "int64", ()),
            ):
                buffer = Param((*p.path[:-1], name), init, {}, bshape, bshape, dtype, None, "BatchNorm", name)
                out.append((Output(dot + name, buffer, bshape), f"{source}'s BatchNorm buffer"))
    return _distinct(out, layout)


RESERVED_NAME = "__metadata__"  # safetensors keeps the file's metadata under this name


def _distinct(outs: list[tuple[Output, str]], layout: str) -> list[Output]:
    """The outputs when every tensor has a name of its own; InvalidArgument naming both
    parameters (each output comes with its parameter's description) otherwise: a file
    with one name twice, or a tensor named ``__metadata__``, is a safetensors file no
    reader loads."""
    seen: dict[str, str] = {}
    for out, source in outs:
        if out.name == RESERVED_NAME:
            raise InvalidArgument(
                f"model: {source} would be the tensor {RESERVED_NAME!r} in the {layout} layout, a name "
                "safetensors reserves for the file's metadata; rename the parameter or its module"
            )
        first = seen.setdefault(out.name, source)
        if first is not source:
            raise InvalidArgument(
                f"model: {first} and {source} would both be the tensor {_quote(out.name)} in the {layout} "
                "layout; rename one of them" + (" or ask for layout 'flax'" if layout == "torch" else "")
            )
    return [out for out, _ in outs]


def _unstacked(params: Sequence[Param]) -> Iterator[tuple[Param, str]]:
    """PyTorch holds stacked layers as a ModuleList: a stacked parameter becomes one
    parameter per layer, its index after the Scan's name (``layers.0.Dense_0.kernel``),
    its key the layer's own (split(..., L)[i] for the stack step). Each comes with its
    description for messages (the parameter, and its layer)."""
    for p in params:
        stacks = [i for i, step in enumerate(p.key_prefix) if step[0] == "stack"]
        if not stacks:
            yield p, _quote(p.name)
            continue
        if len(stacks) > 1:
            raise InvalidArgument(f"{p.name}: stacked twice (a scan in a scan) has no PyTorch layout; ask for 'flax'")
        where = stacks[0]
        length = p.key_prefix[where][1]
        for i in range(length):
            yield (
                dataclasses.replace(
                    p,
                    path=(*p.path[: p.stack_at], str(i), *p.path[p.stack_at :]),
                    shape=p.shape[1:],
                    init_shape=p.init_shape[1:],
                    key_prefix=(*p.key_prefix[:where], ("split", length, i), *p.key_prefix[where + 1 :]),
                    stack_at=0,
                ),
                f"layer {i} of {_quote(p.name)}",
            )


def model_canonical(layout: str, tensors: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(canonical JSON, sha256) of a model answer: its layout and each tensor's
    (name, request digest). Two answers with the same digest have the same bytes."""
    canonical = json.dumps({"layout": layout, "tensors": [list(t) for t in tensors]}, separators=(",", ":"))
    return canonical, hashlib.sha256(canonical.encode()).hexdigest()


def file_metadata(
    identity: Mapping[str, Any],
    *,
    mode: str,
    layout: str,
    root: Key,
    threefry_partitionable: bool,
    enable_x64: bool,
    model_digest: str,
    jit: bool = False,
) -> dict[str, str]:
    """The string metadata of a model file (safetensors ``__metadata__``): what produced it.

    ``format`` is ``pt`` for the PyTorch layout, as Hugging Face tools expect; ``jit``:
    ``true`` when the model was asked as ``jax.jit(model.init)`` makes it.
    """
    return {
        "format": "pt" if layout == "torch" else "flax",
        **{
            k: str(identity.get(k, ""))
            for k in ("jaxinit_version", "jax_version", "jaxlib_version", "backend", "device_kind")
        },
        "mode": mode,
        "layout": layout,
        "root_key": json.dumps(root.to_json(), separators=(",", ":")),
        "threefry_partitionable": str(threefry_partitionable).lower(),
        "enable_x64": str(enable_x64).lower(),
        "jit": str(jit).lower(),
        "model_digest": model_digest,
    }
