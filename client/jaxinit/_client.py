"""The thin client: JAX's initializer protocol, served remotely.

``client.lecun_normal()`` has the signature and defaults of
``jax.nn.initializers.lecun_normal``; the callable it returns is
``init(key, shape, dtype=None) -> numpy.ndarray``, bit-identical to the
server's JAX.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import math
import numbers
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import urlsplit

import numpy as np

from jaxinit._model_file import StreamedFile, streamed_file
from jaxinit._types import ModelRequest, Provenance, Request, Tensor, check_derived, enumerate_async
from jaxinit._verify import refetch_metadata
from jaxinit.protocol import safetensors
from jaxinit.protocol.catalog import CATALOG, ArgSpec, InitializerSpec, bind_arguments, unknown_message
from jaxinit.protocol.codec import dtype_name, is_bits_type, numpy_dtype
from jaxinit.protocol.errors import (
    Interrupted,
    InvalidArgument,
    JaxinitError,
    Overloaded,
    ProtocolError,
    ServerUnavailable,
)
from jaxinit.protocol.keys import Key, derive_from_json
from jaxinit.protocol.model import file_metadata, model_canonical, nest

__all__ = ["AsyncClient", "AsyncInitializer", "Client", "Initializer", "ModelParams"]

DEFAULT_TIMEOUT = 300.0
# A progress bar is drawn for calls of at least this many bytes (a smaller one would only flash).
PROGRESS_MIN_BYTES = 32 * 2**20
PROGRESS_AFTER = 1.0  # seconds: a call of a known large size shows its bar this soon
PROGRESS_TICK = 0.5  # seconds between redraws of its running clock


def _tqdm() -> Any:
    """tqdm's auto bar (a widget in notebooks), or an ImportError naming the extra."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress bars need tqdm: pip install tqdm (the client's [progress] extra)") from None
    return tqdm


def _progress_bar(tqdm: Any, **kwargs: Any) -> tuple[Any, Callable[[], None]]:
    """A progress bar and what closes it.

    In a notebook (tqdm's widget bar) the widget is shown through a display handle, and on
    closing it is replaced by one line of text with its final state: a saved notebook keeps
    no widget, whose stored fallback reads 0% wherever the widget's state is not saved
    (nbviewer, GitHub, a reopened notebook)."""
    notebook = sys.modules.get("tqdm.notebook")
    if notebook is None or not (isinstance(tqdm, type) and issubclass(tqdm, notebook.tqdm_notebook)):
        bar = tqdm(**kwargs)
        return bar, bar.close
    display: Any = importlib.import_module("IPython.display").display  # in a notebook, IPython is there

    bar = tqdm(display=False, **kwargs)
    handle = display(bar.container, display_id=True)

    def close() -> None:
        bar.close()
        if handle is not None:
            final = bar.format_meter(**{**bar.format_dict, "ncols": None})
            handle.update({"text/plain": final}, raw=True)

    return bar, close


def _expected_bytes(request: Request) -> int:
    """The bytes ``request`` will carry, as far as it says (its dtype, else float32)."""
    elements = math.prod(request.shape)
    if request.count is not None:
        elements = min(request.count, max(0, elements - (request.offset or 0)))
    elif request.offset is not None:
        elements = max(0, elements - request.offset)
    try:
        itemsize = numpy_dtype(request.dtype).itemsize if request.dtype else 4
    except Exception:  # a name the server will judge
        itemsize = 4
    return elements * itemsize


TensorT = TypeVar("TensorT")
ModelT = TypeVar("ModelT")


