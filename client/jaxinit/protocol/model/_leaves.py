"""The module types that are leaves: each declares its parameters, in the order Flax
creates them, with their default initializers and PyTorch layout."""

from __future__ import annotations

import math
from collections.abc import Callable

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.model._base import (
    EMBED,
    HE_UNIFORM,
    LECUN_NORMAL,
    NO_TORCH,
    ONES,
    ZEROS,
    Leaf,
    Reader,
    parse_init,
)
from jaxinit.protocol.values import quote


def dense(r: Reader, dtype: str) -> list[Leaf]:
    inp, out = r.integer("in_features"), r.integer("features")
    leaves = [Leaf("kernel", r.init("kernel_init", LECUN_NORMAL), (inp, out), dtype, torch=("weight", "t"))]
    if r.flag("use_bias", True):
        leaves.append(Leaf("bias", r.init("bias_init", ZEROS), (out,), dtype, torch=("bias", "")))
    return leaves


def _dense_general(r: Reader, dtype: str) -> list[Leaf]:
    # flax: the kernel is initialised as (prod(in), prod(out)) and reshaped; the bias flat.
    inp, out = r.integers("in_features"), r.integers("features")
    kernel = Leaf(
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
            Leaf("bias", r.init("bias_init", ZEROS), out, dtype, init_shape=(math.prod(out),), torch=("bias", "flat"))
        )
    return leaves


def _conv(r: Reader, dtype: str) -> list[Leaf]:
    inp, out = r.integer("in_features"), r.integer("features")
    size = r.integers("kernel_size")
    groups = r.integer("feature_group_count", 1)
    if inp % groups or out % groups:
        raise InvalidArgument(
            f"{r.where}: in_features {quote(inp)} and features {quote(out)} must both be multiples of "
            f"feature_group_count {quote(groups)}"
        )
    kernel = Leaf(
        "kernel", r.init("kernel_init", LECUN_NORMAL), (*size, inp // groups, out), dtype, torch=("weight", "conv")
    )
    leaves = [kernel]
    if r.flag("use_bias", True):
        leaves.append(Leaf("bias", r.init("bias_init", ZEROS), (out,), dtype, torch=("bias", "")))
    return leaves


def _conv_transpose(r: Reader, dtype: str) -> list[Leaf]:
    """``nn.ConvTranspose`` / ``nnx.ConvTranspose``: kernel (*kernel_size, in, features), or
    (*kernel_size, features, in) with ``transpose_kernel``. No PyTorch layout: torch's
    ConvTranspose computes with the kernel flipped, which jaxinit has not verified."""
    inp, out = r.integer("in_features"), r.integer("features")
    size = r.integers("kernel_size")
    shape = (*size, out, inp) if r.flag("transpose_kernel", False) else (*size, inp, out)
    leaves = [Leaf("kernel", r.init("kernel_init", LECUN_NORMAL), shape, dtype, torch=("", NO_TORCH))]
    if r.flag("use_bias", True):
        leaves.append(Leaf("bias", r.init("bias_init", ZEROS), (out,), dtype, torch=("", NO_TORCH)))
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
            f"kernel axis on the right ({len(kernel)} for kernel_shape {list(kernel)}), got {quote(einsum_str)}"
        )
    rhs = parts[1]
    if len(set(rhs)) != len(rhs):
        raise InvalidArgument(f"{where}: the kernel's letters in 'einsum_str' must differ, got {quote(einsum_str)}")
    return tuple(kernel[rhs.index(c)] for c in result if c in rhs)


def einsum(r: Reader, dtype: str, mode: str) -> list[Leaf]:
    """``nn.Einsum(shape, einsum_str, use_bias=True)`` (bias shape read from the equation)
    or ``nnx.Einsum(einsum_str, kernel_shape, bias_shape=None)`` (a bias only when given)."""
    kernel = r.integers("kernel_shape")
    einsum_str = r.get("einsum_str", None)
    if einsum_str is not None and not isinstance(einsum_str, str):
        raise InvalidArgument(f"{r.where}: 'einsum_str' must be a string, got {quote(einsum_str)}")
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
    leaves = [Leaf("kernel", r.init("kernel_init", LECUN_NORMAL), kernel, dtype, torch=("kernel", ""))]
    if bias is not None:
        leaves.append(Leaf("bias", r.init("bias_init", ZEROS), bias, dtype, torch=("bias", "")))
    return leaves


def _lora(r: Reader, dtype: str) -> list[Leaf]:
    """``nnx.LoRA(in_features, lora_rank, out_features)``: lora_a (in, rank) he_uniform,
    lora_b (rank, out) zeros, kept under their own names in the PyTorch layout."""
    inp, rank, out = r.integer("in_features"), r.integer("lora_rank"), r.integer("out_features")
    return [
        Leaf("lora_a", r.init("a_initializer", HE_UNIFORM), (inp, rank), dtype, torch=("lora_a", "")),
        Leaf("lora_b", r.init("b_initializer", ZEROS), (rank, out), dtype, torch=("lora_b", "")),
    ]


def _embed(r: Reader, dtype: str) -> list[Leaf]:
    num, features = r.integer("num_embeddings"), r.integer("features")
    return [Leaf("embedding", r.init("embedding_init", EMBED), (num, features), dtype, torch=("weight", ""))]


def _norm(*, bias: bool, groups: bool = False) -> Callable[[Reader, str], list[Leaf]]:
    def leaves(r: Reader, dtype: str) -> list[Leaf]:
        features = r.integer("features")
        if groups:
            num_groups = r.integer("num_groups", 32)
            if features % num_groups:
                raise InvalidArgument(
                    f"{r.where}: features {quote(features)} must be a multiple of num_groups {quote(num_groups)}"
                )
        out = []
        if r.flag("use_scale", True):
            out.append(Leaf("scale", r.init("scale_init", ONES), (features,), dtype, torch=("weight", "")))
        if bias and r.flag("use_bias", True):
            out.append(Leaf("bias", r.init("bias_init", ZEROS), (features,), dtype, torch=("bias", "")))
        return out

    return leaves


def _param(r: Reader, dtype: str) -> list[Leaf]:
    name = r.node.get("name")
    shape = r.shape("shape")
    value = r.get("initializer")
    if value is None:
        raise InvalidArgument(f"{r.where}: 'initializer' is required (a registry name)")
    args = r.get("args")
    init = parse_init(value if args is None else {"initializer": value, "args": args}, r.where)
    # A Param's name is checked (a non-empty string) where it is placed, among a Module's children.
    name = name if isinstance(name, str) else ""
    return [Leaf(name, init, shape, dtype, torch=(name, ""))]


# Module type -> its parameters, in the order Flax creates them (Einsum, which reads the
# mode too, is the language's).
LEAF_MODULES: dict[str, Callable[[Reader, str], list[Leaf]]] = {
    "Dense": dense,
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
