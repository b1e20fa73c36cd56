"""Layouts: the tensors a model's parameters become, named and shaped as Flax holds them
or as PyTorch's modules do, and how a generated array becomes each."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol.codec import SIXTY_FOUR_BIT
from jaxinit.protocol.errors import InvalidArgument, ProtocolError
from jaxinit.protocol.keys import Key, derive_from_json, step_json
from jaxinit.protocol.model._base import CONVERSIONS, LAYOUTS, MAX_PARAMS, NO_TORCH
from jaxinit.protocol.model.derive import Param
from jaxinit.protocol.values import quote

__all__ = ["RESERVED_NAME", "Output", "model_prng", "nest", "outputs"]


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


@dataclass(frozen=True)
class Output:
    """One tensor of the result: which parameter makes it, its name and shape there, and
    how the generated array becomes it (a reshape, and in the PyTorch layout a transpose).
    """

    name: str
    param: Param
    shape: tuple[int, ...]
    convert: str = ""  # one of CONVERSIONS

    @property
    def dtype(self) -> str:
        return self.param.dtype

    @property
    def keyed(self) -> bool:
        """False for PyTorch's BatchNorm buffers: constants, whatever the key and PRNG settings."""
        return self.param.fold_in is not None

    def key(self, root: Key) -> Key | None:
        """This tensor's key: the root key (with whatever steps derived it), then the
        parameter's key steps (a stacked layer's split, then its ``fold_in``)."""
        if self.param.fold_in is None:
            return None
        return Key(seed=root.seed, data=root.data, impl=root.impl, steps=(*root.steps, *self.param.key_steps))

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
            if convert not in CONVERSIONS:
                raise ValueError(f"unknown conversion {convert!r}")
            return cls(str(entry["name"]), param, tuple(int(d) for d in entry["shape"]), convert)
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ProtocolError(f"a model plan entry this client cannot read ({exc!r}): {dict(entry)!r:.200}") from None

    def finish(self, generated: np.ndarray) -> np.ndarray:
        """The delivered array from what the initializer returned (its ``init_shape``)."""
        if not self.needs_whole:
            return np.ascontiguousarray(generated).reshape(self.shape)  # Flax's own reshape: the bytes stay
        out = np.empty(self.shape, generated.dtype)
        view = self.arranged(out)
        view[...] = generated.reshape(view.shape)
        return out

    def arranged(self, out: np.ndarray) -> np.ndarray:
        """``out`` (the delivered array: C-contiguous, of :attr:`shape`) seen in the order the
        initializer makes its elements: a view of it whose C order is the generated one, so
        that writing the generated elements into it, in order (whole, or piece by piece as
        they are made), lays them out: a Dense kernel (in, out) is PyTorch's (out, in), a
        Conv kernel (*spatial, in, out) its (out, in, *spatial), a DenseGeneral kernel the
        transposed 2-D weight over its flattened feature axes."""
        if out.shape != self.shape or not out.flags.c_contiguous:
            raise ValueError(f"{self.name}: a C-contiguous array of shape {list(self.shape)} is needed")
        shape = self.param.shape
        if self.convert == "t":
            return out.reshape(shape[::-1]).T
        if self.convert == "conv":
            rank = len(shape)
            order = (rank - 1, rank - 2, *range(rank - 2))
            return out.reshape(tuple(shape[i] for i in order)).transpose([order.index(i) for i in range(rank)])
        if self.convert == "flat_t":
            return out.reshape(self.param.init_shape[::-1]).T
        return out.reshape(shape)


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
        raise InvalidArgument(f"layout must be one of {', '.join(LAYOUTS)}, got {quote(layout)}")
    if layout == "flax":
        return _distinct([(Output(p.name, p, p.shape), quote(p.name)) for p in params], layout)
    tensors = sum(math.prod(step[1] for step in p.key_prefix if step[0] == "stack") for p in params)
    if tensors > MAX_PARAMS:  # before any is made: each stacked layer is a tensor of its own here
        raise InvalidArgument(
            f"model: in the torch layout its stacked layers make {tensors} tensors, more than {MAX_PARAMS}; "
            "ask for layout 'flax'"
        )
    out: list[tuple[Output, str]] = []  # each with the parameter it comes from, for messages
    buffers_done: set[str] = set()
    for p, source in _unstacked(params):
        leaf, how = p.torch
        dot = ".".join(p.path[:-1]) + "." if len(p.path) > 1 else ""
        out.append((Output(dot + leaf, p, _torch_shape(p, how), how), source))
        if p.module == "BatchNorm" and dot not in buffers_done:
            buffers_done.add(dot)
            out += [(buffer, f"{source}'s BatchNorm buffer") for buffer in _batch_norm_buffers(p, dot)]
    return _distinct(out, layout)


def _torch_shape(p: Param, how: str) -> tuple[int, ...]:
    """The shape of ``p`` in the PyTorch layout, made by conversion ``how``."""
    if how == NO_TORCH:
        raise InvalidArgument(
            f"model: {quote(p.name)}: a {p.module}'s parameters have no PyTorch layout jaxinit has verified; ask for "
            "layout 'flax' and arrange them yourself"
        )
    shape = p.shape
    if how == "conv" and len(shape) < 2:
        raise InvalidArgument(
            f"model: {quote(p.name)}: the torch conversion 'conv' moves the last two axes first; the parameter "
            f"has shape {list(shape)[:8]}, fewer than 2 dimensions"
        )
    if how == "t":
        return shape[::-1]
    if how == "conv":
        return (shape[-1], shape[-2], *shape[:-2])
    if how == "flat_t":
        return p.init_shape[::-1]
    if how == "flat":
        return (math.prod(shape),)
    return shape


def _batch_norm_buffers(p: Param, dot: str) -> list[Output]:
    """PyTorch's BatchNorm buffers beside a BatchNorm's parameter ``p``: constants, no key."""
    buffers = []
    for name, init, dtype, shape in (
        ("running_mean", "zeros", "float32", p.shape),
        ("running_var", "ones", "float32", p.shape),
        ("num_batches_tracked", "zeros", "int64", ()),
    ):
        buffer = Param((*p.path[:-1], name), init, {}, shape, shape, dtype, None, "BatchNorm", name)
        buffers.append(Output(dot + name, buffer, shape))
    return buffers


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
                f"model: {first} and {source} would both be the tensor {quote(out.name)} in the {layout} "
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
            yield p, quote(p.name)
            continue
        if len(stacks) > 1:
            raise InvalidArgument(
                f"model: {quote(p.name)}: stacked twice (a scan in a scan) has no PyTorch layout; ask for 'flax'"
            )
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
                f"layer {i} of {quote(p.name)}",
            )