class _BaseInitializer:
    """A bound initializer: a registry name and its factory arguments."""

    def __init__(self, client: Any, spec: InitializerSpec, args: Mapping[str, Any]) -> None:
        self._client = client
        self.name = spec.name
        self.args = dict(args)

    def request(self, key: Any, shape: Any, dtype: Any = None, *, request_id: str = "") -> Request:
        """The :class:`Request` that ``self(key, shape, dtype)`` sends."""
        return cast(Request, self._client._request(self.name, key, shape, dtype, self.args, request_id))

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidArgument(
            f"{self!r} is an initializer, not an array: call it with (key, shape[, dtype]) to get one"
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"<jaxinit initializer {self.name}({args}) via {self._client.url}>"


class Initializer(_BaseInitializer):
    """``init(key, shape, dtype=None) -> numpy.ndarray``, as in JAX."""

    def __call__(self, key: Any, shape: Any, dtype: Any = None) -> np.ndarray:
        return self.generate(key, shape, dtype).array

    def generate(self, key: Any, shape: Any, dtype: Any = None) -> Tensor:
        """Like calling it, but returns the :class:`Tensor` with its provenance."""
        return self._client._fetch(self.request(key, shape, dtype))  # type: ignore[no-any-return]


class AsyncInitializer(_BaseInitializer):
    """``await init(key, shape, dtype=None) -> numpy.ndarray``."""

    async def __call__(self, key: Any, shape: Any, dtype: Any = None) -> np.ndarray:
        return (await self.generate(key, shape, dtype)).array

    async def generate(self, key: Any, shape: Any, dtype: Any = None) -> Tensor:
        return await self._client._fetch(self.request(key, shape, dtype))  # type: ignore[no-any-return]


# Below this many elements a tensor is fetched over one stream even when parallel > 1.
PARALLEL_MIN_ELEMENTS = 2**22


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (offset, count) ranges covering ``total`` elements.

    >>> split(10, 3)
    [(0, 4), (4, 3), (7, 3)]
    """
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    ranges, offset = [], 0
    for i in range(parts):
        count = base + (1 if i < extra else 0)
        ranges.append((offset, count))
        offset += count
    return ranges


def _without_range(provenance: Provenance) -> Provenance:
    """The provenance of the whole tensor a range was cut from: the server's canonical
    request without its range, and that request's digest, made as the server makes them.
    One the server left out of its header (a request too large to echo) stays out: the
    range's provenance is kept as it came."""
    if not provenance.canonical_request:
        return provenance
    fields = json.loads(provenance.canonical_request)
    fields.pop("range", None)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return dataclasses.replace(provenance, canonical_request=canonical, request_digest=digest)


def _span(request: Request) -> tuple[int, int]:
    """The flat elements ``request`` asks for: (first, end)."""
    total = math.prod(request.shape)
    start = request.offset or 0
    return start, (total if request.count is None else start + request.count)


def join(request: Request, pieces: list[Tensor]) -> Tensor:
    """``request``'s answer from pieces that cover it (ranges fetched in parallel, or what
    arrived before a stream broke and the rest): one buffer, each piece copied in once.

    Raises:
        ProtocolError: the pieces do not come from one tensor on one JAX and backend
            (replicas with different versions, say), or do not cover it.
    """
    whole = _without_range(pieces[0].provenance)
    start, end = _span(request)
    array = np.empty(end - start, dtype=pieces[0].array.dtype)
    spans = []
    for piece in pieces:
        if _without_range(piece.provenance) != whole or piece.array.dtype != array.dtype:
            raise ProtocolError(
                f"ranges of one tensor came back from different requests or servers: {piece.provenance} vs {whole}"
            )
        if piece.offset < start or piece.offset + piece.array.size > end:
            raise ProtocolError(f"a range at {piece.offset} (+{piece.array.size}) is outside [{start}, {end})")
        array[piece.offset - start : piece.offset - start + piece.array.size] = piece.array.reshape(-1)
        spans.append((piece.offset, piece.offset + piece.array.size))
    reached = start  # every element covered: the spans, in order, leave no gap
    for first, last in sorted(spans):
        if first > reached:
            raise ProtocolError(f"ranges leave elements [{reached}, {first}) of [{start}, {end}) uncovered")
        reached = max(reached, last)
    if reached != end:
        raise ProtocolError(f"ranges leave elements [{reached}, {end}) of [{start}, {end}) uncovered")
    caches = {piece.cache for piece in pieces}
    cache = caches.pop() if len(caches) == 1 else ""
    shared = all(piece.shared_memory for piece in pieces)
    if request.offset is None and request.count is None:
        return Tensor(array.reshape(request.shape), whole, request.request_id, 0, tuple(request.shape), cache, shared)
    return Tensor(array, pieces[0].provenance, request.request_id, start, tuple(request.shape), cache, shared)


class _Backoff:
    """How long to wait before the next try of a call the server did not decide (it could
    not be reached, was overloaded, or a stream broke), and when to give up."""

    def __init__(self, retries: int, backoff: float) -> None:
        self.retries = retries
        self.backoff = backoff
        self.failures = 0

    def failed(self, error: ServerUnavailable | Overloaded) -> float:
        """Seconds to wait before the next try (at least an overloaded server's
        Retry-After); re-raises ``error`` when out of tries."""
        self.failures += 1
        if self.failures > self.retries:
            raise error
        wait = self.backoff * 2 ** (self.failures - 1) * (0.5 + random.random())
        if isinstance(error, Overloaded):
            wait = max(wait, error.retry_after or 0.0)
        return float(wait)


class _Resumption(_Backoff):
    """What a fetch has so far, and what to ask for next, across retries.

    A failure the server did not decide (it could not be reached, or a stream broke) is
    retried, with backoff; a broken stream keeps the whole elements that arrived and asks
    for the rest only, as a range. Every piece must come from the same JAX and backend,
    or :func:`join` refuses them: bytes from two versions are never stitched together.
    """

    def __init__(self, request: Request, retries: int, backoff: float) -> None:
        super().__init__(retries, backoff)
        self.request = request
        self.pieces: list[Tensor] = []
        self._start, self._end = _span(request)
        self._next = self._start

    def next_request(self) -> Request:
        if not self.pieces:
            return self.request
        return dataclasses.replace(self.request, offset=self._next, count=self._end - self._next)

    def _keep(self, piece: Tensor) -> None:
        self.pieces.append(piece)
        self._next = piece.offset + piece.array.size

    def done(self, piece: Tensor) -> Tensor:
        check_derived(self.request.key, piece, jit=self.request.jit)
        if not self.pieces:
            return piece
        self._keep(piece)
        return join(self.request, self.pieces)

    def failed(self, error: ServerUnavailable | Overloaded) -> float:
        if isinstance(error, Interrupted) and error.partial is not None:
            self._keep(error.partial)
        return super().failed(error)


def _open_transport(
    url: str,
    *,
    asynchronous: bool,
    timeout: float | None,
    channel: Any,
    transport: Any,
    token: str | None,
    cacheable: bool,
    ca_bundle: str | None,
    shared_memory: bool | None = None,
) -> Any:
    parts = urlsplit(url)
    if parts.scheme in ("grpc", "grpcs"):
        if transport is not None:
            raise InvalidArgument("transport= is for http:// URLs; give a gRPC channel as channel=")
        try:
            from jaxinit import _grpc  # imported only when used: gRPC is an extra
        except ImportError as exc:
            if exc.name == "jaxinit._grpc":  # installed, but too old: the error says which and what to do
                raise
            raise ImportError(
                "grpc:// URLs need grpcio and protobuf: pip install 'grpcio>=1.59' 'protobuf>=4.21' "
                f"(the client's [grpc] extra) ({exc})"
            ) from exc

        grpc_transport = _grpc.AsyncGrpcTransport if asynchronous else _grpc.GrpcTransport
        return grpc_transport(
            parts.netloc,
            timeout=timeout,
            channel=channel,
            token=token,
            tls=parts.scheme == "grpcs",
            ca_bundle=ca_bundle,
            shared_memory=shared_memory,
        )
    if parts.scheme in ("http", "https"):
        if channel is not None:
            raise InvalidArgument("channel= is for grpc:// URLs; give an httpx transport as transport=")
        from jaxinit import _http

        http = _http.AsyncHttpTransport if asynchronous else _http.HttpTransport
        return http(
            url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            token=token,
            cacheable=cacheable,
            ca_bundle=ca_bundle,
            shared_memory=shared_memory,
        )
    raise InvalidArgument(f"unsupported URL {url!r}: use grpc(s)://HOST:PORT or http(s)://HOST:PORT")


class _BaseClient(abc.ABC, Generic[TensorT, ModelT]):
    """What :class:`Client` and :class:`AsyncClient` share; ``TensorT``/``ModelT`` are what
    their calls return (the value, or an awaitable of it)."""

    _initializer_class: type[_BaseInitializer]

    def __init__(
        self,
        url: str,
        *,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        jax_version: str | None = None,
        backend: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        parallel: int = 1,
        progress: bool = False,
        token: str | None = None,
        retries: int = 3,
        retry_backoff: float = 0.2,
        cacheable: bool = False,
        ca_bundle: str | None = None,
        channel: Any = None,
        transport: Any = None,
        shared_memory: bool | None = None,
    ) -> None:
        if shared_memory not in (None, True, False):
            raise InvalidArgument(f"shared_memory must be True, False or None, got {shared_memory!r}")
        if not isinstance(parallel, int) or parallel < 1:
            raise InvalidArgument(f"parallel must be an int >= 1, got {parallel!r}")
        if not isinstance(retries, int) or retries < 0:
            raise InvalidArgument(f"retries must be an int >= 0, got {retries!r}")
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.url = url
        self.parallel = parallel
        self.progress = progress
        self.threefry_partitionable = threefry_partitionable
        self.enable_x64 = enable_x64
        self.backend = backend
        self._transport = _open_transport(
            url,
            asynchronous=self._initializer_class is AsyncInitializer,
            timeout=timeout,
            channel=channel,
            transport=transport,
            token=token,
            cacheable=cacheable,
            ca_bundle=ca_bundle,
            shared_memory=shared_memory,
        )
        self.jax_version = jax_version

    @property
    def jax_version(self) -> str | None:
        """The JAX version every request is pinned to (None: any); ``"local"`` is read as the
        version installed beside the client when set."""
        return self._jax_version

    @jax_version.setter
    def jax_version(self, value: str | None) -> None:
        self._jax_version = _version_pin(value)
        self._transport.pin = self._jax_version  # a GenerateMany stream's pin (gRPC metadata)

    def _request(
        self,
        name: str,
        key: Any,
        shape: Any,
        dtype: Any,
        args: Mapping[str, Any],
        request_id: str = "",
        offset: int | None = None,
        count: int | None = None,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        jit: bool = False,
        jax_version: str | None = None,
        backend: str | None = None,
        like: Any = None,
    ) -> Request:
        if like is not None:
            settings = _like(like)
            key = _one_key(key, settings.pop("key"))
            jax_version, backend = settings.pop("jax_version"), settings.pop("backend")
            threefry_partitionable, enable_x64 = settings["threefry_partitionable"], settings["enable_x64"]
            jit = jit or settings["jit"]
        return Request(
            name,
            key,
            shape,
            dtype,
            args,
            threefry_partitionable=self._setting(threefry_partitionable, self.threefry_partitionable),
            enable_x64=self._setting(enable_x64, self.enable_x64),
            request_id=request_id,
            offset=offset,
            count=count,
            jit=jit,
            jax_version=_version_pin(jax_version) or self.jax_version,
            backend=backend or self.backend,
        )

    @staticmethod
    def _setting(call: bool | None, client: bool | None) -> bool | None:
        """A PRNG flag: the call's where it gives one, else the client's (None: the server's default)."""
        return client if call is None else call

    def _ranges(self, request: Request, parallel: int | None) -> list[tuple[int, int]] | None:
        """The ranges to fetch ``request`` in, or None to fetch it over one stream."""
        parts = self.parallel if parallel is None else parallel
        total = math.prod(request.shape)
        if request.offset is not None or request.count is not None or parts <= 1:
            return None
        if parallel is None and total < PARALLEL_MIN_ELEMENTS:
            return None
        ranges = split(total, parts)
        return ranges if len(ranges) > 1 else None

    def initializer(self, name: str, **args: Any) -> Any:
        """The initializer ``name`` built with ``args``: ``client.initializer("normal", stddev=0.02)``."""
        spec = CATALOG.get(name)
        if spec is None:
            raise AttributeError(unknown_message(name))
        if spec.kind == "initializer":
            bind_arguments(spec, args)
            return self._initializer_class(self, spec, {})
        return getattr(self, name)(**args)

    def request(
        self,
        initializer: str,
        key: Any,
        shape: Any,
        dtype: Any = None,
        *,
        args: Mapping[str, Any] | None = None,
        request_id: str = "",
        offset: int | None = None,
        count: int | None = None,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        jit: bool = False,
        jax_version: str | None = None,
        backend: str | None = None,
        like: Any = None,
    ) -> Request:
        """A :class:`Request` for :meth:`generate_many`, with this client's PRNG settings
        and pins unless the call gives its own.

        ``args`` are the factory's arguments (``{"stddev": 0.02}``); ``dtype`` is the call's;
        ``offset``/``count`` ask for a range of flat elements; ``threefry_partitionable`` and
        ``enable_x64``: this request's JAX flags (None: the client's); ``jit``: the values
        ``jax.jit(init)`` gives (as inside ``nn.scan``), not the eager call's;
        ``jax_version``/``backend``/``like``: as :meth:`generate`'s.
        """
        return self._request(
            initializer,
            key,
            shape,
            dtype,
            args or {},
            request_id,
            offset,
            count,
            threefry_partitionable,
            enable_x64,
            jit,
            jax_version,
            backend,
            like,
        )

    @contextlib.contextmanager
    def _showing_progress(self, progress: bool | None, what: str, expected: int = 0) -> Iterator[None]:
        """A progress bar (tqdm; a widget in notebooks) over the bytes received, while it
        lasts; drawn only once the call is known to carry :data:`PROGRESS_MIN_BYTES` or more
        (a model's whole size is known from its start), so small calls draw nothing.

        ``expected``: the bytes the call will carry, known before it is sent (one tensor's).
        When that is large, the bar shows from the first second (:data:`PROGRESS_AFTER`)
        and its clock runs while the server makes the tensor, before any byte arrives, or
        writes it into shared memory, where the bytes arrive all at once."""
        if not (self.progress if progress is None else progress):
            yield
            return
        tqdm = _tqdm()
        lock = threading.Lock()
        bar: Any = None
        close_bar: Callable[[], None] = lambda: None  # noqa: E731 - replaced when a bar opens
        total = done = 0
        finished = threading.Event()

        def open_bar(size: int) -> Any:
            nonlocal close_bar
            made, close_bar = _progress_bar(
                tqdm, total=size, desc=what, unit="B", unit_scale=True, unit_divisor=1024, leave=False
            )
            made.update(done)
            return made

        def update(received: int, announced: int) -> None:
            nonlocal bar, total, done
            with lock:
                total += announced
                done += received
                if bar is None and total >= PROGRESS_MIN_BYTES:
                    bar = open_bar(total)
                elif bar is not None:
                    if announced and total > (bar.total or 0):
                        bar.total = total
                        bar.refresh()
                    if received:
                        bar.update(received)

        def tick() -> None:  # the bar from the first second, its clock running until the end
            nonlocal bar
            if finished.wait(PROGRESS_AFTER):
                return
            with lock:
                if bar is None:
                    bar = open_bar(max(total, expected))
            while not finished.wait(PROGRESS_TICK):
                with lock:
                    bar.refresh()

        ticker = None
        if expected >= PROGRESS_MIN_BYTES:
            ticker = threading.Thread(target=tick, name="jaxinit-progress", daemon=True)
            ticker.start()
        self._transport.on_progress = update
        answered = False
        try:
            yield
            answered = True
        finally:
            self._transport.on_progress = None
            finished.set()
            if ticker is not None:
                ticker.join()
            if bar is not None:
                if answered and bar.total and bar.n < bar.total:  # shared memory: all at once
                    bar.update(bar.total - bar.n)
                close_bar()

    def generate(
        self,
        initializer: str,
        key: Any,
        shape: Any,
        dtype: Any = None,
        *,
        args: Mapping[str, Any] | None = None,
        offset: int | None = None,
        count: int | None = None,
        parallel: int | None = None,
        progress: bool | None = None,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        jit: bool = False,
        jax_version: str | None = None,
        backend: str | None = None,
        like: Any = None,
    ) -> TensorT:
        """One tensor, with its provenance: ``init(key, shape, dtype)`` of ``initializer(**args)``.

        ``jax_version``: answered only by that JAX (``"0.10.2"``, or ``"0.10"`` for any
        0.10.x; ``"local"``: the JAX installed beside this client), else
        :class:`~jaxinit.protocol.errors.VersionMismatch` (default: the client's pin, else
        any). ``backend``: likewise for JAX's backend (``"cpu"``, ``"gpu"``, ``"tpu"``).
        ``like``: an earlier answer's :class:`Provenance` (or the :class:`Tensor`): exactly
        what produced it (its JAX version, backend, PRNG settings, jit and key; ``key`` is
        then None).

        ``threefry_partitionable``/``enable_x64``: this call's JAX flags (None: the client's).
        ``jit``: the values ``jax.jit(init)`` gives (as inside ``nn.scan`` or a jitted
        ``model.init``; XLA's fusion changes some bits of e.g. ``normal``), not the eager call's.
        ``offset``/``count``: only that range of flat elements (a flat array).
        ``parallel``: fetch it as that many ranges at once (default: the client's
        ``parallel``, used for tensors of at least 2**22 elements).
        ``progress``: show a progress bar (default: the client's ``progress``, off).
        """
        request = self.request(
            initializer,
            key,
            shape,
            dtype,
            args=args,
            offset=offset,
            count=count,
            threefry_partitionable=threefry_partitionable,
            enable_x64=enable_x64,
            jit=jit,
            jax_version=jax_version,
            backend=backend,
            like=like,
        )
        return self._fetch(request, parallel, progress)

    def init_model(
        self,
        model: Any,
        key: Any,
        *,
        mode: str = "linen",
        layout: str = "flax",
        fix_rng_separator: bool = False,
        param_dtype: Any = "float32",
        flat: bool = False,
        path: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        jit: bool | None = None,
        jax_version: str | None = None,
        backend: str | None = None,
        like: Any = None,
    ) -> ModelT:
        """A whole model's initial parameters, bit-identical to Flax's ``init``.

        Args:
            model: a description (``jaxinit.models.Dense(784, 256)``, a dict, or the raw
                form ``{"params": [...]}``); see the README's model section.
            key: the root key, as given to ``model.init`` (linen) or ``nnx.Rngs`` (nnx).
            mode: ``"linen"`` (keys from module paths) or ``"nnx"`` (keys in creation order).
            layout: ``"flax"`` (Flax's tree) or ``"torch"`` (``state_dict`` names and layouts).
            flat: return ``{"Dense_0.kernel": array}`` rather than a nested dict.
            path: also write the parameters there, as ``.safetensors`` or ``.npz``.
            progress: show a progress bar (default: the client's ``progress``, off).
            threefry_partitionable: the JAX flag for this model (None: the client's).
            enable_x64: likewise; None (here and on the client) is on when any parameter
                is a 64-bit type, for every parameter, as a Flax user with float64
                parameters runs; else the server's default.
            jit: ``True``: the values of ``jax.jit(model.init)`` (if your code initialises
                under ``jax.jit``, as most training code does, ask for this: XLA's fusion
                gives e.g. ``normal(stddev)`` kernels other last bits); ``False``: eager
                ``model.init``'s; None: the plan's default (``jaxinit.flax.export(...,
                jit=True)`` records it), else eager. ``.metadata["jit"]`` says which.
            jax_version, backend: pins, as :meth:`generate`'s.
            like: an earlier model's :class:`ModelParams` (or its ``.metadata``, or a file's
                safetensors metadata): its JAX version, backend, PRNG settings, jit and root
                key (``key`` is then None); or a tensor's :class:`Provenance` (all but the key).

        Returns:
            A :class:`ModelParams`: a dict of arrays (nested, or flat with ``flat=True``),
            with the provenance of every tensor in ``.provenance``.
        """
        if like is not None:
            settings = _like(like)
            key = _one_key(key, settings["key"])
            threefry_partitionable, enable_x64 = settings["threefry_partitionable"], settings["enable_x64"]
            jit = settings["jit"] if jit is None else jit
            jax_version, backend = settings["jax_version"], settings["backend"]
        request = self._model_request(
            model, key, mode, layout, fix_rng_separator, param_dtype, threefry_partitionable, enable_x64, jit
        )
        request = dataclasses.replace(
            request, jax_version=_version_pin(jax_version) or self.jax_version, backend=backend or self.backend
        )
        return self._init_model(request, flat, path, progress)

    @abc.abstractmethod
    def _fetch(self, request: Request, parallel: int | None, progress: bool | None) -> TensorT:
        """One tensor (ranges fetched in parallel and joined), retried and resumed."""

    @abc.abstractmethod
    def _init_model(
        self, request: ModelRequest, flat: bool, path: str | os.PathLike[str] | None, progress: bool | None
    ) -> ModelT:
        """A whole model through the transport's model call, retried as a whole."""

    def _model_request(
        self,
        model: Any,
        key: Any,
        mode: str,
        layout: str,
        fix_rng_separator: bool,
        param_dtype: Any,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        jit: bool | None = None,
    ) -> ModelRequest:
        return ModelRequest(
            model,
            key,
            mode,
            layout,
            fix_rng_separator,
            param_dtype,
            threefry_partitionable=self._setting(threefry_partitionable, self.threefry_partitionable),
            enable_x64=self._setting(enable_x64, self.enable_x64),
            jit=jit,
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(unknown_message(name))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


class Client(_BaseClient[Tensor, "ModelParams"]):
    """A blocking client. ``url``: ``grpc://host:port`` or ``http://host:port``; over TLS,
    ``grpcs://`` or ``https://``.

    Args:
        threefry_partitionable: the JAX flag for every request; None: the server's default.
        enable_x64: likewise; None: on for 64-bit dtypes, else the server's default.
        timeout: seconds per attempt (each retry gets its own; None: no limit).
        progress: show a progress bar for each call (tqdm; a widget in notebooks).
        token: a bearer token, for servers started with API keys.
        retries: how often a tensor is fetched again when the server cannot be reached, is
            overloaded (429: waits its Retry-After at least), or its stream breaks (a replica
            restarting behind a load balancer); a broken stream resumes from the last whole
            element received. Errors the server decided are never retried. 0: never.
        retry_backoff: seconds before the first retry; doubled for each next one (jittered).
        cacheable: over HTTP, fetch tensors with the GET form at a canonical URL, so that an
            HTTP cache (the load balancer's in deploy/) can answer repeated requests.
        ca_bundle: a PEM file of the CA certificates to trust for ``grpcs://`` and
            ``https://`` (default: the system's roots).
        channel: a ready ``grpc.Channel`` to use instead of opening one.
        transport: an ``httpx`` transport to use (e.g. to reach an in-process app).
        shared_memory: take tensors through same-host shared memory where the server offers
            it (``--shared-memory``) and this process can read its token (the server's user,
            on its host): the server writes each tensor into a region this client maps, no
            socket in between. None (default): for servers on a loopback address; True: for
            any address (a sidecar reached by name); False: never. Elsewhere, and whenever
            the server refuses, tensors come in the stream.

    Example (a server on loopback)::

        client = jaxinit.Client("grpc://127.0.0.1:50051")
        w = client.lecun_normal()(42, (784, 256))
    """

    _initializer_class = Initializer

    def _fetch(self, request: Request, parallel: int | None = None, progress: bool | None = None) -> Tensor:
        ranges = self._ranges(request, parallel)
        with self._showing_progress(progress, request.initializer, _expected_bytes(request)):
            if ranges is None:
                return self._resilient(request)
            parts = [dataclasses.replace(request, offset=o, count=c) for o, c in ranges]
            with ThreadPoolExecutor(len(parts), thread_name_prefix="jaxinit-range") as pool:
                pieces = list(pool.map(self._resilient, parts))
        return join(request, pieces)

    def _resilient(self, request: Request) -> Tensor:
        """One tensor, retried and resumed as :class:`_Resumption` says."""
        state = _Resumption(request, self.retries, self.retry_backoff)
        while True:
            try:
                return state.done(self._transport.generate(state.next_request()))
            except (ServerUnavailable, Overloaded) as exc:
                time.sleep(state.failed(exc))

    def generate_many(self, requests: Iterable[Request]) -> Iterator[Tensor | JaxinitError]:
        """Many tensors over one stream, in request order. A request that fails yields its
        error (an exception instance) in its place; the others still arrive."""
        sent: list[Request] = []
        answers = self._transport.generate_many(_tap(requests, sent))
        for index, item in enumerate(answers):
            yield check_derived(sent[index].key, item, jit=sent[index].jit) if isinstance(item, Tensor) else item

    def _init_model(
        self, request: ModelRequest, flat: bool, path: str | os.PathLike[str] | None, progress: bool | None
    ) -> ModelParams:
        state = _Backoff(self.retries, self.retry_backoff)
        while True:
            written = streamed_file(path, request)  # a .safetensors path: written as the bytes arrive
            try:
                with self._showing_progress(progress, "model"):
                    place = written.place if written is not None else None
                    tensors = _collect(self._transport.init_model(request, place=place))
                return _model_result(tensors, request, flat, path, written)
            except (ServerUnavailable, Overloaded) as exc:
                time.sleep(state.failed(exc))
            finally:
                if written is not None:
                    written.abandon()  # (after success: nothing left to remove)

    def list_initializers(self) -> dict[str, Any]:
        """The server's registry: initializers, arguments, dtypes, key impls, server identity."""
        return self._transport.list_initializers()  # type: ignore[no-any-return]

    def list_versions(self) -> dict[str, Any]:
        """What the server (or deployment) serves: ``{"versions": [{"jax_version", "backend",
        "key_impls", "dtypes", "default", "reachable", ...}]}``, one entry per JAX version
        (pool); a pool the server could not reach is ``{"jax_version", "reachable": False,
        "default"}``. Pin a listed ``jax_version`` with ``Client(url, jax_version=...)``."""
        return self._transport.list_versions()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_BaseClient[Coroutine[Any, Any, Tensor], Coroutine[Any, Any, "ModelParams"]]):
    """The asyncio twin of :class:`Client`: every call is awaited."""

    _initializer_class = AsyncInitializer

    async def _fetch(self, request: Request, parallel: int | None = None, progress: bool | None = None) -> Tensor:
        ranges = self._ranges(request, parallel)
        with self._showing_progress(progress, request.initializer, _expected_bytes(request)):
            if ranges is None:
                return await self._resilient(request)
            parts = [dataclasses.replace(request, offset=o, count=c) for o, c in ranges]
            pieces = await asyncio.gather(*(self._resilient(p) for p in parts))
        return join(request, list(pieces))

    async def _resilient(self, request: Request) -> Tensor:
        """One tensor, retried and resumed as :class:`_Resumption` says."""
        state = _Resumption(request, self.retries, self.retry_backoff)
        while True:
            try:
                return state.done(await self._transport.generate(state.next_request()))
            except (ServerUnavailable, Overloaded) as exc:
                await asyncio.sleep(state.failed(exc))

    async def generate_many(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> AsyncIterator[Tensor | JaxinitError]:
        """See :meth:`Client.generate_many`."""
        sent: list[Request] = []

        async def tapped() -> AsyncIterator[Request]:
            async for _, request in enumerate_async(requests):
                sent.append(request)
                yield request

        index = 0
        async for item in self._transport.generate_many(tapped()):
            yield check_derived(sent[index].key, item, jit=sent[index].jit) if isinstance(item, Tensor) else item
            index += 1

    async def _init_model(
        self, request: ModelRequest, flat: bool, path: str | os.PathLike[str] | None, progress: bool | None
    ) -> ModelParams:
        state = _Backoff(self.retries, self.retry_backoff)
        while True:
            written = streamed_file(path, request)  # a .safetensors path: written as the bytes arrive
            try:
                with self._showing_progress(progress, "model"):
                    place = written.place if written is not None else None
                    tensors = _collect(await _until_error(self._transport.init_model(request, place=place)))
                return await asyncio.to_thread(_model_result, tensors, request, flat, path, written)
            except (ServerUnavailable, Overloaded) as exc:
                await asyncio.sleep(state.failed(exc))
            finally:
                if written is not None:
                    written.abandon()  # (after success: nothing left to remove)

    async def list_initializers(self) -> dict[str, Any]:
        return await self._transport.list_initializers()  # type: ignore[no-any-return]

    async def list_versions(self) -> dict[str, Any]:
        """See :meth:`Client.list_versions`."""
        return await self._transport.list_versions()  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ModelParams(dict[str, Any]):
    """A model's parameters (a dict of numpy arrays, nested unless ``flat``), with
    ``provenance``: each tensor's :class:`Provenance`, by flat name."""

    provenance: dict[str, Provenance]
    metadata: dict[str, str]
    # How its tensors came: all through same-host shared memory; how many the server made
    # for this request ("miss", "none") or had made ("hit", "disk", "shared"), as on Tensor.cache.
    shared_memory: bool = False
    caches: dict[str, int]

    def flat(self) -> dict[str, np.ndarray]:
        """``{"Dense_0.kernel": array}``, whether this result is nested or flat."""
        out: dict[str, np.ndarray] = {}

        def walk(prefix: str, node: Mapping[str, Any]) -> None:
            for name, value in node.items():
                if isinstance(value, Mapping):
                    walk(f"{prefix}{name}.", value)
                else:
                    out[f"{prefix}{name}"] = value

        walk("", self)
        return out

    def to_torch(self) -> dict[str, Any]:
        """A ``state_dict``: flat names, ``torch`` tensors over the same memory where the
        dtype allows (bfloat16 and float8 reinterpreted bit for bit). With the ``torch``
        layout it loads into the PyTorch model (``load_state_dict``). Imports torch."""
        try:
            import torch
        except ImportError:
            raise ImportError(
                "ModelParams.to_torch() needs PyTorch, which jaxinit does not install: pip install torch "
                "(the build for your platform: https://pytorch.org/get-started/locally/)"
            ) from None

        same_bits = {
            "bfloat16": (np.int16, torch.bfloat16),
            "float8_e4m3fn": (np.int8, getattr(torch, "float8_e4m3fn", None)),
            "float8_e5m2": (np.int8, getattr(torch, "float8_e5m2", None)),
            "float8_e4m3fnuz": (np.int8, getattr(torch, "float8_e4m3fnuz", None)),
            "float8_e5m2fnuz": (np.int8, getattr(torch, "float8_e5m2fnuz", None)),
            "float8_e8m0fnu": (np.int8, getattr(torch, "float8_e8m0fnu", None)),
        }
        out: dict[str, Any] = {}
        for name, array in self.flat().items():
            dtype = dtype_name(array.dtype)
            if not is_bits_type(dtype):
                out[name] = torch.from_numpy(np.ascontiguousarray(array))
                continue
            bits, torch_dtype = same_bits.get(dtype, (np.int8, None))
            if torch_dtype is None:
                raise InvalidArgument(f"{name}: this torch has no {dtype}")
            out[name] = torch.from_numpy(np.ascontiguousarray(array).view(bits)).view(torch_dtype)
        return out

    def __repr__(self) -> str:
        arrays = self.flat()
        size = sum(a.nbytes for a in arrays.values())
        digest = getattr(self, "metadata", {}).get("model_digest", "")[:12]
        names = ", ".join(list(arrays)[:4]) + (", ..." if len(arrays) > 4 else "")
        return f"<ModelParams {len(arrays)} tensors, {size} bytes, model {digest}: {names}>"


def _tap(requests: Iterable[Request], sent: list[Request]) -> Iterator[Request]:
    """``requests`` as they are sent, each kept in ``sent`` (answers come in request order)."""
    for request in requests:
        sent.append(request)
        yield request


async def _until_error(received: AsyncGenerator[Tensor | JaxinitError, None]) -> list[Tensor | JaxinitError]:
    """The items of a model stream up to its first error (the stream is closed there)."""
    items: list[Tensor | JaxinitError] = []
    async with contextlib.aclosing(received):
        async for item in received:
            items.append(item)
            if isinstance(item, JaxinitError):
                break
    return items


def _collect(received: Iterable[Tensor | JaxinitError]) -> list[Tensor]:
    """The model's tensors, in order; the first failure raised (it names its tensor)."""
    tensors: list[Tensor] = []
    for item in received:
        if isinstance(item, JaxinitError):
            raise item
        tensors.append(item)
    names = [t.request_id for t in tensors]
    if not tensors or len(set(names)) != len(names):
        raise ProtocolError(f"the server's model answer names {len(names)} tensors, {len(set(names))} distinct")
    return tensors


def _model_result(
    tensors: list[Tensor],
    request: ModelRequest,
    flat: bool,
    path: str | os.PathLike[str] | None,
    written: StreamedFile | None = None,
) -> ModelParams:
    for tensor in tensors:  # a model's keyed tensors carry the root's derive steps first (and jit, asked)
        if tensor.provenance.key_impl:
            check_derived(request.key, tensor, jit=bool(request.jit))
    arrays = {t.request_id: t.array for t in tensors}
    first = tensors[0].provenance
    # The settings of the model are those of its first keyed tensor, as the server says them.
    keyed = next((t.provenance for t in tensors if t.provenance.key_impl), first)
    _, digest = model_canonical(request.layout, [(t.request_id, t.provenance.request_digest) for t in tensors])
    metadata = file_metadata(
        dataclasses.asdict(first),
        mode=request.mode,
        layout=request.layout,
        root=request.key,
        threefry_partitionable=keyed.threefry_partitionable,
        enable_x64=keyed.enable_x64,
        model_digest=digest,
        jit=bool(request.jit),
    )
    # A file carries its request too, to be fetched again and checked (jaxinit verify).
    on_file = {**metadata, **refetch_metadata(arrays, model_request=request.to_json())} if path is not None else {}
    finished = written.finish(tensors, on_file) if written is not None and written.complete else None
    if finished is not None:  # every byte was written to the file as it arrived
        arrays = finished
    elif path is not None:
        write_arrays(os.fspath(path), arrays, on_file)
    result = ModelParams(arrays if flat else nest(arrays))
    result.provenance = {t.request_id: t.provenance for t in tensors}
    result.metadata = metadata
    result.shared_memory = all(t.shared_memory for t in tensors)
    result.caches = dict(collections.Counter(t.cache for t in tensors if t.cache))
    return result


def arrays_file(suffix: str, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Named arrays as a ``.safetensors`` (with string metadata) or ``.npz`` file's bytes."""
    if suffix == ".safetensors":
        return safetensors.dumps(arrays, metadata)
    if suffix == ".npz":
        for name, array in arrays.items():
            if is_bits_type(array.dtype):
                raise InvalidArgument(
                    f"{name}: .npz cannot store {dtype_name(array.dtype)} (numpy reads it back as raw bytes); "
                    "write .safetensors"
                )
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()
    raise InvalidArgument(f"a file of arrays is .safetensors or .npz, not {suffix!r}")


def write_arrays(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write named arrays as ``.safetensors`` or ``.npz``, by the path's suffix."""
    suffix = next((s for s in (".safetensors", ".npz") if path.endswith(s)), None)
    if suffix is None:
        raise InvalidArgument(f"path must end in .safetensors or .npz, got {path!r}")
    data = arrays_file(suffix, arrays, metadata)
    directory, base = os.path.split(os.path.abspath(path))
    temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.partial")
    try:  # never a partial file under its name
        with open(temp, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# ---- one method per catalog entry, with JAX's own signature and defaults ----


# The Python type each catalog argument type takes: objects, not strings, so that help()
# and inspect.signature show types (a choice is the Literal of its choices).
_ANNOTATIONS: dict[str, Any] = {
    "float": float,
    "int": int,
    "axes": int | Sequence[int],
    "dtype": str | type | np.dtype | None,
    "array": float | Sequence[Any] | np.ndarray,
}


def _annotation(arg: ArgSpec) -> Any:
    if arg.type == "choice":
        return Literal[arg.choices] if arg.choices else str
    return _ANNOTATIONS.get(arg.type, inspect.Parameter.empty)


def _signature(spec: InitializerSpec, returns: type) -> inspect.Signature:
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for arg in spec.arguments:
        default = inspect.Parameter.empty if arg.required else arg.default
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(arg.name, kind, default=default, annotation=_annotation(arg)))
    return inspect.Signature(params, return_annotation=returns)


def _docstring(spec: InitializerSpec) -> str:
    """What help() shows: the summary, every argument (type, choices, default, meaning), the call."""
    lines = [
        f"{spec.summary[:1].upper()}{spec.summary[1:]}.",
        "",
        f"Same signature and defaults as {spec.source}.{spec.name}.",
    ]
    if spec.arguments:
        lines += ["", "Args:"]
        for arg in spec.arguments:
            choices = f", one of {', '.join(repr(c) for c in arg.choices)}" if arg.choices else ""
            default = "required" if arg.required else f"default {arg.default_json}"
            lines.append(f"    {arg.name} ({arg.type}{choices}; {default}): {arg.doc}".rstrip(": "))
    built = f"{spec.name}({'...' if spec.arguments else ''})" if spec.kind == "factory" else spec.name
    call = f"client.{built}(key, shape, dtype=None)"
    lines += ["", "Returns:", f"    an initializer: ``{call}`` is a numpy array, bit-identical to JAX's."]
    return "\n".join(lines)


def _looks_like_key_and_shape(args: tuple[Any, ...]) -> bool:
    if len(args) < 2:
        return False
    key, shape = args[0], args[1]
    keyish = isinstance(key, numbers.Integral) or hasattr(key, "dtype") or type(key).__name__ == "Key"
    shapeish = isinstance(shape, (tuple, list)) and all(isinstance(d, numbers.Integral) for d in shape)
    return keyish and shapeish


def _factory_method(spec: InitializerSpec, returns: type) -> Any:
    signature = _signature(spec, returns)
    axes_first = bool(spec.arguments) and spec.arguments[0].type == "axes"

    def method(self: _BaseClient[Any, Any], *args: Any, **kwargs: Any) -> Any:
        hint = (
            f"{spec.name}() builds an initializer; it does not take (key, shape). "
            f"Call it first: client.{spec.name}()(key, shape)"
        )
        if axes_first and _looks_like_key_and_shape(args):
            # lecun_normal(0, (3, 4)) would type-check as in_axis=0, out_axis=(3, 4):
            # that is far more often this mistake than a real call.
            raise InvalidArgument(hint + f"; to set axes, pass them by keyword: {spec.name}(in_axis=..., ...)")
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            if _looks_like_key_and_shape(args):
                raise InvalidArgument(hint) from None
            raise InvalidArgument(f"{spec.name}(): {exc}") from None
        given = {k: v for k, v in bound.arguments.items() if k != "self"}
        try:
            bind_arguments(spec, given)
        except InvalidArgument as exc:
            if _looks_like_key_and_shape(args):
                raise InvalidArgument(hint) from None
            raise exc from None
        return self._initializer_class(self, spec, given)

    method.__name__ = method.__qualname__ = spec.name
    method.__signature__ = signature  # type: ignore[attr-defined]
    method.__doc__ = _docstring(spec)
    return method


class _BoundInitializerAttribute:
    """``client.zeros`` is an initializer already, as ``jax.nn.initializers.zeros`` is."""

    def __init__(self, spec: InitializerSpec) -> None:
        self._spec = spec
        self.__doc__ = f"{spec.name}: {spec.summary}. An initializer itself: client.{spec.name}(key, shape, dtype)."

    def __get__(self, client: _BaseClient[Any, Any] | None, owner: type) -> Any:
        if client is None:
            return self
        return client._initializer_class(client, self._spec, {})


# Each client class its own methods, so that each signature names the initializer it returns.
for _cls in (Client, AsyncClient):
    for _spec in CATALOG.values():
        if _spec.kind == "factory":
            setattr(_cls, _spec.name, _factory_method(_spec, _cls._initializer_class))
        else:
            setattr(_cls, _spec.name, _BoundInitializerAttribute(_spec))
del _cls, _spec


# ---- pins and re-fetch by provenance ----


def _version_pin(value: str | None) -> str | None:
    """A version pin as sent: ``"local"`` is the JAX installed beside this client."""
    if value != "local":
        return value
    try:
        return importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        raise InvalidArgument(
            'jax_version="local" pins the JAX installed beside this client, and this environment has none; '
            'install the JAX your code runs (pip install "jax==X.Y.Z") or pin a version: jax_version="0.10.2"'
        ) from None


def _one_key(given: Any, liked: Key | None) -> Any:
    if given is not None and liked is not None:
        raise InvalidArgument("give key or like=, not both: like= asks with the key that produced the earlier answer")
    return liked if given is None else given


def _like(like: Any) -> dict[str, Any]:
    """What produced an earlier answer: its JAX version, backend, PRNG settings, jit and key,
    from a :class:`Tensor` or :class:`Provenance`, a :class:`ModelParams`, or a model file's metadata."""
    if isinstance(like, Tensor):
        like = like.provenance
    if isinstance(like, ModelParams):
        like = like.metadata
    if isinstance(like, Provenance):
        try:
            canonical = json.loads(like.canonical_request) if like.canonical_request else {}
        except ValueError:
            raise InvalidArgument("like=: the provenance's canonical_request is not JSON") from None
        key = _key_from_json(canonical["key"]) if canonical.get("key") else None
        if key is None and like.key_impl and like.key_data:
            key = Key(data=like.key_data, impl=like.key_impl)
        return {
            "jax_version": like.jax_version or None,
            "backend": like.backend or None,
            "threefry_partitionable": like.threefry_partitionable,
            "enable_x64": like.enable_x64,
            "jit": bool(canonical.get("jit", False)),
            "key": key,
        }
    if isinstance(like, Mapping) and "root_key" in like:  # a model's metadata (ModelParams.metadata, a file's)
        try:
            root = _key_from_json(json.loads(like["root_key"]))
        except (ValueError, TypeError):
            raise InvalidArgument("like=: the metadata's root_key is not a key") from None
        return {
            "jax_version": like.get("jax_version") or None,
            "backend": like.get("backend") or None,
            "threefry_partitionable": like.get("threefry_partitionable") == "true",
            "enable_x64": like.get("enable_x64") == "true",
            "jit": like.get("jit") == "true",
            "key": root,
        }
    raise InvalidArgument(
        f"like= takes an earlier answer's Provenance (tensor.provenance), a ModelParams or a model file's "
        f"metadata, got {type(like).__name__}"
    )


def _key_from_json(data: Any) -> Key:
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"a key in JSON form is an object, got {data!r:.60}")
    words = data.get("data")
    return Key(
        seed=data.get("seed"),
        data=None if words is None else tuple(words),
        impl=data.get("impl", "threefry2x32"),
        fold_in=tuple(data.get("fold_in", ())),
        derive=derive_from_json(data.get("derive", [])),
    )
