"""Transport-neutral client types: a request, a received tensor, its provenance, and the
assembler that writes streamed bytes into one preallocated buffer."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from jaxinit.protocol.catalog import bind_arguments, lookup
from jaxinit.protocol.codec import ITEMSIZE, array_from_buffer, dtype_name, num_bytes
from jaxinit.protocol.digest import ALGORITHM as DIGEST_ALGORITHM
from jaxinit.protocol.digest import new_hasher
from jaxinit.protocol.errors import IntegrityError, InvalidArgument, JaxinitError, ProtocolError
from jaxinit.protocol.keys import Key, as_key
from jaxinit.protocol.model import plan_jit
from jaxinit.protocol.provenance import Provenance
from jaxinit.protocol.schemas import check as check_description
from jaxinit.protocol.values import check_flag, check_shape, is_int, quote

__all__ = [
    "Assembler",
    "ModelRequest",
    "Placement",
    "Progress",
    "Provenance",
    "Request",
    "Tensor",
    "enumerate_async",
    "named",
    "pins",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """One tensor to generate: what ``init(key, shape, dtype)`` of a factory with ``args`` means.

    Validated on construction (names, arguments, key, shape, dtype), so mistakes
    are raised before anything is sent.
    """

    initializer: str
    key: Any
    shape: Sequence[int]
    dtype: Any = None
    args: Mapping[str, Any] = field(default_factory=dict)
    threefry_partitionable: bool | None = None
    enable_x64: bool | None = None
    request_id: str = ""
    offset: int | None = None  # a range in flat elements: [offset, offset + count)
    count: int | None = None
    jit: bool = False  # the values jax.jit(init) gives (as inside nn.scan or a jitted model.init)
    jax_version: str | None = None  # a pin: answered only by that JAX version (else VersionMismatch)
    backend: str | None = None  # a pin: answered only on that backend

    def __post_init__(self) -> None:
        check_flag(self.jit, "jit")
        _check_pins(self.jax_version, self.backend)
        for name in ("offset", "count"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                raise InvalidArgument(f"{name} must be a non-negative int (flat elements), got {quote(value)}")
        spec = lookup(self.initializer)
        bound = bind_arguments(spec, self.args)
        # Send what the caller gave, normalized; the server fills its own defaults.
        object.__setattr__(self, "args", {k: bound[k] for k in self.args})
        key = self.key
        if key is None and spec.uses_key:
            raise InvalidArgument(f"{spec.name} needs a key: an int seed or a key")
        object.__setattr__(self, "key", None if key is None else as_key(key))
        object.__setattr__(self, "shape", check_shape(self.shape))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", dtype_name(self.dtype))


@dataclass(frozen=True)
class ModelRequest:
    """A whole model to initialise: the server expands it (one model path for every client)."""

    model: Mapping[str, Any]  # a description: a module, or the raw form {"params": [...]}
    key: Key
    mode: str = "linen"
    layout: str = "flax"
    fix_rng_separator: bool = False
    param_dtype: str = "float32"
    threefry_partitionable: bool | None = None
    enable_x64: bool | None = None
    # jax.jit(model.init)'s values; None: the plan's default (an exported plan's "jit"), else
    # eager. Settled to a bool here, and a plan's own "jit" rewritten to agree with it.
    jit: bool | None = None
    jax_version: str | None = None  # pins, as Request's
    backend: str | None = None

    def __post_init__(self) -> None:
        _check_pins(self.jax_version, self.backend)
        if not isinstance(self.model, Mapping):
            raise InvalidArgument(
                f"model must be a description (a dict such as jaxinit.models.Dense(784, 256)), got {self.model!r:.80}"
            )
        try:  # plain JSON data, as it travels (numpy numbers and dtypes as JSON's)
            model = json.loads(json.dumps(self.model, default=_plain, allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidArgument(f"model: the description is not JSON data: {exc}") from None
        # The schema before the wire: a mistake named by its JSON path, with no round trip
        # (the server's parser, the authority, checks what a schema cannot).
        check_description(model)
        if self.jit is not None and not isinstance(self.jit, bool):
            raise InvalidArgument(f"jit must be true, false or None (the plan's default), got {quote(self.jit)}")
        default = plan_jit(model)
        if self.jit is False and default:
            model = {**model, "jit": False}  # this call's choice over the plan's
        object.__setattr__(self, "jit", default if self.jit is None else self.jit)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "key", as_key(self.key))
        object.__setattr__(self, "param_dtype", dtype_name(self.param_dtype))
        for name in ("mode", "layout"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgument(f"{name} must be a string, got {quote(getattr(self, name))}")
        check_flag(self.fix_rng_separator, "fix_rng_separator")

    @property
    def prng(self) -> dict[str, bool]:
        """The PRNG settings given (the server's defaults for the others)."""
        settings = (("threefry_partitionable", self.threefry_partitionable), ("enable_x64", self.enable_x64))
        return {name: value for name, value in settings if value is not None}

    def to_json(self) -> dict[str, Any]:
        """The body of ``POST /v1/models/init``."""
        body: dict[str, Any] = {
            "model": self.model,
            "key": self.key.to_json(),
            "mode": self.mode,
            "layout": self.layout,
            "fix_rng_separator": self.fix_rng_separator,
            "param_dtype": self.param_dtype,
        }
        prng: dict[str, bool] = {**self.prng, **({"jit": True} if self.jit else {})}
        if prng:
            body["prng"] = prng
        body.update(pins(self))
        return body


def pins(request: Request | ModelRequest) -> dict[str, str]:
    """The pins ``request`` gives, by field name (none: an empty dict)."""
    return {name: value for name in ("jax_version", "backend") if (value := getattr(request, name))}


def _check_pins(jax_version: Any, backend: Any) -> None:
    for name, value in (("jax_version", jax_version), ("backend", backend)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidArgument(f"{name} must be a non-empty string such as '0.10.2' or 'cpu', got {value!r}")


def _plain(value: Any) -> Any:
    """A numpy number, array or dtype in a description, as the JSON value it stands for."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return dtype_name(value)
    raise TypeError(f"{type(value).__name__} {value!r:.60} is not JSON data")


@dataclass(frozen=True)
class Tensor:
    """A received tensor: the array, and the provenance the server sent with it.

    For a range, ``array`` is flat (its ``count`` elements), ``offset`` its first
    flat element and ``tensor_shape`` the whole tensor's shape. A bfloat16 or float8
    array is of ml_dtypes' type where ml_dtypes is installed, else of raw bits (see
    :func:`jaxinit.protocol.codec.raw_bits_dtype`; :func:`jaxinit.to_float32` gives
    its exact values).
    """

    array: np.ndarray
    provenance: Provenance
    request_id: str = ""
    offset: int = 0
    tensor_shape: tuple[int, ...] = ()
    # How the server made it: "miss", "shared", "hit", "disk" or "none" ("" from servers
    # before 0.4.0); the bytes are the same whichever it is.
    cache: str = ""
    # Its bytes came through same-host shared memory, not the stream.
    shared_memory: bool = False

    def __repr__(self) -> str:
        p = self.provenance
        span = (
            f" elements [{self.offset}, {self.offset + self.array.size})"
            if self.array.shape != self.tensor_shape
            else ""
        )
        # The initializer, then the caller's name for the tensor where it gave one (a model's
        # path); a bare index is the transport's, not a name.
        named = f" {_initializer_of(p)}" if _initializer_of(p) else ""
        if self.request_id and not self.request_id.isdigit():
            named += f" {self.request_id!r}"
        dtype = dtype_name(self.array.dtype)
        return (
            f"<Tensor{named} {dtype}{list(self.array.shape)}{span}, request {p.request_digest[:12]}, "
            f"jax {p.jax_version} on {p.backend}>"
        )


def _initializer_of(provenance: Provenance) -> str:
    """The initializer named in a provenance's canonical request ("" when it has none)."""
    try:
        request = json.loads(provenance.canonical_request) if provenance.canonical_request else {}
    except ValueError:
        return ""
    name = request.get("initializer") if isinstance(request, dict) else None
    return name if isinstance(name, str) else ""


# Called as (bytes received, bytes announced): a tensor's header announces its size
# once, each chunk reports what it added.
Progress = Callable[[int, int], None]

# Where a streamed tensor's bytes go, asked when its header arrives: (name, shape, dtype,
# total bytes, provenance) -> a uint8 buffer of that many bytes, or None for one of its own.
Placement = Callable[[str, tuple[int, ...], str, int, Provenance], "np.ndarray | None"]


def total_up_front(on_progress: Progress | None, total: int) -> Progress | None:
    """For a stream whose whole size is known before its first tensor (a model): announce
    it once, and return the progress each tensor reports to, which passes on only the
    bytes received (each tensor's own size is inside the total)."""
    if on_progress is None:
        return None
    on_progress(0, total)

    def received_only(received: int, announced: int) -> None:
        if received:
            on_progress(received, 0)

    return received_only


class Assembler:
    """Collects one tensor's streamed bytes into a buffer allocated once, checking every step."""

    def __init__(
        self,
        shape: Sequence[int],
        dtype: str,
        total_bytes: int,
        provenance: Provenance,
        request_id: str = "",
        offset: int = 0,
        count: int | None = None,
        on_progress: Progress | None = None,
        digest_algorithm: str = "",
        cache: str = "",
        buffer: np.ndarray | None = None,
    ) -> None:
        """``buffer``: where the bytes go (uint8, ``total_bytes`` long; a slice of a file
        being written, say); None: a buffer of its own."""
        if digest_algorithm not in ("", DIGEST_ALGORITHM):
            raise ProtocolError(f"the server announced a digest this client cannot check: {digest_algorithm!r}")
        self.digest_algorithm = digest_algorithm
        self.digest_checked = False
        if dtype not in ITEMSIZE:
            raise ProtocolError(f"server sent unknown dtype {dtype!r}")
        self.tensor_shape = tuple(int(d) for d in shape)
        elements = math.prod(self.tensor_shape)
        count = elements - offset if count is None else count
        if offset + count > elements:
            raise ProtocolError(f"range [{offset}, {offset + count}) is outside a tensor of {elements} elements")
        self.offset = offset
        self.shape = self.tensor_shape if (offset, count) == (0, elements) else (count,)
        self.dtype = dtype
        if num_bytes(self.shape, dtype) != total_bytes:
            raise ProtocolError(
                f"header says {total_bytes} bytes for {dtype}{list(self.shape)}, which needs "
                f"{num_bytes(self.shape, dtype)}"
            )
        self.total = total_bytes
        self.provenance = provenance
        self.request_id = request_id
        if buffer is not None and (buffer.dtype != np.uint8 or buffer.shape != (total_bytes,)):
            raise ValueError(f"a buffer of {buffer.dtype}{list(buffer.shape)} for {total_bytes} bytes")
        self._own = buffer is None
        self._buffer = np.empty(total_bytes, dtype=np.uint8) if buffer is None else buffer
        self.received = 0
        self.cache = cache
        self.shared_memory = False
        self._on_progress = on_progress
        if on_progress is not None:
            on_progress(0, total_bytes)

    @property
    def done(self) -> bool:
        """Every byte has arrived (the digest, when one was announced, may still be due)."""
        return self.received == self.total

    @property
    def complete(self) -> bool:
        """Every byte, and the announced digest checked."""
        return self.done and (self.digest_checked or not self.digest_algorithm)

    def check_digest(self, algorithm: str, digest: bytes) -> None:
        """Compare the server's digest of the bytes with ours. Raises IntegrityError."""
        if not self.done:
            raise ProtocolError(f"a digest after {self.received} of {self.total} bytes")
        if algorithm != self.digest_algorithm:
            raise ProtocolError(f"header announced a {self.digest_algorithm!r} digest, got {algorithm!r}")
        hasher = new_hasher()
        hasher.update(self._buffer.data)
        if hasher.digest() != digest:
            raise IntegrityError(
                f"the {self.total} bytes received do not match the server's {algorithm} digest "
                f"({digest.hex()} sent, {hasher.digest().hex()} received): corrupted in transit or in a cache"
            )
        self.digest_checked = True

    def use_region(self, region: np.ndarray) -> None:
        """Every byte at once: a shared-memory region holding them (uint8, mapped)."""
        if self.received or region.nbytes != self.total:
            raise ProtocolError(f"a shared-memory region of {region.nbytes} bytes for {self.total} announced")
        if self._own:
            self._buffer = region
        else:  # the bytes belong somewhere given (a file being written): one copy there
            self._buffer[:] = region
        self.received = self.total
        self.shared_memory = True
        if self._on_progress is not None:
            self._on_progress(self.total, 0)

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Write one chunk; chunks must arrive in order, without gaps or overlap."""
        size = len(data)
        if offset != self.received or offset + size > self.total:
            raise IntegrityError(
                f"chunk at byte {offset} (+{size}) does not follow byte {self.received} of {self.total}"
            )
        self._buffer[offset : offset + size] = np.frombuffer(data, dtype=np.uint8)
        self.received += size
        if self._on_progress is not None:
            self._on_progress(size, 0)

    def partial(self) -> Tensor | None:
        """The whole elements received so far, as a flat range (None before the first):
        what a resumed fetch keeps."""
        elements = self.received // ITEMSIZE[self.dtype]
        if elements == 0:
            return None
        array = array_from_buffer(self._buffer[: elements * ITEMSIZE[self.dtype]], (elements,), self.dtype)
        return Tensor(array, self.provenance, self.request_id, self.offset, self.tensor_shape, self.cache)

    def finish(self) -> Tensor:
        if not self.done:
            raise IntegrityError(f"stream ended after {self.received} of {self.total} bytes")
        if not self.complete:
            raise IntegrityError(f"the {self.digest_algorithm} digest the server announced never came")
        array = array_from_buffer(self._buffer, self.shape, self.dtype)
        return Tensor(
            array, self.provenance, self.request_id, self.offset, self.tensor_shape, self.cache, self.shared_memory
        )


async def enumerate_async(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[tuple[int, T]]:
    """(index, item) of a plain or an async iterable."""
    index = 0
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield index, item
            index += 1
    else:
        for item in items:
            yield index, item
            index += 1


def check_derived(key: Key | None, tensor: Tensor, *, jit: bool = False) -> Tensor:
    """``tensor``, once its canonical request shows the server applied ``key``'s derive
    steps (split, stack and fold_in after the fold_in list) and, asked for, ``jit``. A
    server older than these drops them as unknown fields and answers another request:
    refused, never returned.

    Raises:
        ProtocolError: the server's request lacks the steps or the jit asked for.
    """
    if (key is None or not key.derive) and not jit:
        return tensor
    if not tensor.provenance.canonical_request:  # too large for the server to echo in a header
        return tensor
    try:
        canonical = json.loads(tensor.provenance.canonical_request)
        answered = canonical["key"]
    except (ValueError, KeyError, TypeError):
        canonical, answered = {}, {}
    if jit and canonical.get("jit") is not True:
        raise ProtocolError(
            "the server answered with eager values where jit values were asked for: a server older than this "
            "client? (jit needs a jaxinit-server >= 0.3.0)"
        )
    if answered is None or key is None or not key.derive:  # no key used (zeros, constant), or none to check
        return tensor
    want = key.to_json()["derive"]
    if answered.get("derive", [])[: len(want)] != want:
        raise ProtocolError(
            f"the server answered for key {answered or None}, without the derive steps {want} asked for: "
            "a server older than this client? (split steps need a jaxinit-server >= 0.2.0, stack steps >= 0.3.0)"
        )
    return tensor


def named(name: str, item: Tensor | JaxinitError) -> Tensor | JaxinitError:
    """A model's tensor, or its error saying which tensor it is. The error keeps what it
    carries besides its message (an Overloaded's ``retry_after``)."""
    if isinstance(item, JaxinitError):
        JaxinitError.__init__(item, f"{name}: {item.message}")
    return item
