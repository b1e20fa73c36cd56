"""jaxinit.v1 messages to the core's requests and back: translation only, no rules."""

from __future__ import annotations

from typing import Any

from jaxinit.protocol.errors import InvalidArgument, JaxinitError, mapping_for
from jaxinit.protocol.keys import DEFAULT_IMPL, Key
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit_server import jsonio
from jaxinit_server.core import GenerateParams, InitModelParams, TensorStream
from jaxinit_server.core.request import jit_option, pinned

__all__ = [
    "error_to_proto",
    "header_to_proto",
    "key_from_proto",
    "model_params_from_proto",
    "params_from_proto",
    "value_from_proto",
]


def key_from_proto(message: pb.Key) -> Key | None:
    form = message.WhichOneof("form")
    impl = message.impl or DEFAULT_IMPL
    folds = tuple(message.fold_in)
    derive = tuple(_step_from_proto(step) for step in message.derive)
    if form == "seed":
        return Key(seed=message.seed, impl=impl, fold_in=folds, derive=derive)
    if form == "data":
        return Key(data=tuple(message.data.words), impl=impl, fold_in=folds, derive=derive)
    return None


def _step_from_proto(step: pb.KeyStep) -> tuple[Any, ...]:
    kind = step.WhichOneof("step")
    if kind == "fold_in":
        return ("fold_in", step.fold_in)
    if kind == "split":
        return ("split", step.split.num, step.split.index)
    if kind == "stack":
        return ("stack", step.stack)
    raise InvalidArgument("a KeyStep needs fold_in, split or stack")


def params_from_proto(request: pb.GenerateRequest, pin: str | None = None) -> GenerateParams:
    """The core's view of a wire request; ``pin``: the call's x-jaxinit-jax-version metadata."""
    prng = request.prng
    jit = jit_option(request.jit if request.HasField("jit") else None, prng.jit or None)
    return GenerateParams(
        initializer=request.initializer,
        shape=list(request.shape),
        args={name: value_from_proto(v) for name, v in request.args.items()},
        dtype=request.dtype or None,
        key=key_from_proto(request.key) if request.HasField("key") else None,
        threefry_partitionable=(prng.threefry_partitionable if prng.HasField("threefry_partitionable") else None),
        enable_x64=prng.enable_x64 if prng.HasField("enable_x64") else None,
        jit=bool(jit),
        request_id=request.request_id,
        offset=request.offset if request.HasField("offset") else None,
        count=request.count if request.HasField("count") else None,
        jax_version=pinned(request.jax_version, pin),
        backend=request.backend or None,
    )


def model_params_from_proto(request: pb.InitModelRequest, pin: str | None = None) -> InitModelParams:
    """The core's view of a wire model request; ``pin`` as for :func:`params_from_proto`."""
    try:
        model = jsonio.loads(request.model_json)
    except ValueError as exc:
        raise InvalidArgument(f"model_json is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("model_json is nested too deeply to read") from None
    prng = request.prng
    jit = jit_option(request.jit if request.HasField("jit") else None, prng.jit or None)
    return InitModelParams(
        model=model,
        key=key_from_proto(request.key) if request.HasField("key") else None,
        mode=request.mode or "linen",
        layout=request.layout or "flax",
        fix_rng_separator=request.fix_rng_separator,
        param_dtype=request.param_dtype or "float32",
        threefry_partitionable=prng.threefry_partitionable if prng.HasField("threefry_partitionable") else None,
        enable_x64=prng.enable_x64 if prng.HasField("enable_x64") else None,
        jit=bool(jit),
        jax_version=pinned(request.jax_version, pin),
        backend=request.backend or None,
    )


def value_from_proto(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "int_list":
        return list(value.int_list.values)
    if kind == "list_value":
        return [value_from_proto(v) for v in value.list_value.items]
    return getattr(value, kind)  # kind is one of the oneof's own field names


def header_to_proto(tensor: TensorStream, chunk_bytes: int, model_bytes: int = 0, region: str = "") -> pb.TensorHeader:
    return pb.TensorHeader(
        shape=tensor.shape,
        dtype=tensor.dtype,
        byte_order="little",
        total_bytes=tensor.nbytes,
        chunk_bytes=chunk_bytes,
        provenance=pb.Provenance(**tensor.provenance.as_dict()),
        offset=tensor.resolved.start,
        count=tensor.resolved.stop - tensor.resolved.start,
        digest_algorithm=tensor.digest_algorithm,
        model_bytes=model_bytes,
        cache=tensor.cache,
        region=region,
    )


def error_to_proto(error: JaxinitError, request_id: str) -> pb.TensorChunk:
    return pb.TensorChunk(
        request_id=request_id,
        error=pb.Error(code=mapping_for(error).grpc_code, type=type(error).__name__, message=error.message),
    )
