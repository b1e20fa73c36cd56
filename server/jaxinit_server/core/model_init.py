"""Whole-model init requests: a model description resolved into one request per tensor.

The expansion itself (module defaults, names, Flax's key derivation, the PyTorch
layout) is :mod:`jaxinit.protocol.model`, shared with the client; here each tensor
becomes an ordinary :class:`Resolved` request whose key carries its ``fold_in``,
so a model's tensors are exactly the single-tensor answers for the same requests.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from jaxinit.protocol.errors import InvalidArgument, JaxinitError, TooLarge
from jaxinit.protocol.keys import Key
from jaxinit.protocol.model import Output, expand, model_canonical, model_prng, outputs, plan_jit
from jaxinit.protocol.values import check_flag
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, Resolved, check_pin, resolve

__all__ = ["InitModelParams", "ResolvedModel", "resolve_model"]


@dataclass(frozen=True)
class InitModelParams:
    """A whole-model request as an adapter hands it over: plain values, not yet checked."""

    model: Any
    key: Key | None
    mode: Any = "linen"
    layout: Any = "flax"
    fix_rng_separator: Any = False
    param_dtype: Any = "float32"
    threefry_partitionable: bool | None = None
    enable_x64: bool | None = None
    jit: Any = False  # a jitted model.init: every tensor as jax.jit(init) makes it
    jax_version: Any = None  # pins, as GenerateParams' (checked once, before the description)
    backend: Any = None


@dataclass(frozen=True)
class ResolvedModel:
    """Every tensor of the answer, in order, each with its resolved request."""

    outputs: list[Output]
    requests: list[Resolved]
    root: Key
    mode: str
    layout: str
    canonical: str  # JSON naming each tensor and the digest of its request
    digest: str  # sha256 of canonical
    jit: bool = False  # asked as jax.jit(model.init) makes it (the request's jit, else the plan's)

    @functools.cached_property
    def nbytes(self) -> int:
        """All tensors' bytes (computed once: each tensor's header carries it, and summing per
        tensor made a model's streaming quadratic in its size)."""
        return sum(r.nbytes for r in self.requests)

    def plan(self) -> list[dict[str, Any]]:
        """The tensors as plain data: what each one is and how it is made."""
        return [
            {**o.describe(), "jit": r.jit, "request_digest": r.digest}  # jit: as made (a jitted model.init too)
            for o, r in zip(self.outputs, self.requests, strict=True)
        ]


def resolve_model(params: InitModelParams, limits: Limits, defaults: PrngDefaults) -> ResolvedModel:
    """Expand and validate a model request; every tensor's request is resolved.

    Raises:
        InvalidArgument (with the place in the description), UnknownInitializer, TooLarge.
    """
    check_pin(params.jax_version, params.backend, defaults)
    if params.key is None:
        raise InvalidArgument("a model needs a root key: give a seed or key data")
    jit = check_flag(params.jit, "jit") or plan_jit(params.model)  # an exported plan's default: jit when it says so
    expanded = expand(
        params.model, mode=params.mode, fix_rng_separator=params.fix_rng_separator, param_dtype=params.param_dtype
    )
    outs = outputs(expanded, params.layout)
    root = params.key
    prng = model_prng(outs, params.threefry_partitionable, params.enable_x64)
    requests: list[Resolved] = []
    total = 0
    for out in outs:
        p = out.param
        partitionable, x64 = prng(out)
        try:
            resolved = resolve(
                GenerateParams(
                    initializer=p.initializer,
                    shape=p.init_shape,
                    args=p.args,
                    dtype=p.dtype,
                    key=out.key(root),
                    threefry_partitionable=partitionable,
                    enable_x64=x64,
                    jit=jit or out.param.jit,
                    # no request_id: the tensor's name (up to 64 x 256 characters) goes with
                    # each of its messages instead, and a request_id's cap is not a name's
                ),
                limits,
                defaults,
            )
        except JaxinitError as exc:
            raise type(exc)(f"{_shown(out.name)}: {exc.message}") from None
        total += resolved.nbytes
        if total > limits.max_model_bytes:
            raise TooLarge(
                f"the model's tensors come to more than {limits.max_model_bytes} bytes, this server's limit "
                "per model request"
            )
        requests.append(resolved)
    pairs = [(o.name, r.digest) for o, r in zip(outs, requests, strict=True)]
    canonical, digest = model_canonical(params.layout, pairs)
    return ResolvedModel(
        outputs=outs,
        requests=requests,
        root=root,
        mode=params.mode,
        layout=params.layout,
        canonical=canonical,
        digest=digest,
        jit=jit,
    )


def _shown(name: str, limit: int = 200) -> str:
    """A tensor's name as a message quotes it: at most ``limit`` characters."""
    return name if len(name) <= limit else name[: limit - 3] + "..."
