"""The model description language: a module description (plain data) parsed into a tree of
modules, parameters and rng draws, in Flax's creation order.

Each module type has one parser, found in a table: the leaf types' (``Dense``, ``Conv``,
...) declare their parameters; the composite ones (``Module``, ``Sequential``, ``Scan``,
``MultiHeadAttention``, ...) parse their children. Where a type may stand (a ``Param``
among a ``Module``'s children, a ``Function`` in a ``Sequential``) and which mode has it
is a table too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jaxinit.protocol.errors import InvalidArgument, did_you_mean
from jaxinit.protocol.model._base import MAX_DEPTH, MAX_NAME_CHARS, Draw, Item, Leaf, Node, Reader, at, names
from jaxinit.protocol.model._leaves import LEAF_MODULES, dense, einsum
from jaxinit.protocol.values import quote

__all__ = ["MAX_SCAN_LENGTH", "MODULE_TYPES", "parse"]

MAX_SCAN_LENGTH = 4096  # layers one Scan stacks (a stacked key's slices)
_ATTENTION_CLASSES = ("MultiHeadAttention", "MultiHeadDotProductAttention", "SelfAttention")


@dataclass(frozen=True)
class _Context:
    """What a module's parser knows besides its own fields: where it is, the dtype it
    inherits, how deep it nests, and the mode."""

    where: str
    dtype: str
    depth: int
    mode: str

    def child(self, desc: Any, where: str, parent: str, mode: str | None = None) -> Node:
        """A child module of this one, parsed."""
        return parse(desc, where, self.dtype, self.depth + 1, self.mode if mode is None else mode, parent=parent)


_Parser = Callable[[Reader, _Context, Node], None]


def _leaf_parser(declare: Callable[[Reader, str], list[Leaf]]) -> _Parser:
    def parser(r: Reader, c: _Context, out: Node) -> None:
        out.leaves(declare(r, c.dtype))

    return parser


def _function(r: Reader, c: _Context, out: Node) -> None:
    r.used.add("fn")  # what it computes (relu, gelu, ...): documentation only


def _dropout(r: Reader, c: _Context, out: Node) -> None:
    # linen's nn.Dropout takes its rng when applied, never at init; nnx's takes a count
    # from its stream at construction when given rngs (rngs=True here).
    r.fraction("rate", 0.5)  # what it drops when applied: checked, no part in init
    stream = r.get("rng_collection", "dropout")
    if not isinstance(stream, str) or not stream:
        raise InvalidArgument(f"{c.where}: 'rng_collection' must be a stream name, got {quote(stream)}")
    if r.flag("rngs", False) and c.mode == "nnx":
        out.items = [("", Draw(stream, c.where, "Dropout"))]


def _einsum(r: Reader, c: _Context, out: Node) -> None:
    out.leaves(einsum(r, c.dtype, c.mode))


def _lora_linear(r: Reader, c: _Context, out: Node) -> None:
    # nnx.LoRALinear: a Linear (kernel, bias) with a LoRA child named `lora`, whose
    # parameters take lora_param_dtype (Flax's default float32), not the Linear's dtype
    out.leaves(dense(r, c.dtype))
    lora = {k: r.node[k] for k in ("a_initializer", "b_initializer") if k in r.node}
    r.used.update(lora)
    rank = r.integer("lora_rank")
    child = {"type": "LoRA", "in_features": r.integer("in_features"), "lora_rank": rank, **lora}
    child["out_features"] = r.integer("features")
    child["param_dtype"] = r.get("lora_param_dtype") or "float32"
    out.items.append(("lora", c.child(child, f"{c.where}.lora", "LoRALinear")))


def _class_of(desc: Mapping[str, Any], parsed: Node) -> str:
    """The class linen names an unnamed instance after."""
    return str(desc.get("class", parsed.type)) if parsed.type == "Module" else parsed.cls or parsed.type


def _scan(r: Reader, c: _Context, out: Node) -> None:
    # Its module's parameters and children, each stacked: the scan's scope is the
    # module's (linen names an unnamed one Scan<Class>_i).
    out.length = r.integer("length")
    out.transform = r.get("transform", "scan" if c.mode == "linen" else "vmap")
    allowed = ("scan", "vmap") if c.mode == "linen" else ("vmap",)
    if out.transform not in allowed:
        raise InvalidArgument(
            f"{c.where}: a Scan's 'transform' is one of {', '.join(allowed)} in {c.mode} (linen: nn.scan or nn.vmap; "
            f"nnx: split_rngs + nnx.vmap), got {quote(out.transform)}"
        )
    if out.length > MAX_SCAN_LENGTH:
        raise InvalidArgument(f"{c.where}: a Scan stacks at most {MAX_SCAN_LENGTH} layers, got {out.length}")
    inner_desc = r.get("module")
    if not isinstance(inner_desc, Mapping):
        raise InvalidArgument(f"{c.where}: a Scan needs the 'module' it stacks (a module description)")
    inner = c.child(inner_desc, f"{c.where}.module", "Scan")
    if _has_scan(inner):
        raise InvalidArgument(f"{c.where}: a Scan inside a Scan is not supported (its keys are not verified)")
    if inner.type in ("Param", "Function"):
        raise InvalidArgument(f"{c.where}: a Scan stacks a module with parameters, not a {inner.type}")
    out.items = list(inner.items)  # a scanned Dense's kernel and bias are the scan's own
    out.stacks = inner.type  # (still a Dense's: a BatchNorm's get their PyTorch buffers)
    out.cls = f"Scan{_class_of(inner_desc, inner)}"


def _has_scan(node: Node) -> bool:
    return node.type == "Scan" or any(isinstance(item, Node) and _has_scan(item) for _, item in node.items)


def _attention(r: Reader, c: _Context, out: Node) -> None:
    """flax's MultiHeadAttention: DenseGeneral query, key, value to (heads, head_dim), then out."""
    # linen names an unnamed one after its class: nn.MultiHeadAttention,
    # nn.MultiHeadDotProductAttention and nn.SelfAttention make the same parameters.
    out.cls = r.get("class", "MultiHeadAttention")
    if out.cls not in _ATTENTION_CLASSES:
        raise InvalidArgument(
            f"{c.where}: 'class' is one of {', '.join(_ATTENTION_CLASSES)} (the linen class, for its "
            f"automatic name), got {quote(out.cls)}"
        )
    inp = r.integer("in_features")
    heads = r.integer("num_heads")
    qkv = r.integer("qkv_features", inp)
    features = r.integer("out_features", inp)
    if qkv % heads:
        raise InvalidArgument(f"{c.where}: qkv_features {quote(qkv)} must be a multiple of num_heads {quote(heads)}")
    shared = {k: r.node[k] for k in ("use_bias", "kernel_init", "bias_init") if k in r.node}
    r.used.update(shared)
    head_dim = qkv // heads
    for name, in_f, feat in (
        ("query", [inp], [heads, head_dim]),
        ("key", [inp], [heads, head_dim]),
        ("value", [inp], [heads, head_dim]),
        ("out", [heads, head_dim], [features]),
    ):
        desc = {"type": "DenseGeneral", "in_features": in_f, "features": feat, **shared}
        out.items.append((name, c.child(desc, f"{c.where}.{name}", "", mode="")))
    rate = r.fraction("dropout_rate", 0.0)
    keep_rngs = r.flag("keep_rngs", True)  # nnx's: whether it stores a fork of the dropout stream
    if c.mode == "nnx" and rate > 0 and keep_rngs:
        out.items.append(("", Draw("dropout", c.where, "MultiHeadAttention")))  # rngs.dropout.fork()


