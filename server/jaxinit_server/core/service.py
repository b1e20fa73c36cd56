"""The service facade the adapters call: prepare (a priced plan), admit, generate (a tensor
ready to deliver), models, and the server's life (warm-up, state, stop)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jaxinit.protocol.errors import JaxinitError, PermissionDenied
from jaxinit.protocol.model import Output
from jaxinit_server.core import describe, engine, results, startup, warmup
from jaxinit_server.core.admission import Admission, Ticket
from jaxinit_server.core.config import Config
from jaxinit_server.core.delivery import STREAM, Delivery, Region, gathered_form
from jaxinit_server.core.disk_cache import DiskCache
from jaxinit_server.core.model_init import InitModelParams, ResolvedModel
from jaxinit_server.core.models import Models, PlannedModel, laid_out
from jaxinit_server.core.plan import Cost, Plan, refuse
from jaxinit_server.core.production import Production, Programs
from jaxinit_server.core.provenance import ServerIdentity, server_identity
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import GenerateParams, Limits, Resolved, resolve
from jaxinit_server.core.source import Source
from jaxinit_server.core.stream import StallWatch, TensorStream, stopping
from jaxinit_server.core.whole import WholePool

__all__ = ["Admitted", "Service"]

SEND_BYTES = 64 * 2**10  # what streaming a tensor made already holds, besides its chunks in transit


@dataclass
class Admitted:
    """What admission took for a plan: its ticket (the capacity) and, when the answer is
    shared with identical requests, the result cache's hold it was priced as."""

    plan: Plan
    ticket: Ticket
    share: results.Share | None = None

    def release(self) -> None:
        """Give it all back (an admitted request never generated)."""
        if self.share is not None:
            self.share.release()
        self.ticket.release()


