"""The raw form of a description: its parameters listed by dotted path, created in the
order listed, as an exported plan writes them (with each one's explicit key).

``{"params": [{"path": "a.b.kernel", "initializer": ..., "args": ..., "shape": ...,
"dtype": ...}, ...], "param_dtype": ..., "jit": ...}``; an exported plan's entries also
carry ``key`` (the steps from the root key, the last a fold_in), ``jit``, ``init_shape``,
``torch``, ``stack_at`` and ``module``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxinit.protocol.catalog import lookup
from jaxinit.protocol.errors import InvalidArgument, did_you_mean
from jaxinit.protocol.keys import Key, derive_from_json
from jaxinit.protocol.model._base import (
    CONVERSIONS,
    MAX_NAME_CHARS,
    MAX_PARAMS,
    MAX_PATH_COMPONENTS,
    NO_TORCH,
    Leaf,
    Node,
    Reader,
    is_list,
    names,
    relayed_dtype,
)
from jaxinit.protocol.model._leaves import LEAF_MODULES
from jaxinit.protocol.model.language import MODULE_TYPES
from jaxinit.protocol.values import check_flag, check_shape, is_int, quote

__all__ = ["is_raw", "plan_jit", "raw"]

_FIELDS = ("params", "param_dtype", "jit")
_EXPLICIT = ("key", "jit", "init_shape", "torch", "stack_at", "module")


def is_raw(description: Any) -> bool:
    """Whether ``description`` is in the raw form (a ``params`` list, no module ``type``)."""
    return isinstance(description, Mapping) and "params" in description and "type" not in description


def plan_jit(description: Any) -> bool:
    """Whether a raw form (an exported plan) says its user initialises under ``jax.jit``
    (``"jit": true``): every tensor then has the ``jit`` values unless a request says otherwise."""
    if not is_raw(description):
        return False
    return check_flag(description.get("jit", False), "model.jit")


def raw(description: Mapping[str, Any], dtype: str) -> Node:
    """The raw form as a tree of plain modules whose leaves are Params, in the order listed."""
    unknown = names(set(description) - set(_FIELDS))
    if unknown:
        hint = did_you_mean(unknown[0], _FIELDS) if len(unknown) == 1 else ""
        raise InvalidArgument(
            f"model: unknown field(s) {quote(unknown)} in the raw form;{hint} its fields: {', '.join(_FIELDS)}"
        )
    jit = plan_jit(description)
    if "param_dtype" in description:
        dtype = relayed_dtype(description["param_dtype"])
    entries = description["params"]
    if not is_list(entries):
        raise InvalidArgument("model.params must be a list of parameters")
    if len(entries) > MAX_PARAMS:  # as the walk would find, before the work
        raise InvalidArgument(f"model: more than {MAX_PARAMS} parameters")
    tree = _Tree()
    explicit_first: bool | None = None
    for i, entry in enumerate(entries):
        where = f"model.params[{i}]"
        parts, leaf, explicit = _entry(entry, dtype, where)
        leaf.jit = leaf.jit or jit
        # A value no key changes (zeros, ones, a constant) needs none among explicit keys.
        if explicit or lookup(leaf.init[0]).uses_key:
            if explicit_first is not None and explicit != explicit_first:
                raise InvalidArgument(f"{where}: give every parameter of the raw form a 'key', or none")
            explicit_first = explicit
        tree.place(parts, leaf, where)
    return tree.root


class _Tree:
    """The modules the paths name, each found by name as a scan of its items in order
    would find it (the first of a name, a module or a parameter, kept)."""

    def __init__(self) -> None:
        self.root = Node("Module")
        # (id of the module, name) -> item. Every module stays in the tree, so no id is
        # reused while this lives.
        self.found: dict[tuple[int, str], Leaf | Node] = {}

    def place(self, parts: list[str], leaf: Leaf, where: str) -> None:
        *modules, name = parts
        node = self.root
        for module in modules:
            found = self.found.get((id(node), module))
            if isinstance(found, Leaf):
                raise InvalidArgument(f"{where}: {quote(module)} is a parameter, not a module")
            if found is None:
                found = Node("Module")
                node.items.append((module, found))
                self.found[id(node), module] = found
            node = found
        if isinstance(self.found.get((id(node), name)), Node):  # no Flax tree holds both
            raise InvalidArgument(f"{where}: {quote(name)} is a module, not a parameter")
        node.items.append((name, leaf))
        self.found.setdefault((id(node), name), leaf)


def _entry(entry: Any, dtype: str, where: str) -> tuple[list[str], Leaf, bool]:
    """One entry: its path's names, its parameter, and whether it has an explicit key."""
    if not isinstance(entry, Mapping):
        raise InvalidArgument(f"{where}: a parameter must be an object, got {quote(entry)}")
    path = entry.get("path")
    parts = _path(path, where)
    # 'param_dtype' is an alias of 'dtype' (dtype wins), 'type' and 'name' are ignored (the
    # schema's planParam): a refusal names the field the entry gave.
    key = "dtype" if "dtype" in entry else "param_dtype"
    fields = {k: v for k, v in entry.items() if k not in ("path", "dtype", "param_dtype", *_EXPLICIT)}
    r = Reader({**fields, "type": "Param", "name": parts[-1], **({key: entry[key]} if key in entry else {})}, where)
    r.used.update(("dtype", "param_dtype"))  # both a raw entry's fields, whichever it gave
    leaf = LEAF_MODULES["Param"](r, r.dtype(dtype, key))[0]
    r.done()
    explicit = _explicit(entry, leaf, where)
    if leaf.stack_at >= len(parts):
        raise InvalidArgument(
            f"{where}: 'stack_at' {leaf.stack_at} puts the layer index after the parameter's own name; it counts "
            f"the module names before the index, at most {len(parts) - 1} for the path {quote(path)}"
        )
    return parts, leaf, explicit