def _sequential(r: Reader, c: _Context, out: Node) -> None:
    # linen's nn.Sequential names its layers layers_0, layers_1, ...; nnx.Sequential
    # keeps them in a list attribute `layers`, so its paths read layers.0, layers.1.
    # Parameter-free layers (Function: relu, ...) take a position all the same.
    for i, child in enumerate(r.modules("layers")):
        sub = f"{c.where}.layers[{i}]"
        if isinstance(child, Mapping) and "name" in child:
            raise InvalidArgument(f"{sub}: layers of a Sequential are named by position; drop 'name'")
        name = f"layers_{i}" if c.mode == "linen" else f"layers.{i}"
        out.items.append((name, c.child(child, sub, "Sequential")))


def _module(r: Reader, c: _Context, out: Node) -> None:
    # Children in creation order; unnamed ones auto-named as linen does.
    cls = r.get("class")
    if cls is not None and not isinstance(cls, str):
        raise InvalidArgument(f"{c.where}: 'class' must be a string (the module's class name), got {quote(cls)}")
    counts: dict[str, int] = {}
    for i, child in enumerate(r.modules("children")):
        sub = f"{c.where}.children[{i}]"
        parsed = c.child(child, sub, "Module")
        name = child.get("name")
        if parsed.type == "Param":
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"{sub}: a Param needs a 'name'")
            out.items.append((name, parsed.items[0][1]))
            continue
        if name is None:
            cls = _class_of(child, parsed)
            name = f"{cls}_{counts.get(cls, 0)}"
            counts[cls] = counts.get(cls, 0) + 1
        out.items.append((name, parsed))
    _check_names(c.where, out.items)


