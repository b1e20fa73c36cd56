"""Whole models over the same path as one tensor: expanded off the event loop, every tensor
planned (routed and priced) once, admitted once for the model, then its tensors made in
order, each at most ``ahead`` tensors before it is sent (tensor i+1 is produced while
tensor i goes out), each an ordinary :meth:`Service.generate` over its plan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jaxinit.protocol.codec import DTYPES
from jaxinit.protocol.errors import JaxinitError
from jaxinit.protocol.expansion import Output, file_metadata
from jaxinit_server.core import engine
from jaxinit_server.core._threads import on_thread
from jaxinit_server.core.admission import Admission, Ticket
from jaxinit_server.core.delivery import STREAM, Delivery
from jaxinit_server.core.model_init import InitModelParams, ResolvedModel, resolve_model
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.provenance import ServerIdentity
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import Limits, Resolved
from jaxinit_server.core.source import Made, Source
from jaxinit_server.core.stream import TensorStream, stopping


class Host(Protocol):
    """What model orchestration uses of its :class:`~service.Service`."""

    limits: Limits
    identity: ServerIdentity
    admission: Admission
    aborted: threading.Event
    stopping: bool

    @property
    def jax_pool(self) -> Executor: ...

    @property
    def model_pool(self) -> Executor: ...

    def plan(self, resolved: Resolved) -> Plan: ...

    def regions_for(self, delivery: Delivery) -> Regions | None: ...

    async def generate(
        self, what: Plan, *, delivery: Delivery = ..., output: Output | None = ..., ticket: Ticket | None = ...
    ) -> TensorStream: ...


__all__ = ["AHEAD", "Host", "Models", "PlannedModel", "laid_out"]

AHEAD = 2  # tensors made ahead of the one being sent


@dataclass(frozen=True)
class PlannedModel:
    """A resolved model and the plan of each of its tensors, in order."""

    model: ResolvedModel
    plans: tuple[Plan, ...]


class Models:
    """The model requests of one service (see the module's doc)."""

    def __init__(self, service: Host) -> None:
        self._service = service
        self.preparing = 0  # model requests being expanded (not admitted yet)
        # The plans :meth:`check` made, by model, while the model lives: a model handed on
        # without them (as the REST route does) is not priced again.
        self._plans: dict[int, tuple[Plan, ...]] = {}

    async def prepare(self, params: InitModelParams, *, caller: str | None = None) -> ResolvedModel:
        """Expand and validate a whole-model request (no JAX work, but linear in its size: on
        a worker thread, never on the event loop). Raises domain errors."""
        service = self._service
        ticket = service.admission.admit(0, caller)  # one of the server's (and caller's) streams meanwhile
        self.preparing += 1
        try:
            # The ticket is held until the expansion ends, even when its caller leaves (see _threads).
            return await on_thread(
                service.model_pool,
                lambda _: resolve_model(params, service.limits, service.identity.defaults),
                aborted=service.aborted,
            )
        finally:
            self.preparing -= 1
            ticket.release()

    def metadata(self, model: ResolvedModel) -> dict[str, str]:
        """String metadata for a model file: what produced it (safetensors ``__metadata__``)."""
        keyed = next((r for r in model.requests if r.key is not None), model.requests[0])
        return file_metadata(
            self._service.identity.as_dict(),
            mode=model.mode,
            layout=model.layout,
            root=model.root,
            threefry_partitionable=keyed.threefry_partitionable,
            enable_x64=keyed.enable_x64,
            model_digest=model.digest,
            jit=model.jit,
        )

    async def check(self, model: ResolvedModel) -> PlannedModel:
        """Plan every tensor, and refuse, before a byte is sent, every one JAX would refuse
        (an orthogonal bias, a fan of a 1-D shape) or this server will not make (on the JAX
        pool: JAX traces some of them)."""
        service = self._service

        def check_all() -> PlannedModel:
            seen = set()
            plans = []
            for out, request in zip(model.outputs, model.requests, strict=True):
                try:
                    plan = service.plan(request)
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
                        engine.validate(plan)
                except JaxinitError as exc:
                    raise type(exc)(f"{out.name}: {exc.message}") from None
                plans.append(plan)
            return PlannedModel(model, tuple(plans))

        planned = await asyncio.get_running_loop().run_in_executor(service.jax_pool, check_all)
        self._plans[id(model)] = planned.plans
        weakref.finalize(model, self._plans.pop, id(model), None)
        return planned

    def planned(self, model: ResolvedModel | PlannedModel) -> PlannedModel:
        """``model`` with its plans (those :meth:`check` made, else made now)."""
        if isinstance(model, PlannedModel):
            return model
        plans = self._plans.get(id(model))
        if plans is None or len(plans) != len(model.requests):
            plans = tuple(self._service.plan(request) for request in model.requests)
        return PlannedModel(model, plans)

    def admit(self, model: ResolvedModel | PlannedModel, *, ahead: int = AHEAD, caller: str | None = None) -> Ticket:
        """The model's share of capacity, taken once before its first byte: one stream, and
        the memory of the ``ahead + 1`` costliest tensors it holds at once (a tensor laid
        out for PyTorch is written into a buffer of its own as it is made, and sent from
        it: its bytes more). Raises Overloaded."""
        service = self._service
        if service.stopping:
            raise stopping()
        planned = self.planned(model)
        costs = [
            plan.cost.memory + (plan.resolved.nbytes if out.needs_whole else 0)
            for out, plan in zip(planned.model.outputs, planned.plans, strict=True)
        ]
        return service.admission.admit(sum(sorted(costs, reverse=True)[: ahead + 1]), caller)

    async def generate(
        self,
        model: ResolvedModel | PlannedModel,
        *,
        ahead: int = AHEAD,
        ticket: Ticket | None = None,
        delivery: Delivery = STREAM,
    ) -> AsyncIterator[tuple[str, TensorStream | JaxinitError]]:
        """(name, tensor) of the model in order, each made at most ``ahead`` tensors before
        it is sent and delivered as ``delivery`` says; a tensor JAX refuses comes as its
        domain error, and the others follow. ``ticket`` (from :meth:`admit`) is released
        when the stream ends."""
        service = self._service
        try:
            service.regions_for(delivery)  # a token refused refuses the model, not each tensor
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        planned = self.planned(model)
        pending: list[tuple[str, asyncio.Future[TensorStream]]] = []
        items = iter(zip(planned.model.outputs, planned.plans, strict=True))
        held = ticket or service.admission.admit(0)
        try:
            while True:
                while len(pending) <= ahead and (item := next(items, None)) is not None:
                    out, plan = item
                    made = asyncio.ensure_future(service.generate(plan, output=out, ticket=held, delivery=delivery))
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


async def laid_out(
    source: Source, output: Output | None, dtype: str, *, executor: Executor, aborted: threading.Event | None = None
) -> Source:
    """A model's tensor as its output lays it out. In the PyTorch layout (a transpose) each
    piece is written, as it is made, to its place in one buffer of the delivered tensor
    (:meth:`Output.arranged`), on ``executor`` (the JAX pool: never on the event loop, which
    sends the other tensors meanwhile); the stream then sends from that buffer. No gathered
    copy of the generated tensor is made."""
    if output is None or not output.needs_whole:
        return source
    out = np.empty(output.shape, DTYPES[dtype])
    view = output.arranged(out)
    filled = 0
    try:
        async with contextlib.aclosing(source.pieces()) as made:
            async for piece in made:
                start, filled = filled, filled + piece.size
                if filled > out.size:
                    break
                if piece.nbytes <= INLINE_BYTES:
                    _fill(view, start, piece)
                else:
                    await on_thread(executor, functools.partial(_place, view, start, piece), aborted=aborted)
    finally:
        source.close()
    if filled != out.size:
        raise RuntimeError(f"{output.name}: its source made {filled} elements of {out.size}")
    return Made(source.key_data, out.reshape(-1))


INLINE_BYTES = 2**16  # a piece this small is laid out on the event loop: a thread hop costs more


def _place(view: np.ndarray, start: int, values: np.ndarray, stop: threading.Event) -> None:
    _fill(view, start, values)


def _fill(view: np.ndarray, start: int, values: np.ndarray) -> None:
    """Write ``values`` (flat) into ``view`` from its flat element ``start`` on, in ``view``'s
    C order: whole rows of its first axis at once, the rows a piece only begins or ends one
    axis down. Of exactly its dtype (a difference is an error, never a conversion)."""
    if view.ndim <= 1:
        np.copyto(view.reshape(-1)[start : start + values.size], values, casting="no")
        return
    inner = math.prod(view.shape[1:])
    if not values.size:
        return
    row, offset = divmod(start, inner)
    done = 0
    if offset:  # the rest of a row the last piece began
        done = min(inner - offset, values.size)
        _fill(view[row], offset, values[:done])
        row += 1
    whole = (values.size - done) // inner
    if whole:
        rows = values[done : done + whole * inner].reshape(whole, *view.shape[1:])
        np.copyto(view[row : row + whole], rows, casting="no")
        done, row = done + whole * inner, row + whole
    if done < values.size:  # the start of a row the next piece ends
        _fill(view[row], 0, values[done:])