def _path(path: Any, where: str) -> list[str]:
    """A dotted path's names, bounded in number and length."""
    # At most MAX_PATH_COMPONENTS + 1 parts: however long the path, the split is bounded.
    parts = path.split(".", MAX_PATH_COMPONENTS) if isinstance(path, str) else [""]
    if any(not part for part in parts):
        raise InvalidArgument(f"{where}: 'path' must be a dotted name such as 'encoder.kernel', got {quote(path)}")
    if len(parts) > MAX_PATH_COMPONENTS:
        raise InvalidArgument(
            f"{where}: 'path' has more than {MAX_PATH_COMPONENTS} dotted components, got {quote(path)}"
        )
    for part in parts:
        if len(part) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"{where}: each name in 'path' has at most {MAX_NAME_CHARS} characters, got {quote(part)}"
            )
    return parts


def _explicit(entry: Mapping[str, Any], leaf: Leaf, where: str) -> bool:
    """An exported plan's fields of a raw entry, onto its leaf: ``key`` (the steps from the
    root key, the last a fold_in), ``jit``, ``init_shape`` (the shape the initializer is
    called with), ``torch`` ([name, conversion]), ``stack_at`` and ``module``. True when it
    has a ``key``."""
    if "init_shape" in entry:
        leaf.init_shape = _init_shape(entry["init_shape"], leaf, where)
    if "torch" in entry:
        leaf.torch = _torch(entry["torch"], where)
    if "module" in entry:
        if entry["module"] not in MODULE_TYPES:
            raise InvalidArgument(
                f"{where}: 'module' is one of {', '.join(MODULE_TYPES)}, got {quote(entry['module'])}"
            )
        leaf.module = entry["module"]
    leaf.jit = check_flag(entry.get("jit", False), f"{where}: 'jit'")
    stack_at = entry.get("stack_at", 0)
    if not is_int(stack_at) or not 0 <= stack_at < MAX_PATH_COMPONENTS:
        raise InvalidArgument(f"{where}: 'stack_at' must be a small non-negative int, got {quote(stack_at)}")
    leaf.stack_at = int(stack_at)
    if "key" not in entry:
        return False
    leaf.key = _key(entry["key"], leaf, where)
    return True


def _init_shape(value: Any, leaf: Leaf, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: 'init_shape' must be a list of non-negative ints, got {quote(value)}")
    init_shape = check_shape(value, f"{where}: 'init_shape'")
    if math.prod(init_shape) != math.prod(leaf.shape):
        raise InvalidArgument(f"{where}: 'init_shape' {quote(value)} has another size than 'shape'")
    return init_shape


def _torch(value: Any, where: str) -> tuple[str, str]:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and value[0]
        and value[1] in (*CONVERSIONS, NO_TORCH)
    ):
        raise InvalidArgument(
            f"{where}: 'torch' is [name, conversion], conversion one of {CONVERSIONS + (NO_TORCH,)}, got {quote(value)}"
        )
    return value[0], value[1]


def _key(value: Any, leaf: Leaf, where: str) -> tuple[Any, ...]:
    try:
        steps = derive_from_json(value)
        if steps and steps[-1][0] == "fold_in":
            Key(seed=0, derive=steps)  # its limits (steps, split and stack counts)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: 'key': {exc.message}") from None
    if not steps or steps[-1][0] != "fold_in":
        raise InvalidArgument(f"{where}: 'key' is the steps from the root key, the last a fold_in; got {quote(value)}")
    stack = tuple(step[1] for step in steps if step[0] == "stack")
    if (leaf.init_shape or leaf.shape)[: len(stack)] != stack:
        raise InvalidArgument(f"{where}: a key with stack steps {list(stack)} needs a shape that starts with them")
    return steps
