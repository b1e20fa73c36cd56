"""jaxinit.protocol.model._leaves: what each leaf module type declares (its parameters in
Flax's creation order, their shapes, default initializers and PyTorch layout), called
directly on one node; and what it refuses, by place. JAX-free."""

from __future__ import annotations

from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.model._base import EMBED, NO_TORCH, Leaf, Reader
from jaxinit.protocol.model._leaves import LEAF_MODULES, dense, einsum

WHERE = "model.children[2]"


def declare(kind: str, dtype: str = "float32", **fields: Any) -> list[Leaf]:
    r = Reader({"type": kind, **fields}, WHERE)
    leaves = LEAF_MODULES[kind](r, dtype)
    r.done()  # what the type read is every field given
    return leaves


def summary(leaves: list[Leaf]) -> list[tuple[Any, ...]]:
    return [(leaf.role, leaf.init, leaf.shape, leaf.init_shape, leaf.torch) for leaf in leaves]


def refused(kind: str, **fields: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        declare(kind, **fields)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: ")
    return message[len(WHERE) + 2 :]


def test_the_leaf_types() -> None:
    assert list(LEAF_MODULES) == [
        "Dense",
        "DenseGeneral",
        "Conv",
        "ConvTranspose",
        "LoRA",
        "Embed",
        "LayerNorm",
        "RMSNorm",
        "BatchNorm",
        "GroupNorm",
        "Param",
    ]


def test_dense_is_a_kernel_then_a_bias_in_the_dtype_given() -> None:
    leaves = declare("Dense", "bfloat16", in_features=4, features=3)
    assert summary(leaves) == [
        ("kernel", ("lecun_normal", {}), (4, 3), None, ("weight", "t")),
        ("bias", ("zeros", {}), (3,), None, ("bias", "")),
    ]
    assert {leaf.dtype for leaf in leaves} == {"bfloat16"}
    assert all(leaf.key is None and not leaf.jit and leaf.stack_at == 0 for leaf in leaves)
    assert dense is LEAF_MODULES["Dense"]


def test_dense_without_bias_and_with_its_own_initializers() -> None:
    assert summary(declare("Dense", in_features=2, features=5, use_bias=False, kernel_init="he_normal")) == [
        ("kernel", ("he_normal", {}), (2, 5), None, ("weight", "t"))
    ]
    leaves = declare("Dense", in_features=2, features=5, bias_init={"initializer": "constant", "args": {"value": 0.1}})
    assert leaves[1].init == ("constant", {"value": 0.1})


def test_dense_needs_its_sizes() -> None:
    assert refused("Dense", features=3) == "'in_features' is required (an int >= 1)"
    assert refused("Dense", in_features=2, features=0) == "'features' must be an int >= 1, got 0"
    assert refused("Dense", in_features=2, features=3, use_bias="no") == "'use_bias' must be true or false, got 'no'"


def test_dense_general_is_made_2d_and_reshaped() -> None:
    assert summary(declare("DenseGeneral", in_features=[2, 3], features=[4, 5])) == [
        ("kernel", ("lecun_normal", {}), (2, 3, 4, 5), (6, 20), ("weight", "flat_t")),
        ("bias", ("zeros", {}), (4, 5), (20,), ("bias", "flat")),
    ]
    assert summary(declare("DenseGeneral", in_features=7, features=3, use_bias=False)) == [
        ("kernel", ("lecun_normal", {}), (7, 3), (7, 3), ("weight", "flat_t")),
    ]
    assert refused("DenseGeneral", in_features=[], features=3) == (
        "'in_features' must be a positive int or a non-empty list of them, got []"
    )


def test_conv_kernel_is_spatial_then_in_per_group_then_out() -> None:
    assert summary(declare("Conv", in_features=4, features=6, kernel_size=[3, 2], feature_group_count=2)) == [
        ("kernel", ("lecun_normal", {}), (3, 2, 2, 6), None, ("weight", "conv")),
        ("bias", ("zeros", {}), (6,), None, ("bias", "")),
    ]
    assert declare("Conv", in_features=3, features=8, kernel_size=5)[0].shape == (5, 3, 8)  # an int: one axis


@pytest.mark.parametrize(("inp", "out"), [(4, 6), (6, 4)])
def test_conv_groups_must_divide_both_feature_counts(inp: int, out: int) -> None:
    fields = {"in_features": inp, "features": out, "kernel_size": 3, "feature_group_count": 4}
    assert refused("Conv", **fields) == (
        f"in_features {inp} and features {out} must both be multiples of feature_group_count 4"
    )


def test_conv_transpose_has_no_torch_layout_and_may_transpose_its_kernel() -> None:
    fields = {"in_features": 4, "features": 6, "kernel_size": [3, 2]}
    assert summary(declare("ConvTranspose", **fields)) == [
        ("kernel", ("lecun_normal", {}), (3, 2, 4, 6), None, ("", NO_TORCH)),
        ("bias", ("zeros", {}), (6,), None, ("", NO_TORCH)),
    ]
    assert declare("ConvTranspose", **fields, transpose_kernel=True)[0].shape == (3, 2, 6, 4)


def test_lora_is_a_then_b() -> None:
    assert summary(declare("LoRA", in_features=3, lora_rank=2, out_features=5)) == [
        ("lora_a", ("he_uniform", {}), (3, 2), None, ("lora_a", "")),
        ("lora_b", ("zeros", {}), (2, 5), None, ("lora_b", "")),
    ]
    leaves = declare("LoRA", in_features=3, lora_rank=2, out_features=5, b_initializer="ones")
    assert leaves[1].init == ("ones", {})


def test_embed_is_flaxs_variance_scaling_over_axis_0() -> None:
    (leaf,) = declare("Embed", num_embeddings=10, features=4)
    assert summary([leaf]) == [("embedding", EMBED, (10, 4), None, ("weight", ""))]
    assert leaf.init[1] is not EMBED[1]  # a copy: a caller may not change the default


@pytest.mark.parametrize("kind", ["LayerNorm", "BatchNorm", "GroupNorm"])
def test_a_norm_is_scale_then_bias(kind: str) -> None:
    assert summary(declare(kind, features=64)) == [
        ("scale", ("ones", {}), (64,), None, ("weight", "")),
        ("bias", ("zeros", {}), (64,), None, ("bias", "")),
    ]
    assert [leaf.role for leaf in declare(kind, features=64, use_scale=False)] == ["bias"]
    assert [leaf.role for leaf in declare(kind, features=64, use_bias=False)] == ["scale"]


def test_rms_norm_has_a_scale_and_no_bias_field() -> None:
    assert summary(declare("RMSNorm", features=8)) == [("scale", ("ones", {}), (8,), None, ("weight", ""))]
    assert declare("RMSNorm", features=8, use_scale=False) == []
    assert refused("RMSNorm", features=8, use_bias=False).startswith("unknown field(s) ['use_bias'] for RMSNorm;")


def test_group_norm_features_are_a_multiple_of_its_groups() -> None:
    assert refused("GroupNorm", features=10) == "features 10 must be a multiple of num_groups 32"  # Flax's default
    assert declare("GroupNorm", features=10, num_groups=5)[0].shape == (10,)
    assert refused("GroupNorm", features=10, num_groups=0) == "'num_groups' must be an int >= 1, got 0"


def test_param_is_one_leaf_under_its_own_name() -> None:
    fields = {"name": "w", "shape": [2, 0], "initializer": "constant", "args": {"value": 0.5}}
    assert summary(declare("Param", **fields)) == [("w", ("constant", {"value": 0.5}), (2, 0), None, ("w", ""))]
    assert summary(declare("Param", shape=[], initializer="zeros")) == [("", ("zeros", {}), (), None, ("", ""))]


def test_param_needs_a_shape_and_an_initializer() -> None:
    assert refused("Param", name="w", shape=[2]) == "'initializer' is required (a registry name)"
    assert refused("Param", name="w", initializer="zeros") == (
        "'shape' must be a sequence of non-negative ints, got None"
    )
    assert refused("Param", name="w", shape=[2], initializer="normal", args=[1]) == "'args' must be an object, got [1]"


def einsum_leaves(mode: str, **fields: Any) -> list[tuple[str, tuple[int, ...]]]:
    r = Reader({"type": "Einsum", **fields}, WHERE)
    leaves = einsum(r, "float32", mode)
    r.done()
    return [(leaf.role, leaf.shape) for leaf in leaves]


def einsum_refused(mode: str, **fields: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        einsum_leaves(mode, **fields)
    return str(caught.value).removeprefix(f"{WHERE}: ")


def test_linen_einsum_reads_its_bias_shape_from_the_equation() -> None:
    # the kernel's axes left in the result, in the result's order; spaces and the lhs's ellipsis are fine
    assert einsum_leaves("linen", kernel_shape=[2, 3, 4], einsum_str="...i, ijk -> ...kj") == [
        ("kernel", (2, 3, 4)),
        ("bias", (4, 3)),
    ]
    assert einsum_leaves("linen", kernel_shape=[5, 3], einsum_str="bi,ij->bj", use_bias=False) == [("kernel", (5, 3))]
    # a reduction over every kernel axis leaves a scalar bias
    assert einsum_leaves("linen", kernel_shape=[5], einsum_str="bi,i->b") == [("kernel", (5,)), ("bias", ())]


@pytest.mark.parametrize("equation", ["bi,ij", "bij->bj", "bi,...j->bj", "bi,ijk->bj", "a,b,c->a"])
def test_an_equation_einsum_cannot_read_is_refused(equation: str) -> None:
    assert einsum_refused("linen", kernel_shape=[2, 3], einsum_str=equation) == (
        "'einsum_str' must read 'lhs,rhs->result' (explicit, as Flax requires) with one letter per kernel axis "
        f"on the right (2 for kernel_shape [2, 3]), got {equation!r}"
    )


def test_linen_einsums_own_refusals() -> None:
    assert einsum_refused("linen", kernel_shape=[2, 2], einsum_str="bi,ii->bi") == (
        "the kernel's letters in 'einsum_str' must differ, got 'bi,ii->bi'"
    )
    assert einsum_refused("linen", kernel_shape=[2, 3]) == "linen's Einsum needs 'einsum_str'"
    assert einsum_refused("linen", kernel_shape=[2, 3], einsum_str="bi,ij->bj", bias_shape=[3]) == (
        "linen's Einsum has no 'bias_shape' (it reads it from 'einsum_str')"
    )
    # without a bias the equation is checked all the same
    assert einsum_refused("linen", kernel_shape=[2, 3], einsum_str="bi,ijk->bj", use_bias=False).startswith(
        "'einsum_str' must read"
    )
    assert einsum_refused("linen", kernel_shape=[2, 3], einsum_str=5) == "'einsum_str' must be a string, got 5"


def test_nnx_einsum_has_a_bias_only_when_given_its_shape() -> None:
    assert einsum_leaves("nnx", kernel_shape=[2, 3], einsum_str="bi,ij->bj") == [("kernel", (2, 3))]
    assert einsum_leaves("nnx", kernel_shape=[2, 3], bias_shape=[3]) == [("kernel", (2, 3)), ("bias", (3,))]
    assert einsum_refused("nnx", kernel_shape=[2, 3], use_bias=True) == (
        "nnx's Einsum has no 'use_bias'; it has a bias when given 'bias_shape'"
    )
    assert einsum_refused("nnx", kernel_shape=[2, 3], einsum_str="bad", bias_shape=[3]).startswith(
        "'einsum_str' must read 'lhs,rhs->result'"
    )