def _check_names(where: str, items: list[Item]) -> None:
    """A module's children's names: non-empty, no '.' or '/', short, unique."""
    given = [name for name, _ in items]
    for name in given:
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise InvalidArgument(f"{where}: names must be non-empty strings without '.' or '/', got {quote(name)}")
        if len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"{where}: a name has at most {MAX_NAME_CHARS} characters, got {quote(name)}")
    counts = Counter(given)
    if len(counts) != len(given):
        dup = sorted(n for n, k in counts.items() if k > 1)
        raise InvalidArgument(f"{where}: names must be unique among siblings; repeated: {quote(dup)}")


# Module type -> its parser, which fills the parsed node's items (and a Scan's length).
_PARSERS: dict[str, _Parser] = {
    **{kind: _leaf_parser(declare) for kind, declare in LEAF_MODULES.items()},
    "MultiHeadAttention": _attention,
    "Module": _module,
    "Sequential": _sequential,
    "Function": _function,
    "Dropout": _dropout,
    "Einsum": _einsum,
    "LoRALinear": _lora_linear,
    "Scan": _scan,
}
MODULE_TYPES: tuple[str, ...] = tuple(_PARSERS)
# Types that stand only in one parent's items: type -> (the parent, what to say elsewhere).
_PLACES = {
    "Param": ("Module", "a Param belongs among the children of a Module"),
    "Function": ("Sequential", "a Function (a parameter-free layer) belongs in a Sequential's layers"),
}
_NNX_ONLY = ("LoRA", "LoRALinear")


def _kind(node: Mapping[str, Any], where: str, mode: str, parent: str) -> str:
    """The module type of ``node``, known and allowed where it stands."""
    kind = node.get("type")
    if kind is None:
        raise InvalidArgument(
            f"{where}: a module needs a 'type' (one of {', '.join(MODULE_TYPES)}), or a description in the raw "
            f"form a 'params' list; got the field(s) {quote(names(node)[:20])}"
        )
    if not isinstance(kind, str):
        raise InvalidArgument(f"{where}: 'type' must be a string (one of {', '.join(MODULE_TYPES)}), got {quote(kind)}")
    if kind not in _PARSERS:
        hint = did_you_mean(kind, MODULE_TYPES)
        raise InvalidArgument(f"{where}: unknown module type {quote(kind)};{hint} known: {', '.join(MODULE_TYPES)}")
    place = _PLACES.get(kind)
    if place is not None and parent != place[0]:
        raise InvalidArgument(f"{where}: {place[1]}")
    if kind in _NNX_ONLY and mode == "linen":
        raise InvalidArgument(f"{where}: {kind} is an nnx module (linen has none); describe it with mode 'nnx'")
    return str(kind)


def parse(node: Any, where: str, dtype: str, depth: int, mode: str, *, parent: str = "") -> Node:
    """The module ``node`` describes, parsed (``where`` names it in messages, ``parent`` is
    the type it stands in).

    Raises:
        InvalidArgument: with the place in the description that is wrong.
    """
    if depth > MAX_DEPTH:  # before anything else, so that recursion stops here
        raise InvalidArgument(f"{at(where)}: modules nest deeper than {MAX_DEPTH} levels")
    r = Reader(node, where)
    kind = _kind(node, where, mode, parent)
    out = Node(kind)
    _PARSERS[kind](r, _Context(where, r.dtype(dtype), depth, mode), out)
    r.done()
    return out
