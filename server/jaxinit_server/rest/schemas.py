"""Request bodies of the REST API, as the OpenAPI document shows them, and their
translation into the core's plain parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from jaxinit.protocol.keys import DEFAULT_IMPL, Key, derive_from_json
from jaxinit_server.core import GenerateParams, InitModelParams
from jaxinit_server.core.request import jit_option, pinned

__all__ = ["ErrorResponse", "GenerateBody", "KeyBody", "ModelBody", "PrngBody", "key_from_body"]


class KeyBody(BaseModel):
    """Exactly one of seed or data; impl defaults to threefry2x32."""

    model_config = ConfigDict(extra="forbid")
    seed: StrictInt | None = Field(None, description="jax.random.key(seed, impl=impl) on the server")
    data: list[StrictInt] | None = Field(None, description="raw key data: uint32 words")
    impl: str | None = Field(
        None, description="threefry2x32 (default), rbg, unsafe_rbg, threefry4x32, philox2x32, philox4x32"
    )
    fold_in: list[StrictInt] | None = Field(
        None, description="then jax.random.fold_in(key, x) for each uint32 x, in order"
    )
    derive: list[dict[str, Any]] | None = Field(
        None,
        description='then these steps, in order: {"fold_in": x}, {"split": [num, index]} '
        '(jax.random.split(key, num)[index]) or {"stack": num} (every key of jax.random.split(key, num), '
        "a batch: the tensor's shape starts with num, one slice per key, as jax.vmap of the initializer)",
        examples=[[{"split": [4, 2]}, {"fold_in": 7}]],
    )


class PrngBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threefry_partitionable: StrictBool | None = None
    enable_x64: StrictBool | None = Field(None, description="unset: true for 64-bit dtypes")
    jit: StrictBool | None = Field(None, description="the old spelling of the request's own jit, still read")


JIT = Field(
    None,
    description="the values jax.jit(init) gives, as inside nn.scan or a jitted model.init (XLA's fusion changes "
    "some bits of e.g. normal); false: the eager call's. Unset: prng.jit (its old spelling), else false "
    "(a model: else its plan's own jit)",
)

# The version pins, as every request body spells them.
JAX_VERSION = Field(
    None,
    description="answered only by this JAX version (exact, or a prefix on a dot boundary: 0.10 takes 0.10.2); "
    "else 412. The x-jaxinit-jax-version header pins too (a pooled deployment routes on it)",
    examples=["0.10.2"],
)
BACKEND = Field(None, description="answered only on this JAX backend (cpu, gpu, tpu); else 412")


class GenerateBody(BaseModel):
    """The same fields as the gRPC GenerateRequest."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"initializer": "lecun_normal", "shape": [784, 256], "key": {"seed": 42}}]},
    )
    initializer: str
    shape: list[StrictInt]
    args: dict[str, Any] = Field(default_factory=dict, description="factory arguments by name")
    dtype: str | None = None
    key: KeyBody | None = None
    prng: PrngBody | None = None
    jit: StrictBool | None = JIT
    request_id: str = ""
    offset: StrictInt | None = Field(None, description="first flat element of a range (default 0)")
    count: StrictInt | None = Field(None, description="flat elements in the range (default: to the end)")
    jax_version: str | None = JAX_VERSION
    backend: str | None = BACKEND

    def params(self, pin: str | None = None) -> GenerateParams:
        """The core's request; ``pin``: the x-jaxinit-jax-version header, if sent."""
        prng = self.prng or PrngBody()
        return GenerateParams(
            initializer=self.initializer,
            shape=self.shape,
            args=self.args,
            dtype=self.dtype,
            key=key_from_body(self.key),
            threefry_partitionable=prng.threefry_partitionable,
            enable_x64=prng.enable_x64,
            jit=bool(jit_option(self.jit, prng.jit)),
            request_id=self.request_id,
            offset=self.offset,
            count=self.count,
            jax_version=pinned(self.jax_version, pin),
            backend=self.backend,
        )


class ModelBody(BaseModel):
    """A whole model's initial parameters, as Flax's ``init`` makes them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": {
                        "type": "Sequential",
                        "layers": [
                            {"type": "Dense", "in_features": 784, "features": 256},
                            {"type": "Function", "fn": "relu"},
                            {"type": "Dense", "in_features": 256, "features": 10},
                        ],
                    },
                    "key": {"seed": 0},
                    "mode": "linen",
                    "layout": "torch",
                }
            ]
        },
    )
    model: dict[str, Any] = Field(description="a module description, or the raw form {'params': [...]}")
    key: KeyBody = Field(description="the root key, as passed to model.init / nnx.Rngs")
    mode: str = Field("linen", description="key derivation: linen (path hashing) or nnx (counter order)")
    layout: str = Field("flax", description="flax (Flax's tree and shapes) or torch (state_dict names, layouts)")
    fix_rng_separator: StrictBool = Field(False, description="linen: as flax_fix_rng_separator")
    param_dtype: str = Field("float32", description="default param_dtype of every module")
    prng: PrngBody | None = None
    jax_version: str | None = JAX_VERSION
    backend: str | None = BACKEND
    jit: StrictBool | None = JIT

    def params(self, pin: str | None = None) -> InitModelParams:
        """The core's request; ``pin``: the x-jaxinit-jax-version header, if sent."""
        prng = self.prng or PrngBody()
        return InitModelParams(
            model=self.model,
            key=key_from_body(self.key),
            mode=self.mode,
            layout=self.layout,
            fix_rng_separator=self.fix_rng_separator,
            param_dtype=self.param_dtype,
            threefry_partitionable=prng.threefry_partitionable,
            enable_x64=prng.enable_x64,
            jit=bool(jit_option(self.jit, prng.jit)),
            jax_version=pinned(self.jax_version, pin),
            backend=self.backend,
        )


class ErrorBody(BaseModel):
    code: str
    type: str
    message: str


class ErrorResponse(BaseModel):
    """jaxinit's error body, on every route but KServe's."""

    error: ErrorBody


def key_from_body(body: KeyBody | None) -> Key | None:
    if body is None:
        return None
    data = None if body.data is None else tuple(body.data)
    derive = derive_from_json(body.derive) if body.derive is not None else ()
    return Key(  # Key checks the combination
        seed=body.seed, data=data, impl=body.impl or DEFAULT_IMPL, fold_in=tuple(body.fold_in or ()), derive=derive
    )
