"""Requests: the transport-neutral form adapters build, and its validated, resolved form."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxinit.protocol.catalog import InitializerSpec, bind_arguments, lookup
from jaxinit.protocol.codec import DTYPES, SIXTY_FOUR_BIT, dtype_name
from jaxinit.protocol.errors import InvalidArgument, TooLarge, VersionMismatch
from jaxinit.protocol.keys import Key
from jaxinit.protocol.provenance import version_matches
from jaxinit.protocol.values import MAX_INDEX, check_flag, check_shape, dims, is_int, quote
from jaxinit.protocol.values import MAX_RANK as MAX_RANK  # re-exported: the request caps read here
from jaxinit.protocol.wire import JAX_VERSION_HEADER
from jaxinit_server.core import _jax_compat

__all__ = [
    "OPTION_PARAMETERS",
    "GenerateParams",
    "Limits",
    "PrngDefaults",
    "Resolved",
    "check_pin",
    "jit_option",
    "pinned",
    "resolve",
]

# The parameters of a request given as names and values (the GET form's query, KServe v2's
# request parameters) that are no initializer argument: every other name is one.
OPTION_PARAMETERS = frozenset(
    (
        "dtype",
        "key_impl",
        "key_derive",
        "threefry_partitionable",
        "enable_x64",
        "jit",
        "offset",
        "count",
        "jax_version",
        "backend",
    )
)
MAX_REQUEST_ID = 256  # characters; it is echoed in every chunk
MAX_PIN = 64  # characters of a pinned jax_version or backend
MAX_KEY_BY_KEY_STEPS = 2**14  # derivation steps of an rbg batch key (slices x steps): ~1 s of eager JAX


@dataclass(frozen=True)
class Limits:
    """Caps a request is checked against before any JAX work."""

    max_tensor_bytes: int = 4 * 2**30
    max_model_bytes: int = 16 * 2**30  # all tensors of one model request
    max_json_elements: int = 2**20
    # The most tensor bytes an answer in one message holds (KServe's unary ModelInfer): it
    # is made whole in memory (and copied again by protobuf).
    max_unary_bytes: int = 64 * 2**20
    chunk_bytes: int = 2**20
    max_streams: int = 64  # tensors being made or sent at once, per server
    # The memory those hold at once, as priced (engine.price): a chunked stream holds a few
    # chunks, a whole-tensor request its working set. With the server's own ~1 GiB and
    # the whole-tensor workers', the default keeps a replica inside a 6 GiB limit.
    max_inflight_bytes: int = 5 * 2**29
    # The most compute one whole-tensor request may take (a QR of an n x n matrix: ~4n^3):
    # the default, ~a 4096x4096 orthogonal, takes a few seconds on two cores.
    max_whole_flops: int = 3 * 10**11
    # Compute (engine.Cost.compute) from which a request is heavy (~0.5 s of work): heavy
    # ones run one fewer at a time than the whole-tensor workers (at least one), so that
    # cheaper requests always find a worker, and at most max_heavy_requests are admitted,
    # running or waiting (None: four per running slot).
    heavy_flops: int = 5 * 10**10
    max_heavy_requests: int | None = None
    # One caller's share (a connection, or an API key with auth on): a quarter of the streams
    # and of the memory (None: a quarter of max_inflight_bytes), so a few callers cannot hold
    # the whole server. A caller that holds nothing is always admitted against the server's caps.
    max_caller_streams: int = 16
    max_caller_bytes: int | None = None

    @property
    def caller_bytes(self) -> int:
        return self.max_inflight_bytes // 4 if self.max_caller_bytes is None else self.max_caller_bytes


@dataclass(frozen=True)
class PrngDefaults:
    """What an unset PRNG setting means: the installed JAX's configuration; and which JAX
    and backend that is, for requests pinned to one (empty: unknown, every pin refused)."""

    threefry_partitionable: bool
    enable_x64: bool
    jax_version: str = ""
    backend: str = ""


@dataclass(frozen=True)
class GenerateParams:
    """One request as an adapter hands it over: plain values, not yet checked."""

    initializer: Any
    shape: Any
    args: Mapping[str, Any] = field(default_factory=dict)
    dtype: Any = None
    key: Key | None = None
    threefry_partitionable: bool | None = None
    enable_x64: bool | None = None
    request_id: str = ""
    offset: Any = None  # a range, in flat elements: [offset, offset + count)
    count: Any = None
    jit: Any = False  # the values jax.jit(init) gives (inside nn.scan, a jitted init)
    jax_version: Any = None  # a pin: answered only by that JAX (see check_pin); None: any
    backend: Any = None  # a pin: answered only on that backend ("cpu", "gpu", "tpu"); None: any


@dataclass(frozen=True)
class Resolved:
    """A validated request, every default decided: what the engine runs."""

    spec: InitializerSpec
    args: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str | None  # the call's dtype as asked; None: the factory's, else JAX's default
    out_dtype: str  # the dtype JAX will return
    key: Key | None
    threefry_partitionable: bool
    enable_x64: bool
    nbytes: int  # of what is sent: the range when one was asked
    canonical: str  # canonical JSON of the request; identifies the bytes on one server
    digest: str  # sha256 of canonical
    request_id: str = ""
    start: int = 0  # the flat range [start, stop) sent
    stop: int = 0
    jit: bool = False  # made as jax.jit(init) makes it (see GenerateParams.jit)
    tensor_digest: str = ""  # sha256 of the canonical request without its range: the whole tensor's

    @property
    def call_key(self) -> tuple[Any, ...]:
        """Everything the initializer call's values depend on besides the key: what a
        program or plan made for this request can be remembered under."""
        return (
            self.spec.name,
            repr(sorted(self.args.items())),
            self.shape,
            self.dtype,
            self.out_dtype,
            self.threefry_partitionable,
            self.enable_x64,
        )

    @property
    def is_range(self) -> bool:
        return (self.start, self.stop) != (0, math.prod(self.shape))


def jit_option(jit: bool | None, prng_jit: bool | None) -> bool | None:
    """A request's ``jit`` from its two spellings: the request option itself, and the PRNG
    settings' ``jit`` (its old spelling, still read). None: neither given.

    Raises:
        InvalidArgument: both given, and they differ.
    """
    if jit is None:
        return prng_jit
    if prng_jit is not None and prng_jit != jit:
        raise InvalidArgument(
            f"jit is {str(jit).lower()} but prng.jit (its old spelling) is {str(prng_jit).lower()}; give jit once"
        )
    return jit


def resolve(params: GenerateParams, limits: Limits, defaults: PrngDefaults) -> Resolved:
    """Validate ``params`` and decide every default.

    Raises:
        VersionMismatch (first: another version judges the rest), UnknownInitializer,
        UnknownDtype, InvalidArgument, TooLarge.
    """
    check_pin(params.jax_version, params.backend, defaults)
    spec = lookup(params.initializer)
    args = bind_arguments(spec, params.args)
    shape = check_shape(params.shape)
    dtype = None if params.dtype in (None, "") else dtype_name(params.dtype)
    if not isinstance(params.request_id, str) or len(params.request_id) > MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id is at most {MAX_REQUEST_ID} characters")
    asked = dtype or args.get("dtype")

    x64 = params.enable_x64
    if x64 is None:
        x64 = True if asked in SIXTY_FOUR_BIT else defaults.enable_x64
    elif asked in SIXTY_FOUR_BIT and not x64:
        raise InvalidArgument(
            f"dtype {asked} needs enable_x64=true: with x64 disabled JAX silently truncates it "
            "to a 32-bit type. Leave enable_x64 unset or set it to true."
        )
    partitionable = params.threefry_partitionable
    if partitionable is None:
        partitionable = defaults.threefry_partitionable
    out_dtype = asked or ("float64" if x64 else "float32")

    if params.key is None and spec.uses_key:
        raise InvalidArgument(f"{spec.name} needs a key: give a seed or key data")
    itemsize = DTYPES[out_dtype].itemsize
    _representable(shape, itemsize)
    total = math.prod(shape) * itemsize
    if total > limits.max_tensor_bytes:
        raise TooLarge(
            f"a {out_dtype} tensor of shape {dims(shape)} is {total} bytes; this server's limit "
            f"is {limits.max_tensor_bytes} bytes per tensor"
        )
    start, stop = _range(params.offset, params.count, math.prod(shape))
    if params.key is not None and shape[: len(params.key.stack)] != params.key.stack:
        stack = list(params.key.stack)
        raise InvalidArgument(
            f"a key with stack steps {stack} makes a tensor whose shape starts with {stack} (one slice per key, "
            f"the initializer called with the rest of the shape), got shape {dims(shape)}"
        )
    key = params.key if spec.uses_key else None
    # What this JAX lacks (an older one: a key implementation, a newer float8) is refused, naming it.
    if (lacking := _jax_compat.unsupported(dtype=out_dtype, impl=None if key is None else key.impl)) is not None:
        raise InvalidArgument(lacking)
    if key is not None and key.stack and key.impl in ("rbg", "unsafe_rbg"):
        # their batches are derived key by key, in eager steps (see engine.VMAP_IMPLS)
        work = math.prod(key.stack) * len(key.derive)
        if work > MAX_KEY_BY_KEY_STEPS:
            raise TooLarge(
                f"a stacked {key.impl} key of {math.prod(key.stack)} slices and {len(key.derive)} steps is derived "
                f"key by key: {work} steps, over this server's {MAX_KEY_BY_KEY_STEPS}; use fewer slices or steps, "
                "or a threefry or philox key"
            )
    fields: dict[str, Any] = {
        "initializer": spec.name,
        "args": args,
        "shape": list(shape),
        "dtype": dtype,
        "key": None if key is None else key.to_json(),
        "threefry_partitionable": partitionable,
        "enable_x64": x64,
    }
    if check_flag(params.jit, "jit"):  # absent when false, so digests of eager requests stay as they were
        fields["jit"] = True
    whole = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    tensor_digest = hashlib.sha256(whole.encode()).hexdigest()
    if params.offset is not None or params.count is not None:
        fields["range"] = [start, stop]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    else:
        canonical = whole
    return Resolved(
        spec=spec,
        args=args,
        shape=shape,
        dtype=dtype,
        out_dtype=out_dtype,
        key=key,
        threefry_partitionable=partitionable,
        enable_x64=x64,
        nbytes=(stop - start) * itemsize,
        canonical=canonical,
        digest=tensor_digest if canonical is whole else hashlib.sha256(canonical.encode()).hexdigest(),
        request_id=params.request_id,
        start=start,
        stop=stop,
        jit=params.jit,
        tensor_digest=tensor_digest,
    )


def pinned(field: Any, header: str | None) -> Any:
    """The one version pin of a request that gave it in its body or query (``field``) and
    in the ``x-jaxinit-jax-version`` header / metadata (``header``, what a load balancer
    routes on). Both given must say the same.

    >>> pinned(None, "0.10.2"), pinned("0.10.2", None), pinned("", None)
    ('0.10.2', '0.10.2', None)
    """
    field = None if field in (None, "") else field
    header = None if header in (None, "") else header
    if field is not None and header is not None and field != header:
        raise InvalidArgument(
            f"the request pins jax_version {_quote(field)} but its {JAX_VERSION_HEADER} header says "
            f"{_quote(header)}: send one version (the client sends the header with the field)"
        )
    return header if field is None else field


def check_pin(jax_version: Any, backend: Any, defaults: PrngDefaults) -> None:
    """Refuse a request pinned to another JAX version or backend than this server's.

    A version pin matches the server's version exactly, or as a prefix on a dot boundary
    (``"0.10"`` takes 0.10.2; see :func:`jaxinit.protocol.provenance.version_matches`); a
    backend pin matches exactly ("cpu", "gpu", "tpu": ``jax.default_backend()``).

    Raises:
        InvalidArgument: a pin that is not a version (or backend) name.
        VersionMismatch: this server is not what the request pinned (412 /
            FAILED_PRECONDITION), naming both.
    """
    version_pin = _pin("jax_version", jax_version)
    backend_pin = _pin("backend", backend)
    if version_pin is None and backend_pin is None:
        return
    if version_pin == "local":
        raise InvalidArgument(
            'jax_version "local" means the JAX installed beside the client: the client sends that version; '
            "a server takes a version such as 0.10.2"
        )
    version_ok = version_pin is None or version_matches(version_pin, defaults.jax_version)
    backend_ok = backend_pin is None or backend_pin == defaults.backend
    if version_ok and backend_ok:
        return
    asked = " on ".join(
        part for part in (version_pin and f"JAX {version_pin}", backend_pin and f"backend {backend_pin}") if part
    )
    served = f"JAX {defaults.jax_version or '(unknown)'} on backend {defaults.backend or '(unknown)'}"
    raise VersionMismatch(
        f"the request is pinned to {asked}; this server runs {served}, so it does not answer it (its bytes "
        f"could differ). Send it to a server or pool of that version ({JAX_VERSION_HEADER} routes it behind a "
        "pooled deployment; GET /v1/versions lists what a deployment serves), or drop the pin."
    )


def _pin(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or len(value) > MAX_PIN
        or not value.strip()
        or not all(c.isalnum() or c in ".+-_" for c in value)
    ):
        raise InvalidArgument(f"{name} must be a version or backend name such as 0.10.2 or cpu, got {_quote(value)}")
    return value


def _quote(value: Any) -> str:
    return repr(value)[:40]


def _range(offset: Any, count: Any, total: int) -> tuple[int, int]:
    """[start, stop) in flat elements for an optional offset and count."""
    for name, value in (("offset", offset), ("count", count)):
        if value is not None and (not is_int(value) or value < 0):
            raise InvalidArgument(f"{name} must be a non-negative int (flat elements), got {quote(value, 40)}")
    start = 0 if offset is None else int(offset)
    if start > total:
        raise InvalidArgument(f"offset {start} is past the end of a tensor of {total} elements")
    stop = total if count is None else start + int(count)
    if stop > total:
        raise InvalidArgument(f"offset {start} + count {stop - start} is past the end of a tensor of {total} elements")
    return start, stop


def _representable(shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a shape whose byte count overflows what numpy and XLA index, even when it has a
    0 dimension (XLA multiplies the others, and aborts the process on overflow)."""
    size = itemsize
    for axis, dim in enumerate(shape):
        size *= max(dim, 1)
        if size > MAX_INDEX:
            raise InvalidArgument(
                f"shape {dims(shape)}: dimension {axis} ({dim}) takes the tensor past 2**63 bytes "
                "(counting every non-zero dimension), more than any array can index"
            )
