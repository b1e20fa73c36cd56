"""A Python builder for model descriptions: plain dicts, the same documents as the JSON form.

>>> mlp = Sequential(Dense(784, 256), Function("relu"), Dense(256, 10))
>>> mlp["layers"][0]
{'type': 'Dense', 'in_features': 784, 'features': 256}
>>> Dense(4, 2, kernel_init=init("normal", stddev=0.02))["kernel_init"]
{'initializer': 'normal', 'args': {'stddev': 0.02}}

Every module takes ``name`` (linen names unnamed children ``Dense_0``, ``Dense_1``,
... as Flax does), ``param_dtype`` and its parameters' initializers
(``kernel_init``, ``bias_init``, ``scale_init``, ``embedding_init``), with Flax's
defaults when left out. Dimensions are explicit, as in ``flax.nnx`` and PyTorch:
``in_features`` is the size of the axis the layer contracts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxinit.protocol.model import MODULE_TYPES, expand, linen_fold_in, outputs

__all__ = [
    "MODULE_TYPES",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Dense",
    "DenseGeneral",
    "Dropout",
    "Einsum",
    "Embed",
    "Function",
    "GroupNorm",
    "LayerNorm",
    "LoRA",
    "LoRALinear",
    "Module",
    "MultiHeadAttention",
    "Param",
    "RMSNorm",
    "Scan",
    "Sequential",
    "expand",
    "init",
    "linen_fold_in",
    "outputs",
    "raw",
]


def init(name: str, **args: Any) -> dict[str, Any]:
    """An initializer override: ``init("variance_scaling", scale=2.0, mode="fan_out")``."""
    return {"initializer": name, "args": args}


def _module(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if v is not None}}


def Dense(in_features: int, features: int, *, use_bias: bool | None = None, **common: Any) -> dict[str, Any]:
    """``nn.Dense`` / ``nnx.Linear``: kernel (in, features) lecun_normal, bias zeros."""
    return _module("Dense", in_features=in_features, features=features, use_bias=use_bias, **common)


def DenseGeneral(
    in_features: int | Sequence[int], features: int | Sequence[int], *, use_bias: bool | None = None, **common: Any
) -> dict[str, Any]:
    """``nn.DenseGeneral`` / ``nnx.LinearGeneral`` over the trailing ``in_features`` axes."""
    return _module("DenseGeneral", in_features=in_features, features=features, use_bias=use_bias, **common)


def Conv(
    in_features: int,
    features: int,
    kernel_size: int | Sequence[int],
    *,
    feature_group_count: int | None = None,
    use_bias: bool | None = None,
    **common: Any,
) -> dict[str, Any]:
    """``nn.Conv`` / ``nnx.Conv``: kernel (*kernel_size, in / groups, features)."""
    return _module(
        "Conv",
        in_features=in_features,
        features=features,
        kernel_size=kernel_size,
        feature_group_count=feature_group_count,
        use_bias=use_bias,
        **common,
    )


def ConvTranspose(
    in_features: int,
    features: int,
    kernel_size: int | Sequence[int],
    *,
    transpose_kernel: bool | None = None,
    use_bias: bool | None = None,
    **common: Any,
) -> dict[str, Any]:
    """``nn.ConvTranspose`` / ``nnx.ConvTranspose``: kernel (*kernel_size, in, features), or
    (*kernel_size, features, in) with ``transpose_kernel``. Flax layout only."""
    return _module(
        "ConvTranspose",
        in_features=in_features,
        features=features,
        kernel_size=kernel_size,
        transpose_kernel=transpose_kernel,
        use_bias=use_bias,
        **common,
    )


def Einsum(
    kernel_shape: Sequence[int],
    einsum_str: str | None = None,
    *,
    bias_shape: Sequence[int] | None = None,
    use_bias: bool | None = None,
    **common: Any,
) -> dict[str, Any]:
    """``nn.Einsum(shape, einsum_str)`` (linen: a bias over the kernel axes the result
    keeps, unless ``use_bias=False``) / ``nnx.Einsum(einsum_str, kernel_shape, bias_shape)``
    (nnx: a bias only when ``bias_shape`` is given)."""
    return _module(
        "Einsum",
        kernel_shape=kernel_shape,
        einsum_str=einsum_str,
        bias_shape=bias_shape,
        use_bias=use_bias,
        **common,
    )


def LoRA(in_features: int, lora_rank: int, out_features: int, **common: Any) -> dict[str, Any]:
    """``nnx.LoRA``: lora_a (in, rank) he_uniform, lora_b (rank, out) zeros
    (``a_initializer``/``b_initializer`` override them)."""
    return _module("LoRA", in_features=in_features, lora_rank=lora_rank, out_features=out_features, **common)


def LoRALinear(in_features: int, features: int, *, lora_rank: int, **common: Any) -> dict[str, Any]:
    """``nnx.LoRALinear``: a Linear's kernel and bias, then a LoRA child named ``lora``."""
    return _module("LoRALinear", in_features=in_features, features=features, lora_rank=lora_rank, **common)


