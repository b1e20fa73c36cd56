"""Key derivation: a parsed description's parameters, in creation order, each with the key
Flax derives for it from the root key (see :mod:`jaxinit.protocol.model` for the rules)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.keys import Step
from jaxinit.protocol.model._base import MAX_PARAMS, MODES, Draw, Leaf, Node, is_list, relayed_dtype
from jaxinit.protocol.model.language import parse
from jaxinit.protocol.model.raw import is_raw, raw
from jaxinit.protocol.values import check_flag, quote

__all__ = ["DEFAULT_STREAMS", "Param", "expand", "linen_fold_in"]

DEFAULT_STREAMS = ("params",)


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

    @property
    def key_steps(self) -> tuple[Step, ...]:
        """Every step from the root key to this parameter's key (empty: it has none)."""
        return () if self.fold_in is None else (*self.key_prefix, ("fold_in", self.fold_in))


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
        raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {quote(mode)}")
    check_flag(fix_rng_separator, "fix_rng_separator")
    dtype = relayed_dtype(param_dtype)
    streams: tuple[str, ...] = DEFAULT_STREAMS
    if isinstance(description, Mapping) and "rng_streams" in description:
        description = dict(description)
        given = _streams(description.pop("rng_streams"))
        # linen: parameters always take the 'params' rng of init(rngs=...); streams are nnx's
        streams = given if mode == "nnx" else DEFAULT_STREAMS
    root = raw(description, dtype) if is_raw(description) else parse(description, "model", dtype, 0, mode)
    params: list[Param] = []
    _Walk(mode, fix_rng_separator, params, _Streams(streams)).module(root, ())
    if not params:
        raise InvalidArgument("model: the description has no parameters")
    counts = Counter(p.name for p in params)
    if len(counts) != len(params):
        dup = sorted(n for n, c in counts.items() if c > 1)
        raise InvalidArgument(f"model: parameter names repeat: {quote(dup)}")
    return params


def _streams(value: Any) -> tuple[str, ...]:
    if (
        not is_list(value)
        or not value
        or not all(isinstance(v, str) and v for v in value)
        or len(set(value)) != len(value)
    ):
        raise InvalidArgument(
            "model: 'rng_streams' must be a non-empty list of distinct stream names, as the model's nnx.Rngs has "
            f"them (['default'] for nnx.Rngs(0), ['params', 'dropout'] for nnx.Rngs(params=0, dropout=1)); got "
            f"{quote(value)}"
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
            f"{who} draw(s) from the {quote(stream)} rng stream, which the model's nnx.Rngs (rng_streams "
            f"{quote(list(self.names))}) lacks, with no 'default' stream to fall back on (Flax raises here "
            "too); name the model's streams in 'rng_streams' at its root"
        )

    def draw(self, item: Draw) -> None:
        if self.resolve(item.stream, f"{item.where}: the {item.kind}") == self.params:
            self.count += 1  # a shared stream: every later parameter's key moves on


@dataclass(frozen=True)
class _Stacked:
    """Inside a Scan: the key steps before each parameter's fold_in, whether its values are
    compiled ones, and where the layer index goes in a PyTorch name."""

    prefix: tuple[Step, ...] = ()
    jit: bool = False
    stack_at: int = 0
    traced_twice: bool = False  # linen's nn.scan: the first trace's counts are spent

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(step[1] for step in self.prefix if step[0] == "stack")


_PLAIN = _Stacked()


@dataclass
class _Walk:
    """The walk of a parsed tree that derives each parameter's key, in creation order."""

    mode: str
    fix: bool
    out: list[Param]
    streams: _Streams

    def module(self, node: Node, path: tuple[str, ...], stacked: _Stacked = _PLAIN) -> None:
        if node.type == "Scan":
            self.scan(node, path)
            return
        count = 0  # linen: parameters created in this module so far
        if stacked.traced_twice:
            # Flax traces a scanned body twice at init: each module's first-trace counts are spent
            count = sum(isinstance(item, Leaf) for _, item in node.items)
        for name, item in node.items:
            if isinstance(item, Node):
                self.module(item, (*path, name), stacked)
            elif isinstance(item, Draw):
                self.streams.draw(item)
            else:
                count += 1
                if len(self.out) >= MAX_PARAMS:
                    raise InvalidArgument(f"model: more than {MAX_PARAMS} parameters")
                self.out.append(self.param(item, (*path, name), node.type, count, stacked))

    def param(self, leaf: Leaf, path: tuple[str, ...], module: str, count: int, stacked: _Stacked) -> Param:
        """The parameter ``leaf`` declares, the ``count``-th of its module."""
        layers: tuple[int, ...] = ()
        module = leaf.module or module  # the raw form's, where it names one
        if leaf.key is not None:  # explicit (the raw form of an exported plan): as written
            key_prefix, fold, jit, stack_at = leaf.key[:-1], leaf.key[-1][1], leaf.jit, leaf.stack_at
        else:
            key_prefix, fold, layers = stacked.prefix, self.fold_in(path[:-1], count), stacked.layers
            jit, stack_at = stacked.jit or leaf.jit, stacked.stack_at
        return Param(
            path=path,
            initializer=leaf.init[0],
            args=leaf.init[1],
            shape=(*layers, *leaf.shape),
            init_shape=(*layers, *(leaf.init_shape or leaf.shape)),
            dtype=leaf.dtype,
            fold_in=fold,
            module=module,
            role=leaf.role,
            torch=leaf.torch,
            key_prefix=key_prefix,
            jit=jit,
            stack_at=stack_at,
        )

    def fold_in(self, path: tuple[str, ...], count: int) -> int:
        """What a derived parameter folds in: linen's path hash, nnx's next count."""
        if self.mode == "linen":
            return linen_fold_in((*path, count), fix_rng_separator=self.fix)
        fold = self.streams.count
        self.streams.count += 1
        return fold

    def scan(self, node: Node, path: tuple[str, ...]) -> None:
        """A Scan's layers: linen splits the root key (the path hash then tells the parameters
        apart); nnx splits one key drawn from the parameters' stream, counting from 0 in each layer."""
        inner = Node(node.stacks or "Module", node.items, node.cls)
        if self.mode == "linen":
            scan = node.transform == "scan"  # nn.scan: compiled, traced twice; nn.vmap: eager, once
            self.module(inner, path, _Stacked((("stack", node.length),), scan, len(path), scan))
            return
        drawn = self.streams.count
        self.streams.count = 0
        self.module(inner, path, _Stacked((("fold_in", drawn), ("stack", node.length)), False, len(path)))
        self.streams.count = drawn + 1