class Service:
    """Everything the transports need, with no knowledge of any transport. Built from a
    :class:`~config.Config` (or its limits and fields by name, as tests do)."""

    def __init__(self, config: Config | Limits | None = None, **options: Any) -> None:
        if not isinstance(config, Config):
            config = dataclasses.replace(Config(**options), limits=config or Limits())
        self.config = config
        # Compiled programs and the self-check's verdict survive restarts (see startup.py).
        self.compilation_cache_dir = startup.use_compilation_cache(config.compilation_cache_dir)
        self.limits = limits = config.limits
        heavy_slots = max(1, config.whole_workers - 1)
        self.admission = Admission.for_limits(limits, heavy_slots)
        self.identity: ServerIdentity = server_identity()
        self.regions = (
            Regions(
                config.shared_memory_dir, lease_seconds=config.shared_memory_lease, max_bytes=config.shared_memory_bytes
            )
            if config.shared_memory_dir
            else None
        )
        # Identical requests share one generation; repeats come from memory or disk.
        print_ = f"{self.identity.fingerprint}/jaxinit {self.identity.jaxinit_version}"
        queue = max(config.cache_bytes, 2**20)
        disk = (
            config.cache_dir
            and config.cache_bytes
            and DiskCache(config.cache_dir, config.cache_dir_bytes, print_, queue_bytes=queue)
        )
        self.results = results.Results(config.cache_bytes, print_, disk=disk or None)
        # The one pool every JAX call of this process runs on (see production.py), and model
        # expansion's own (no JAX, but seconds for a big model: small requests never wait on it).
        self.jax_pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="jaxinit-jax")
        self.model_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxinit-models")
        # Whole-tensor requests run in worker processes, never in this one (see whole.py).
        self.whole = WholePool(
            config.whole_workers,
            hard_rss=config.worker_rss_bytes,
            soft_rss=config.worker_rss_bytes // 2,
            compilation_cache_dir=self.compilation_cache_dir,
            log_level=config.log_level,
            executor=self.jax_pool,
        )
        self.aborted = threading.Event()  # in-flight work is cut off
        # Heavy work runs at most one fewer at once than the whole-tensor workers, so that
        # cheaper requests always find one (see admission.py).
        self.production = Production(
            self.jax_pool,
            self.whole,
            heavy_slots=heavy_slots,
            chunk_bytes=limits.chunk_bytes,
            aborted=self.aborted,
            programs=Programs(self.compilation_cache_dir is not None),
        )
        self.stalls = StallWatch(config.stall_seconds) if config.stall_seconds else None
        self.ready = False
        self.stopping = False  # no new work is taken
        self.models = Models(self)
        self.heavy_slots = heavy_slots

    @property
    def heavy_waiting(self) -> int:
        return self.production.heavy_waiting

    def describe(self) -> dict[str, Any]:
        """The registry, dtypes, key implementations and server identity, as plain data."""
        return describe.describe(self.identity, self.regions)

    def shared_memory(self, token: str) -> Regions:
        """The regions a caller with ``token`` may have answers written into; PermissionDenied
        when this server offers none or the token is not its own."""
        if self.regions is None:
            raise PermissionDenied(
                "this server offers no shared memory (start it with --shared-memory); fetch the bytes in the stream"
            )
        self.regions.check(token)
        return self.regions

    def regions_for(self, delivery: Delivery) -> Regions | None:
        """The shared memory ``delivery`` writes into (None: not a region)."""
        return self.shared_memory(delivery.token) if isinstance(delivery, Region) else None

    def prepare(self, params: GenerateParams) -> Plan:
        """Validate, resolve and price a request (cheap, no JAX work): its plan, which every
        later step reads. Raises domain errors, TooLarge for what this server never makes."""
        return self.plan(resolve(params, self.limits, self.identity.defaults))

    def plan(self, resolved: Resolved) -> Plan:
        """``resolved`` routed and priced once, with its whole tensor's identity."""
        cost = engine.price(resolved, compiled=self.production.programs.compiled(resolved))
        refuse(resolved, cost, cost.memory, self.limits)
        identity = results.whole_identity(resolved, self.results.fingerprint)
        return Plan(resolved, cost, identity, heavy=cost.compute >= self.limits.heavy_flops)

    def price(self, what: Plan | Resolved, *, gathered: bool = False) -> Cost:
        """What a request costs (``gathered``: built whole in memory, as JSON is); raises
        :class:`TooLarge` for what this server will never do."""
        plan = what if isinstance(what, Plan) else self.plan(what)
        if not gathered:
            return plan.cost
        memory = plan.cost.memory + plan.gathered_bytes
        refuse(plan.resolved, plan.cost, memory, self.limits)
        return dataclasses.replace(plan.cost, memory=memory)

    def etag(self, what: Plan | Resolved) -> str:
        """A strong ETag: the bytes are a pure function of the request on this JAX and backend."""
        resolved = what.resolved if isinstance(what, Plan) else what
        text = f"{resolved.canonical}\n{self.identity.fingerprint}"
        return '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'

    def admit(self, what: Plan | Resolved, *, delivery: Delivery = STREAM, caller: str | None = None) -> Admitted:
        """A plan's share of capacity. Raises TooLarge or Overloaded, and ServerUnavailable
        while the server stops. ``caller``: who asks (an adapter's name for the connection,
        or the API key), charged against its own share too. A tensor made already or being
        made for another caller costs only its sending (see :mod:`results`)."""
        plan = what if isinstance(what, Plan) else self.plan(what)
        gathered = gathered_form(delivery)
        if gathered is not None:
            gathered.check(self.limits, plan.resolved)
        extra = plan.gathered_bytes if gathered is not None and gathered.as_json else 0
        if extra:
            self.price(plan, gathered=True)  # TooLarge when it can never be built
        if self.stopping:
            raise stopping()
        share = self.results.share(plan)
        memory, heavy = plan.cost.memory + extra, plan.heavy
        if share is not None and share.how in (results.HIT, results.SHARED):
            heavy = False  # made, or being made on another caller's ticket
            memory = SEND_BYTES + 2 * self.limits.chunk_bytes + extra  # what sending it holds
        try:
            return Admitted(plan, self.admission.admit(memory, caller, heavy=heavy), share)
        except BaseException:
            if share is not None:
                share.release()
            raise

    async def generate(
        self,
        what: Plan | Resolved | Admitted,
        *,
        delivery: Delivery = STREAM,
        caller: str | None = None,
        output: Output | None = None,
        ticket: Ticket | None = None,
    ) -> TensorStream:
        """The tensor, ready to deliver as ``delivery`` says. ``what``: a plan (admitted here)
        or what :meth:`admit` took (released with the tensor); ``ticket``: a model's, for
        its tensors (``output``). Raises domain errors (JAX's included, before any byte),
        Overloaded at the server's limits. Identical tensors are shared (:mod:`results`)."""
        regions = self.regions_for(delivery)
        if isinstance(what, Admitted):
            admitted = what
        elif ticket is not None:
            plan = what if isinstance(what, Plan) else self.plan(what)
            admitted = Admitted(plan, ticket, self.results.share(plan))
        else:
            admitted = self.admit(what, delivery=delivery, caller=caller)
        plan, share = admitted.plan, admitted.share
        submitted, timings = time.perf_counter(), dict[str, float]()
        try:
            source = await self._source(admitted, timings)
            if source is None and share is not None:  # a stored tensor that failed its check: made here
                share.release()
                share = None
                source = await self.production.make(plan, timings)
            assert source is not None
            source = await laid_out(
                source, output, plan.resolved.out_dtype, executor=self.jax_pool, aborted=self.aborted
            )
        except BaseException:
            if share is not None:
                share.release()
            if ticket is None:
                admitted.ticket.release()
            raise
        timings.setdefault("generate", time.perf_counter() - submitted)
        return TensorStream(
            plan.resolved,
            source,
            self.identity.provenance(plan.resolved, source.key_data),
            shape=output.shape if output is not None else None,
            timings=timings,
            ticket=admitted.ticket if ticket is None else None,
            aborted=self.aborted,
            watch=self.stalls,
            cache=share.how if share is not None else results.NONE,
            regions=regions,
            route=plan.cost.route,
        )

    async def _source(self, admitted: Admitted, timings: dict[str, float]) -> Source | None:
        """The admitted plan's bytes: from the result cache when shared (it is handed the
        producer of the whole tensor, used if it makes it), else made for this caller."""
        plan, share = admitted.plan, admitted.share
        if share is None:
            return await self.production.make(plan, timings)
        make = functools.partial(self.production.make, plan.whole)
        return await self.results.open(share, plan, make, admitted.ticket.hold, timings)

    async def prepare_model(self, params: InitModelParams, *, caller: str | None = None) -> ResolvedModel:
        return await self.models.prepare(params, caller=caller)

    def model_metadata(self, model: ResolvedModel) -> dict[str, str]:
        return self.models.metadata(model)

    async def check_model(self, model: ResolvedModel) -> PlannedModel:
        return await self.models.check(model)

    def admit_model(self, model: ResolvedModel | PlannedModel, *, caller: str | None = None) -> Ticket:
        return self.models.admit(model, caller=caller)

    def generate_model(
        self, model: ResolvedModel | PlannedModel, *, ticket: Ticket | None = None, delivery: Delivery = STREAM
    ) -> AsyncIterator[tuple[str, TensorStream | JaxinitError]]:
        return self.models.generate(model, ticket=ticket, delivery=delivery)

    def warm_up(self, *, requests: bool = True) -> None:
        """See :func:`warmup.warm_up`."""
        warmup.warm_up(self, requests=requests)

    def state(self) -> dict[str, Any]:
        """Readiness with the pools' state, as /readyz shows it."""
        return describe.state(self)

    @property
    def idle(self) -> bool:
        """Nothing in flight: no stream admitted, no model being expanded."""
        return self.admission.streams == 0 and self.models.preparing == 0

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
        self.jax_pool.shutdown(wait=False, cancel_futures=True)
        self.model_pool.shutdown(wait=False, cancel_futures=True)