def Embed(num_embeddings: int, features: int, **common: Any) -> dict[str, Any]:
    """``nn.Embed`` / ``nnx.Embed``: embedding (num_embeddings, features)."""
    return _module("Embed", num_embeddings=num_embeddings, features=features, **common)


def LayerNorm(
    features: int, *, use_scale: bool | None = None, use_bias: bool | None = None, **common: Any
) -> dict[str, Any]:
    return _module("LayerNorm", features=features, use_scale=use_scale, use_bias=use_bias, **common)


def RMSNorm(features: int, *, use_scale: bool | None = None, **common: Any) -> dict[str, Any]:
    return _module("RMSNorm", features=features, use_scale=use_scale, **common)


def BatchNorm(
    features: int, *, use_scale: bool | None = None, use_bias: bool | None = None, **common: Any
) -> dict[str, Any]:
    return _module("BatchNorm", features=features, use_scale=use_scale, use_bias=use_bias, **common)


def GroupNorm(
    features: int, num_groups: int = 32, *, use_scale: bool | None = None, use_bias: bool | None = None, **common: Any
) -> dict[str, Any]:
    return _module(
        "GroupNorm", features=features, num_groups=num_groups, use_scale=use_scale, use_bias=use_bias, **common
    )


def MultiHeadAttention(
    in_features: int,
    num_heads: int,
    *,
    qkv_features: int | None = None,
    out_features: int | None = None,
    use_bias: bool | None = None,
    cls: str | None = None,
    **common: Any,
) -> dict[str, Any]:
    """``nn.MultiHeadAttention`` / ``nnx.MultiHeadAttention``: query, key, value, out.

    ``cls``: the linen class, for the automatic name of an unnamed one:
    ``"MultiHeadDotProductAttention"`` or ``"SelfAttention"`` (same parameters; default
    ``MultiHeadAttention``). In nnx, ``dropout_rate > 0`` (given in ``common``) takes one
    count from the ``dropout`` stream after its parameters (unless ``keep_rngs=False``),
    as Flax does."""
    return _module(
        "MultiHeadAttention",
        in_features=in_features,
        num_heads=num_heads,
        qkv_features=qkv_features,
        out_features=out_features,
        use_bias=use_bias,
        **common,
        **({"class": cls} if cls else {}),
    )


def Dropout(
    rate: float = 0.5, *, rngs: bool = False, rng_collection: str | None = None, **common: Any
) -> dict[str, Any]:
    """``nn.Dropout`` / ``nnx.Dropout``: no parameters. In nnx, ``rngs=True`` (as
    ``nnx.Dropout(rate, rngs=rngs)``) takes one count from its stream at construction,
    which shifts every later parameter's key when the stream is the parameters' own
    (``nnx.Rngs(0)``); the model's root then names its streams in ``rng_streams``."""
    return _module("Dropout", rate=rate, rngs=rngs or None, rng_collection=rng_collection, **common)


def Function(fn: str = "") -> dict[str, Any]:
    """A parameter-free layer of a Sequential (``nn.relu``): it takes a position, nothing else."""
    return _module("Function", fn=fn or None)


def Sequential(*layers: dict[str, Any], **common: Any) -> dict[str, Any]:
    """``nn.Sequential`` (layers named layers_0, ...) / ``nnx.Sequential`` (layers.0, ...)."""
    return _module("Sequential", layers=list(layers), **common)


def Scan(module: dict[str, Any], length: int, **common: Any) -> dict[str, Any]:
    """``length`` copies of ``module`` stacked on a leading axis of every parameter.

    linen: ``nn.scan(Block, variable_axes={'params': 0}, split_rngs={'params': True},
    length=length)`` (unnamed: ``ScanBlock_0``); nnx: the layers a constructor makes under
    ``nnx.split_rngs(splits=length)`` and ``nnx.vmap``. In the torch layout each layer is
    its own module, ``<scan>.<i>.<...>``, as an ``nn.ModuleList`` holds it. linen's
    ``nn.vmap`` (same arguments): ``transform="vmap"``."""
    return _module("Scan", module=module, length=length, **common)


def Module(*children: dict[str, Any], cls: str | None = None, **common: Any) -> dict[str, Any]:
    """A composite module whose children are created in this order; ``cls`` names it for
    linen's automatic names (``Block`` -> ``Block_0``) when it has no ``name``."""
    return _module("Module", children=list(children), **{"class": cls}, **common)


def Param(
    name: str,
    initializer: str | dict[str, Any],
    shape: Sequence[int],
    *,
    args: dict[str, Any] | None = None,
    param_dtype: str | None = None,
) -> dict[str, Any]:
    """A parameter a Module creates itself (``self.param(name, init, shape)``), among its children."""
    return _module("Param", name=name, initializer=initializer, shape=shape, args=args, param_dtype=param_dtype)


def raw(*params: dict[str, Any]) -> dict[str, Any]:
    """The raw form: ``raw({"path": "encoder.kernel", "initializer": "lecun_normal", "shape": [4, 2]})``."""
    return {"params": list(params)}
