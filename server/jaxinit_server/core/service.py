"""The service facade the adapters call: describe, prepare, generate."""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES, DTYPES
from jaxinit.protocol.errors import JaxinitError, PermissionDenied, TooLarge
from jaxinit.protocol.keys import KEY_IMPLS, Key
from jaxinit.protocol.model import Output, file_metadata
from jaxinit.protocol.provenance import Provenance
from jaxinit_server.core import _jax_compat, chunked, engine, results, startup
from jaxinit_server.core._threads import on_thread, unless_aborted
from jaxinit_server.core.admission import UNSET, Admission, Ticket
from jaxinit_server.core.disk_cache import DiskCache
from jaxinit_server.core.model_init import InitModelParams, ResolvedModel, resolve_model
from jaxinit_server.core.provenance import ServerIdentity, server_identity
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import GenerateParams, Limits, Resolved, resolve
from jaxinit_server.core.stream import StallWatch, TensorStream, gather, stopping
from jaxinit_server.core.whole import WholePool, _Slots

__all__ = ["Service"]

log = logging.getLogger("jaxinit_server.service")

SEND_BYTES = 64 * 2**10  # what streaming a tensor made already holds, besides its chunks in transit


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn``, which runs on its first call only."""
    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            fn()

    return once


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


class Service:
    """Everything the transports need, with no knowledge of any transport.

    Args:
        limits: caps checked before any work.
        workers: threads that run JAX, so that the event loop never blocks on it.
        cache_bytes: memory for tensors shared between identical requests and kept for
            repeats (0: every request is made on its own).
        cache_dir: a directory where made tensors are also kept (at most
            ``cache_dir_bytes``), surviving restarts; None: none.
        shared_memory_dir: where to offer same-host callers shared-memory regions
            (``/dev/shm``); None: not offered (see :mod:`regions`).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        workers: int = 4,
        whole_workers: int = 2,
        compilation_cache_dir: str | None = None,
        worker_rss_bytes: int = 2**30,
        stall_seconds: float = 60.0,
        log_level: str | None = None,
        cache_bytes: int = 256 * 2**20,
        cache_dir: str | None = None,
        cache_dir_bytes: int = 8 * 2**30,
        shared_memory_dir: str | None = None,
        shared_memory_lease: float = 60.0,
        shared_memory_bytes: int = 2**32,
    ) -> None:
        # Compiled programs and the self-check's verdict survive restarts (see startup.py).
        self.compilation_cache_dir = startup.use_compilation_cache(compilation_cache_dir)
        # jax.jit programs compiled before: with the cache on, not priced as a compile again.
        self._compilation_cached = self.compilation_cache_dir is not None
        self._compiled: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self.limits = limits or Limits()
        self.admission = Admission(
            self.limits.max_streams,
            self.limits.max_inflight_bytes,
            max_caller_streams=self.limits.max_caller_streams,
            max_caller_bytes=self.limits.caller_bytes,
            max_heavy=self.limits.max_heavy_requests or 4 * max(1, whole_workers - 1),
        )
        # Heavy work (Limits.heavy_flops or more) runs at most this many at once, one fewer
        # than the whole-tensor workers, so that cheaper requests always find a worker; the
        # rest wait here (cancellably), at most max_heavy admitted in all.
        self.heavy_slots = max(1, whole_workers - 1)
        self._heavy = _Slots(self.heavy_slots)
        self.heavy_waiting = 0
        self.identity: ServerIdentity = server_identity()
        self.regions = (
            Regions(shared_memory_dir, lease_seconds=shared_memory_lease, max_bytes=shared_memory_bytes)
            if shared_memory_dir
            else None
        )
        # Identical requests share one generation; repeats come from memory or disk.
        fingerprint = f"{self.identity.fingerprint}/jaxinit {self.identity.jaxinit_version}"
        self.results = results.Results(
            cache_bytes,
            fingerprint,
            make=self._generation,
            disk=DiskCache(cache_dir, cache_dir_bytes, fingerprint, queue_bytes=max(cache_bytes, 2**20))
            if cache_dir and cache_bytes
            else None,
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaxinit-jax")
        # Model expansion and checks: linear in a model's size, so seconds for a big one; on
        # threads of their own, so small requests never queue behind them.
        self._model_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxinit-models")
        # Whole-tensor requests run in worker processes, never in this one (see whole.py).
        self.whole = WholePool(
            whole_workers,
            hard_rss=worker_rss_bytes,
            soft_rss=worker_rss_bytes // 2,
            compilation_cache_dir=self.compilation_cache_dir,
            log_level=log_level,
        )
        self.stalls = StallWatch(stall_seconds) if stall_seconds else None
        self.ready = False
        self.stopping = False  # no new work is taken
        self.preparing = 0  # model requests being expanded (not admitted yet)
        self.aborted = threading.Event()  # in-flight work is cut off

    def describe(self) -> dict[str, Any]:
        """The registry, dtypes, key implementations and server identity, as plain data."""
        return {
            "initializers": [
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "source": spec.source,
                    "summary": spec.summary,
                    "uses_key": spec.uses_key,
                    "arguments": [
                        {
                            "name": a.name,
                            "type": a.type,
                            "required": a.required,
                            "default_json": a.default_json,
                            "choices": list(a.choices),
                            "doc": a.doc,
                        }
                        for a in spec.arguments
                    ],
                }
                for spec in CATALOG.values()
            ],
            # what this JAX has of what the protocol names (an older JAX lacks some)
            "dtypes": [name for name in DTYPE_NAMES if _jax_compat.unsupported(dtype=name) is None],
            "key_impls": [impl for impl in KEY_IMPLS if impl in _jax_compat.KEY_IMPLS],
            "server": {
                **self.identity.as_dict(),
                "threefry_partitionable": self.identity.defaults.threefry_partitionable,
                "enable_x64": self.identity.defaults.enable_x64,
            },
            "shared_memory": {"directory": str(self.regions.directory)} if self.regions else None,
        }

    def shared_memory(self, token: str) -> Regions:
        """The regions a caller with ``token`` may have answers written into; PermissionDenied
        when this server offers none or the token is not its own."""
        if self.regions is None:
            raise PermissionDenied(
                "this server offers no shared memory (start it with --shared-memory); fetch the bytes in the stream"
            )
        self.regions.check(token)
        return self.regions

    def prepare(self, params: GenerateParams) -> Resolved:
        """Validate and resolve a request (cheap, no JAX work). Raises domain errors."""
        return resolve(params, self.limits, self.identity.defaults)

    def etag(self, resolved: Resolved) -> str:
        """A strong ETag: the bytes are a pure function of the request on this JAX and backend."""
        text = f"{resolved.canonical}\n{self.identity.fingerprint}"
        return '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'

    async def prepare_model(self, params: InitModelParams, *, caller: str | None = None) -> ResolvedModel:
        """Expand and validate a whole-model request (no JAX work, but linear in its size: on
        a worker thread, never on the event loop). Raises domain errors."""
        ticket = self.admission.admit(0, caller)  # one of the server's (and caller's) streams meanwhile
        self.preparing += 1
        try:
            # The ticket is held until the expansion ends, even when its caller leaves (see _threads).
            return await on_thread(
                self._model_executor,
                lambda _: resolve_model(params, self.limits, self.identity.defaults),
                aborted=self.aborted,
            )
        finally:
            self.preparing -= 1
            ticket.release()

    def model_metadata(self, model: ResolvedModel) -> dict[str, str]:
        """String metadata for a model file: what produced it (safetensors ``__metadata__``)."""
        keyed = next((r for r in model.requests if r.key is not None), model.requests[0])
        return file_metadata(
            self.identity.as_dict(),
            mode=model.mode,
            layout=model.layout,
            root=model.root,
            threefry_partitionable=keyed.threefry_partitionable,
            enable_x64=keyed.enable_x64,
            model_digest=model.digest,
            jit=model.jit,
        )

    async def check_model(self, model: ResolvedModel) -> None:
        """Refuse, before a byte is sent, every tensor JAX would refuse (an orthogonal bias, a
        fan of a 1-D shape) and every one this server will not make (see :meth:`price`)."""
        loop = asyncio.get_running_loop()

        def check_all() -> None:
            seen = set()
            for out, request in zip(model.outputs, model.requests, strict=True):
                # The key changes the values, never what JAX accepts.
                what = (
                    request.spec.name,
                    repr(request.args),
                    request.shape,
                    request.dtype,
                    request.enable_x64,
                    request.threefry_partitionable,
                    request.key.impl if request.key else None,
                    request.jit,
                )
                if what not in seen:
                    seen.add(what)
                    try:
                        engine.validate(request)
                        self.price(request)
                    except JaxinitError as exc:
                        raise type(exc)(f"{out.name}: {exc.message}") from None

        await loop.run_in_executor(self._model_executor, check_all)

    def admit_model(self, model: ResolvedModel, *, ahead: int = 2, caller: str | None = None) -> Ticket:
        """The model's share of capacity, taken once before its first byte: one stream, and
        the memory of the ``ahead + 1`` costliest tensors it holds at once (a tensor laid
        out for PyTorch is gathered and transposed: twice its bytes more). Raises Overloaded."""
        if self.stopping:
            raise stopping()
        costs = []
        for out, request in zip(model.outputs, model.requests, strict=True):
            memory = self._cost(request).memory
            costs.append(memory + (2 * request.nbytes if out.needs_whole else 0))
        return self.admission.admit(sum(sorted(costs, reverse=True)[: ahead + 1]), caller)

    async def generate_model(
        self, model: ResolvedModel, *, ahead: int = 2, ticket: Ticket | None = None
    ) -> AsyncIterator[tuple[str, TensorStream | JaxinitError]]:
        """(name, tensor) of the model in order, each made at most ``ahead`` tensors before
        it is sent; a tensor JAX refuses comes as its domain error, and the others follow.
        ``ticket`` (from :meth:`admit_model`) is released when the stream ends.
        """
        pending: list[tuple[str, asyncio.Future[TensorStream]]] = []
        items = iter(zip(model.outputs, model.requests, strict=True))
        held = ticket or self.admission.admit(0)
        try:
            while True:
                while len(pending) <= ahead and (item := next(items, None)) is not None:
                    out, request = item
                    made = asyncio.ensure_future(self.generate(request, output=out, ticket=held))
                    pending.append((out.name, made))
                if not pending:
                    return
                name, future = pending.pop(0)
                try:
                    yield name, await future
                except JaxinitError as exc:
                    yield name, exc
        finally:
            for _, future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    future.result().close()  # made ahead, never sent: let its worker go
                future.cancel()
            try:
                if pending:  # tensors made ahead may be on a JAX thread: the share is held until they end
                    await asyncio.wait([future for _, future in pending])
            finally:
                held.release()

    def _cost(self, resolved: Resolved, *, gathered: bool = False) -> engine.Cost:
        """:func:`engine.price`, knowing which jax.jit programs this server compiled before
        (with the compilation cache on, a worker that has not reads it back: no compile)."""
        program = engine.program(resolved)
        compiled = program is not None and self._compilation_cached and program in self._compiled
        return engine.price(resolved, gathered=gathered, compiled=compiled)

    def _was_compiled(self, resolved: Resolved) -> None:
        if (program := engine.program(resolved)) is not None:
            self._compiled[program] = None
            self._compiled.move_to_end(program)
            while len(self._compiled) > 4096:
                self._compiled.popitem(last=False)

    def price(self, resolved: Resolved, *, gathered: bool = False) -> engine.Cost:
        """What ``resolved`` costs; raises :class:`TooLarge` for what this server will never do
        (more working memory than all requests together may hold, or more compute than one
        whole-tensor request may take)."""
        cost = self._cost(resolved, gathered=gathered)
        limits = self.limits
        what = f"{resolved.spec.name} on a {resolved.out_dtype} tensor of shape {list(resolved.shape)[:8]}"
        if cost.memory > limits.max_inflight_bytes:
            how = "is made whole" if cost.route == engine.WHOLE else "is built whole in memory"
            raise TooLarge(
                f"{what} {how} and needs ~{_gib(cost.memory)} of working memory, over this server's "
                f"{_gib(limits.max_inflight_bytes)} for all requests (--max-inflight-bytes)"
                + (
                    "; ask for a chunked family, or binary data instead of JSON"
                    if cost.route != engine.WHOLE or resolved.spec.name not in ("orthogonal", "delta_orthogonal")
                    else ""
                )
            )
        if cost.compute > limits.max_whole_flops:
            raise TooLarge(
                f"{what} needs ~{cost.compute / 1e9:.0f} GFLOP of compute (mostly {cost.why}), over this "
                f"server's {limits.max_whole_flops / 1e9:.0f} GFLOP per request (--max-whole-flops)"
            )
        return cost

    def admit(self, resolved: Resolved, *, gathered: bool = False, caller: str | None = None) -> Ticket:
        """``resolved``'s share of capacity, priced first. Raises TooLarge or Overloaded, and
        ServerUnavailable while the server stops. ``caller``: who asks (an adapter's name for
        the connection, or the API key), charged against its own share too. A tensor made
        already or being made for another caller costs only its sending (see :mod:`results`)."""
        cost = self.price(resolved, gathered=gathered)
        if self.stopping:
            raise stopping()
        share = self.results.share(resolved)
        memory, heavy = cost.memory, cost.compute >= self.limits.heavy_flops
        if share is not None and share.how in (results.HIT, results.SHARED):
            heavy = False  # made, or being made on another caller's ticket
            # Made already, or paid for by the caller making it: what sending it holds.
            count = resolved.stop - resolved.start
            itemsize = DTYPES[resolved.out_dtype].itemsize
            memory = SEND_BYTES + 2 * self.limits.chunk_bytes + (count * (itemsize + 64) if gathered else 0)
        try:
            ticket = self.admission.admit(memory, caller, heavy=heavy)
        except BaseException:
            if share is not None:
                share.release()
            raise
        ticket.share = share
        return ticket

    async def generate(
        self,
        resolved: Resolved,
        *,
        output: Output | None = None,
        ticket: Ticket | None = None,
        gathered: bool = False,
        caller: str | None = None,
        release_with_tensor: bool = False,
    ) -> TensorStream:
        """Get the tensor ready to stream. Raises domain errors, and :class:`Overloaded` at
        once when the server is at its limits (``ticket``: capacity taken already, as a
        model stream does, released by whoever took it unless ``release_with_tensor``;
        ``gathered``: the answer will be built whole, as JSON is).

        An identical tensor made already or being made is shared (see :mod:`results`).
        Whole-tensor requests are made by a worker process here, so JAX's errors for them
        arrive before any byte is sent. If the caller goes away, the work stops.
        """
        owned = ticket is None or release_with_tensor
        if ticket is None:
            ticket = self.admit(resolved, gathered=gathered, caller=caller)
        share = ticket.share
        ticket.share = UNSET  # taken over here
        if share is UNSET:  # a ticket priced without looking (a model's): look now
            share = self.results.share(resolved)
        submitted = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            generation = None if share is None else await self._shared(share, resolved, ticket, timings)
            if generation is None:  # not shared, or a stored tensor that failed its check: made here
                if share is not None:
                    share.release()
                    share = None
                generation = await self._generation(resolved, timings)
            if output is not None and output.needs_whole:
                # A model's tensor in the PyTorch layout (a transpose): rearranged here, where
                # the model is streamed, so the byte stream below only sends.
                try:
                    made = await gather(generation, timings)
                finally:
                    generation.close()
                generation = engine.Generation(
                    resolved, generation.key_data, route=generation.route, array=output.finish(made).reshape(-1)
                )
        except BaseException:
            if share is not None:
                share.release()
            if owned:
                ticket.release()
            raise
        timings.setdefault("generate", time.perf_counter() - submitted)
        return TensorStream(
            resolved,
            generation,
            self._provenance(resolved, generation.key_data),
            shape=output.shape if output is not None else None,
            timings=timings,
            ticket=ticket if owned else None,
            aborted=self.aborted,
            watch=self.stalls,
            cache=share.how if share is not None else results.NONE,
        )

    async def _generation(self, resolved: Resolved, timings: dict[str, float] | None = None) -> engine.Generation:
        """``resolved`` ready to produce, by its route: a worker process for a whole tensor,
        a JAX thread for the others."""
        submitted = time.perf_counter()
        timings = {} if timings is None else timings
        heavy = self._cost(resolved).compute >= self.limits.heavy_flops
        if heavy:  # one of the heavy slots, held until the generation is closed
            self.heavy_waiting += 1
            try:
                await unless_aborted(self._heavy.acquire(), self.aborted)
            finally:
                self.heavy_waiting -= 1
        try:
            generation = await self._generation_unbounded(resolved, timings, submitted)
        except BaseException:
            if heavy:
                self._heavy.release()
            raise
        self._was_compiled(resolved)  # (a jit program: made, so compiled and kept by the cache)
        if heavy:
            release = _once(self._heavy.release)
            generation.also_on_close(release)
            weakref.finalize(generation, release)  # a generation dropped unclosed cannot keep its slot
        return generation

    async def _generation_unbounded(
        self, resolved: Resolved, timings: dict[str, float], submitted: float
    ) -> engine.Generation:
        if engine.route(resolved) == engine.WHOLE:
            job = await self.whole.run(resolved)
            timings["generate"] = time.perf_counter() - submitted
            return engine.Generation(
                resolved,
                job.key_data,
                route=engine.WHOLE,
                pieces=lambda: job.pieces(self.limits.chunk_bytes),
                close=job.close,
            )

        def prepare(stop: threading.Event) -> engine.Generation:
            started = time.perf_counter()
            timings["queue"] = started - submitted
            try:
                return engine.prepare(resolved, stop=stop)
            finally:
                timings["generate"] = time.perf_counter() - started

        # A caller that leaves stops it between slices, and keeps its admission until the
        # thread is done; a server that stops answers ServerUnavailable (see _threads).
        return await on_thread(self._executor, prepare, aborted=self.aborted, discard=engine.Generation.close)

    async def _shared(
        self, share: results.Share, resolved: Resolved, ticket: Ticket, timings: dict[str, float]
    ) -> engine.Generation | None:
        """``resolved`` from a shared answer: a slice of a cached tensor (checked against its
        digests first: None when it failed, to be made again), or a flight's elements as
        they are made (started here if nobody has; the ticket of the caller that made it a
        flight pays for making it, and is held until it is made)."""
        start, stop = resolved.start, resolved.stop
        whole = not resolved.is_range
        # A whole tensor: same-host callers are handed its sealed buffer; what is sent must
        # match the digest fixed when it was made.
        sealed = functools.partial(self.results.sealed, share) if whole else None
        if share.entry is not None:
            entry = share.entry
            if not await self.results.checked(share):
                return None
            return engine.Generation(
                resolved,
                entry.key_data,
                route="cache",
                array=entry.array[start:stop],
                close=share.release,
                sealed=sealed,
                fixed_digest=(lambda: entry.stored.digest) if whole else None,
            )
        flight = share.flight
        assert flight is not None
        began = time.perf_counter()
        self.results.start(flight, ticket.hold() if share.how in (results.MISS, results.DISK) else None)
        key_data = await flight.key()
        if share.how == results.DISK:
            share.how = flight.how  # a disk entry found wrong is made instead: a miss
        timings["generate"] = time.perf_counter() - began
        return engine.Generation(
            resolved,
            key_data,
            route="shared",
            feed=lambda: flight.pieces(start, stop),
            close=share.release,
            sealed=sealed,
            fixed_digest=(lambda: flight.stored.digest if flight.stored is not None else None) if whole else None,
        )

    def warm_up(self, *, requests: bool = True) -> None:
        """Make serving exact, then (``requests``) fast: prove the chunked families against
        eager JAX (disabling any that differs; with a compilation cache, the verdict stored
        for exactly this installation is read instead, see :mod:`startup`), then run one
        small request of each common kind (unless the cache holds their programs already)
        and start the whole-tensor workers, so that the first real requests are not slow."""
        began = time.perf_counter()
        if requests:
            # They load JAX meanwhile, and join the pool when they have (not waited for: a
            # whole-tensor request that comes first waits for one).
            self.whole.begin()
        directory = self.compilation_cache_dir
        print_ = startup.fingerprint() if directory else {}
        verdict = startup.load_verdict(directory, print_) if directory else None
        keep = directory is not None and (verdict is None or (requests and not verdict.warmed))
        if verdict is None:
            verdict = startup.Verdict(engine.self_check(), warmed=False)
            account = [f"self-check {time.perf_counter() - began:.2f} s"]
        else:
            for name, why in verdict.disabled.items():
                chunked.disable(name, why)
                log.error("chunking disabled for %s, which now runs whole: %s (stored self-check verdict)", name, why)
            account = ["self-check verdict read from the compilation cache"]
        chunked.proven()
        if requests and not verdict.warmed:
            started = time.perf_counter()
            # Chunk programs for the common families and dtypes, in every chunk size.
            for dtype in ("float32", "bfloat16"):
                for name in ("lecun_normal", "he_normal", "glorot_uniform", "normal"):
                    size = chunked.MIN_CHUNK
                    while size <= chunked.MAX_CHUNK:
                        params = GenerateParams(name, (size // 64, 64), dtype=dtype, key=Key(seed=0))
                        for _ in engine.prepare(self.prepare(params)).produce():
                            pass
                        size *= 2
            engine.prepare(self.prepare(GenerateParams("zeros", (2, 2))))
            verdict.warmed = directory is not None  # their programs are in the cache now
            account.append(f"warm-up {time.perf_counter() - started:.2f} s")
        elif requests:
            account.append("warm-up programs in the compilation cache")
        if keep:
            assert directory is not None
            startup.store_verdict(directory, print_, verdict)
        log.info("start-up: %s; %.2f s in all", "; ".join(account), time.perf_counter() - began)
        self.ready = True

    def state(self) -> dict[str, Any]:
        """Readiness with the pools' state, as /readyz shows it."""
        return {
            "ready": self.ready,
            "whole_tensor_workers": self.whole.state(),
            # Families the warm-up self-check found to differ from this JAX: they run whole.
            "chunking": {"disabled": chunked.disabled(), "disabled_count": len(chunked.disabled())},
            "stalled_readers_disconnected": self.stalls.disconnected if self.stalls else 0,
            "results": self.results.state(),
            "shared_memory": self.regions.state() if self.regions else None,
            "admission": {
                "streams": self.admission.streams,
                "max_streams": self.admission.max_streams,
                "bytes": self.admission.bytes,
                "max_bytes": self.admission.max_bytes,
                "callers": len(self.admission.callers),
                "max_caller_streams": self.admission.max_caller_streams,
                "max_caller_bytes": self.admission.max_caller_bytes,
                "heavy": self.admission.heavy,
                "max_heavy": self.admission.max_heavy,
                "heavy_waiting": self.heavy_waiting,
                "heavy_slots": self.heavy_slots,
            },
        }

    @property
    def idle(self) -> bool:
        """Nothing in flight: no stream admitted, no model being expanded."""
        return self.admission.streams == 0 and self.preparing == 0

    def stop_accepting(self) -> None:
        """Refuse new work (ServerUnavailable, retryable); what is in flight goes on."""
        self.ready = False
        self.stopping = True

    def abort(self) -> None:
        """Cut off the work in flight: whole-tensor workers are killed and streams end, each
        caller with ServerUnavailable (retryable elsewhere)."""
        self.stop_accepting()
        self.aborted.set()
        self.whole.close()

    def close(self) -> None:
        """Stop: whole-tensor workers are killed (their callers get ServerUnavailable)."""
        self.stop_accepting()
        self.whole.close()
        if self.regions is not None:
            self.regions.close()
        if self.results.disk is not None:
            self.results.disk.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model_executor.shutdown(wait=False, cancel_futures=True)

    def _provenance(self, resolved: Resolved, key_data: tuple[int, ...]) -> Provenance:
        return Provenance(
            **self.identity.as_dict(),
            key_impl=resolved.key.impl if resolved.key else "",
            key_data=tuple(key_data),
            threefry_partitionable=resolved.threefry_partitionable,
            enable_x64=resolved.enable_x64,
            canonical_request=resolved.canonical,
            request_digest=resolved.digest,
        )
