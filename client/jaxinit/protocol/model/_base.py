"""What every part of the model language shares: its limits, the parsed tree's nodes, and
typed access to one node of a description, with messages that say where the problem is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jaxinit.protocol.catalog import bind_arguments, lookup
from jaxinit.protocol.codec import dtype_name
from jaxinit.protocol.errors import InvalidArgument, did_you_mean
from jaxinit.protocol.keys import Step
from jaxinit.protocol.values import check_flag, check_shape, is_int, quote, relay

MODES = ("linen", "nnx")
LAYOUTS = ("flax", "torch")
MAX_PARAMS = 100_000  # parameters per model description
MAX_DEPTH = 32  # nesting of modules (far below Python's recursion limit: parsing recurses per level)
MAX_PATH_COMPONENTS = 64  # names in a parameter's path: its modules', then its own (raw form: dotted parts)
MAX_NAME_CHARS = 256  # characters in one name of a path (a module's or a parameter's)

Init = tuple[str, dict[str, Any]]  # (initializer name, factory arguments)

LECUN_NORMAL: Init = ("lecun_normal", {})
ZEROS: Init = ("zeros", {})
HE_UNIFORM: Init = ("he_uniform", {})
ONES: Init = ("ones", {})
EMBED: Init = ("variance_scaling", {"scale": 1.0, "mode": "fan_in", "distribution": "normal", "out_axis": 0})
NO_TORCH = "none"  # a parameter with no PyTorch layout (outputs() refuses the torch layout)
# How a generated array becomes a PyTorch tensor: as is, transposed, a Conv kernel's axes
# moved, a DenseGeneral kernel flattened and transposed, a bias flattened.
CONVERSIONS = ("", "t", "conv", "flat_t", "flat")


@dataclass
class Leaf:
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


@dataclass(frozen=True)
class Draw:
    """nnx: one count a module takes from a stream at construction, creating no parameter
    (``rngs.dropout.fork()``)."""

    stream: str
    where: str
    kind: str


Item = tuple[str, "Leaf | Node | Draw"]  # a module's item: its name (or role), and what it is


@dataclass
class Node:
    """A parsed module: its leaves (own parameters), the draws it takes from rng
    streams, and named children, in creation order."""

    type: str
    items: list[Item] = field(default_factory=list)
    cls: str = ""  # the Flax class name linen auto-names an unnamed instance after (default: type)
    length: int = 0  # a Scan: how many layers it stacks
    transform: str = ""  # a Scan: linen's "scan" or "vmap", nnx's "vmap"
    stacks: str = ""  # a Scan: the type of the module it stacks, which owns the leaves among its items

    def leaves(self, leaves: list[Leaf]) -> Node:
        """This node with ``leaves`` as its items, each under its role."""
        self.items = [(leaf.role, leaf) for leaf in leaves]
        return self


class Reader:
    """Typed access to one description node, with messages that say where the problem is."""

    def __init__(self, node: Any, where: str) -> None:
        if not isinstance(node, Mapping):
            raise InvalidArgument(f"{where}: a module must be an object with a 'type', got {quote(node)}")
        self.node = node
        self.where = where
        self.used: set[str] = {"type", "name"}

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key`` as given (``default`` when absent), read: it is one of this type's fields."""
        self.used.add(key)
        return self.node.get(key, default)

    def integer(self, key: str, default: Any = None, *, minimum: int = 1) -> int:
        value = self.get(key, default)
        if value is None:
            raise InvalidArgument(f"{self.where}: '{key}' is required (an int >= {minimum})")
        if not is_int(value) or value < minimum:
            raise InvalidArgument(f"{self.where}: '{key}' must be an int >= {minimum}, got {quote(value)}")
        return int(value)

    def integers(self, key: str, default: Any = None) -> tuple[int, ...]:
        """An int or a non-empty list of ints (>= 1), as a tuple."""
        value = self.get(key, default)
        if value is None:
            raise InvalidArgument(f"{self.where}: '{key}' is required (an int or a list of ints)")
        items = [value] if is_int(value) else value
        if not is_list(items) or not items or not all(is_int(v) and v >= 1 for v in items):
            raise InvalidArgument(
                f"{self.where}: '{key}' must be a positive int or a non-empty list of them, got {quote(value)}"
            )
        return tuple(int(v) for v in items)

    def shape(self, key: str) -> tuple[int, ...]:
        """A list of non-negative ints (a raw parameter's shape)."""
        return check_shape(self.get(key), f"{self.where}: '{key}'")

    def fraction(self, key: str, default: float) -> float:
        """A number in [0, 1] (a dropout rate)."""
        value = self.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise InvalidArgument(f"{self.where}: '{key}' must be a number in [0, 1], got {quote(value)}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        return check_flag(self.get(key, default), f"{self.where}: '{key}'")

    def dtype(self, inherited: str, key: str = "param_dtype") -> str:
        value = self.get(key)
        if value is None:
            return inherited
        return relayed_dtype(value, f"{self.where}: {key}: ")

    def init(self, key: str, default: Init) -> Init:
        value = self.get(key)
        if value is None:
            return default[0], dict(default[1])
        return parse_init(value, f"{self.where}: '{key}'")

    def modules(self, key: str) -> list[Any]:
        value = self.get(key)
        if not is_list(value):
            raise InvalidArgument(f"{self.where}: '{key}' must be a list of modules, got {quote(value)}")
        return list(value)

    def done(self) -> None:
        """Refuse the fields this module type does not have (what it read is every one it has)."""
        unknown = names(set(self.node) - self.used)
        if unknown:
            hint = did_you_mean(unknown[0], self.used) if len(unknown) == 1 else ""
            raise InvalidArgument(
                f"{self.where}: unknown field(s) {quote(unknown)} for {self.node.get('type')};{hint} "
                f"its fields: {', '.join(sorted(self.used))}"
            )


def is_list(value: Any) -> bool:
    """A sequence that is no string and no mapping: what a description's lists are."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, Mapping))


def at(where: str) -> str:
    """A place in the description, its middle left out when it is long (deep nesting)."""
    return where if len(where) <= 120 else f"{where[:50]}...{where[-60:]}"


def names(keys: Any) -> list[Any]:
    """Field names, sorted (as text where they are not all strings)."""
    return sorted(keys, key=str)


def relayed_dtype(value: Any, where: str = "") -> str:
    """``dtype_name``, its error quoting the caller's value short (after ``where``)."""
    try:
        return dtype_name(value)
    except InvalidArgument as exc:
        raise type(exc)(f"{where}{relay(exc.message, value)}") from None


def parse_init(value: Any, where: str) -> Init:
    """An initializer override: a registry name, or {"initializer": name, "args": {...}}."""
    args: Any
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, Mapping) and set(value) <= {"initializer", "args"} and "initializer" in value:
        name, args = value["initializer"], value.get("args") or {}
        if not isinstance(args, Mapping):
            raise InvalidArgument(f"{where}: 'args' must be an object, got {quote(args)}")
    else:
        raise InvalidArgument(
            f'{where}: an initializer is a registry name or {{"initializer": name, "args": {{...}}}}, '
            f"got {quote(value)}"
        )
    try:
        spec = lookup(name)
        bound = bind_arguments(spec, args)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {relay(exc.message, name, *args, *args.values())}") from None
    except Exception as exc:  # UnknownInitializer: keep its class, say where
        raise type(exc)(f"{where}: {relay(str(exc), name, *args, *args.values())}") from None
    return spec.name, {k: bound[k] for k in args}
