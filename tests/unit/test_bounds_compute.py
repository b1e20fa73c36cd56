"""Compute is priced and bounded, and abandoned work keeps its admission until it ends.

Regression tests for issue 23: per-key derivation (``stack:4096,split:32768:1`` derived 134 M
keys on a JAX thread), rbg stacks (4,096 eager calls priced as a 32 KiB answer) and jit
compiles were unpriced; heavy work could take every worker; a caller that left had its
admission released while the derivation ran on; a caller waiting on a thread at SIGTERM
got a bare cancellation (uvicorn's plain 500)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import jax
import numpy as np
import pytest

from jaxinit.protocol.errors import Overloaded, ServerUnavailable, TooLarge
from jaxinit.protocol.keys import Key
from jaxinit_server.core import InitModelParams, Limits, Service, engine
from jaxinit_server.core._threads import on_thread
from jaxinit_server.core.admission import Admission
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.request import GenerateParams, PrngDefaults, Resolved, resolve

DEFAULTS = PrngDefaults(threefry_partitionable=True, enable_x64=False)


def _resolve(
    name: str,
    shape: tuple[int, ...],
    *,
    impl: str = "threefry2x32",
    derive: tuple[Any, ...] = (),
    jit: bool = False,
    limits: Limits | None = None,
    seed: int = 3,
) -> Resolved:
    params = GenerateParams(name, shape, dtype="float32", key=Key(seed=seed, impl=impl, derive=derive), jit=jit)
    return resolve(params, limits or Limits(), DEFAULTS)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    svc = Service(Limits(), whole_workers=2, cache_bytes=0)  # no worker started: pricing only
    try:
        yield svc
    finally:
        svc.close()


# --- pricing ------------------------------------------------------------------------------


def test_a_long_key_derivation_is_refused_before_any_work(service: Service) -> None:
    attack = _resolve("normal", (4096, 2), derive=(("stack", 4096), ("split", 32768, 1)))
    assert engine.derived_keys(attack.key) == (4096 + 4096 * 32768, 0)  # type: ignore[arg-type]
    with pytest.raises(TooLarge) as info:
        service.price(attack)
    message = info.value.message
    assert "--max-whole-flops" in message and "deriving 134221824 keys" in message, message


def test_an_rbg_stack_is_priced_per_eager_call(service: Service) -> None:
    attack = _resolve("lecun_normal", (4096, 8, 8), impl="rbg", derive=(("stack", 4096),))
    cost = engine.price(attack)
    assert cost.route == engine.WHOLE and cost.compute >= 4096 * engine.WHOLE_SLICE_FLOPS
    with pytest.raises(TooLarge, match=r"4096 slices made one call at a time.*--max-whole-flops"):
        service.price(attack)
    # unsafe_rbg alike; a smaller rbg stack is served (and heavy)
    with pytest.raises(TooLarge, match="--max-whole-flops"):
        service.price(_resolve("normal", (4096, 8), impl="unsafe_rbg", derive=(("stack", 4096),)))
    small = service.price(_resolve("lecun_normal", (256, 8, 8), impl="rbg", derive=(("stack", 256),)))
    assert service.limits.heavy_flops <= small.compute <= service.limits.max_whole_flops


def test_what_scanned_models_ask_stays_served(service: Service) -> None:
    """A threefry stack of the most slices, with a split per slice: priced, not refused."""
    for derive in [(("stack", 4096),), (("stack", 4096), ("split", 4096, 1)), (("stack", 64), ("fold_in", 3))]:
        cost = service.price(_resolve("lecun_normal", (derive[0][1], 8, 8), derive=derive))
        assert cost.route == engine.CHUNKED and 0 < cost.compute <= service.limits.max_whole_flops
    assert service.price(_resolve("normal", (16,), derive=(("split", 65536, 3),) * 8)).compute < 10**10


def test_a_jit_compile_is_priced(service: Service) -> None:
    """A whole jit request compiles a program per shape; a chunked one (its chunk programs are
    per scale and chunk size, like the eager ones) costs what the eager one does."""
    chunked_eager, chunked_jit = _resolve("lecun_normal", (64, 48)), _resolve("lecun_normal", (64, 48), jit=True)
    assert engine.price(chunked_jit) == engine.price(chunked_eager)
    eager, jitted = _resolve("orthogonal", (64, 48)), _resolve("orthogonal", (64, 48), jit=True)
    assert engine.price(jitted).compute >= engine.price(eager).compute + engine.COMPILE_FLOPS
    assert engine.price(jitted).compute >= service.limits.heavy_flops  # one compile at a time per spare worker
    tight = Service(Limits(max_whole_flops=engine.COMPILE_FLOPS // 2), whole_workers=1)
    try:
        with pytest.raises(TooLarge, match="jax.jit compile"):
            tight.price(jitted)
        tight.price(eager)
    finally:
        tight.close()


def test_cheap_requests_are_not_heavy(service: Service) -> None:
    for resolved in [
        _resolve("orthogonal", (64, 64)),
        _resolve("normal", (2**20,)),
        _resolve("lecun_normal", (256, 256), impl="rbg"),
        _resolve("lecun_normal", (8, 8, 8), derive=(("stack", 8),)),
    ]:
        assert service.price(resolved).compute < service.limits.heavy_flops, resolved.canonical


# --- admission of heavy work --------------------------------------------------------------


def test_heavy_requests_are_bounded_and_cheap_ones_still_admitted() -> None:
    admission = Admission(8, 10**9, max_caller_streams=8, max_heavy=1)
    first = admission.admit(10, "a", heavy=True)
    with pytest.raises(Overloaded, match="--max-heavy-requests"):
        admission.admit(10, "b", heavy=True)
    cheap = admission.admit(10, "b")  # another caller's cheap request: admitted
    assert (admission.heavy, admission.streams) == (1, 2)
    first.release()
    again = admission.admit(10, "b", heavy=True)
    for ticket in (cheap, again):
        ticket.release()
    assert (admission.heavy, admission.streams, admission.bytes) == (0, 0, 0)


def test_the_default_keeps_a_whole_tensor_worker_for_cheap_work() -> None:
    for workers, slots in [(1, 1), (2, 1), (4, 3)]:
        svc = Service(Limits(), whole_workers=workers)
        try:
            assert (svc.heavy_slots, svc.admission.max_heavy) == (slots, 4 * slots)
        finally:
            svc.close()
    svc = Service(Limits(max_heavy_requests=5), whole_workers=2)
    try:
        assert svc.admission.max_heavy == 5
    finally:
        svc.close()


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_a_victim_is_served_while_heavy_work_is_in_flight() -> None:
    """Heavy work (here: anything over 10**7 FLOP) runs on one of two whole-tensor workers at
    a time: a second heavy request waits for it, a third is refused at once (at most two
    admitted here), and another caller's cheap whole-tensor request is made and sent while
    the first is in flight, all equal to local JAX."""

    def rbg(seed: int) -> bytes:
        key = jax.random.key(seed, impl="rbg")
        return np.asarray(jax.nn.initializers.normal()(key, (1024, 1024), np.float32)).tobytes()

    async def main(service: Service) -> None:
        heavy = [_resolve("normal", (1024, 1024), impl="rbg", seed=s) for s in (1, 9, 10)]
        victim = _resolve("orthogonal", (16, 16), seed=2)
        assert service.price(heavy[0]).compute >= service.limits.heavy_flops > service.price(victim).compute
        held = await service.generate(heavy[0], caller="attacker")  # made; not read yet
        second = asyncio.ensure_future(service.generate(heavy[1], caller="attacker"))
        await _until(lambda: service.heavy_waiting == 1)  # waits for the heavy slot
        with pytest.raises(Overloaded, match="--max-heavy-requests"):
            await service.generate(heavy[2], caller="attacker")
        made = await (await service.generate(victim, caller="victim")).array()
        assert service.admission.heavy == 2 and not second.done()  # both heavy ones still in flight
        want = jax.nn.initializers.orthogonal()(jax.random.key(2), (16, 16), np.float32)
        assert made.tobytes() == np.asarray(want).tobytes()
        assert (await held.array()).tobytes() == rbg(1)  # sent and closed: the slot goes on
        assert (await (await second).array()).tobytes() == rbg(9)
        assert (service.admission.heavy, service.admission.streams, service.heavy_waiting) == (0, 0, 0)

    svc = Service(Limits(heavy_flops=10**7, max_heavy_requests=2), whole_workers=2, cache_bytes=0)
    try:
        asyncio.run(main(svc))
    finally:
        svc.close()


def test_a_heavy_generation_dropped_unclosed_gives_its_slot_back(monkeypatch: Any) -> None:
    async def main(service: Service) -> None:
        resolved = _resolve("lecun_normal", (8, 8, 8), derive=(("stack", 8),))
        generation = await service.production.make(service.plan(resolved))
        assert service.heavy_waiting == 0
        blocked = asyncio.ensure_future(service.production.make(service.plan(resolved)))
        await _until(lambda: service.heavy_waiting == 1)
        del generation  # never closed
        import gc

        gc.collect()
        (await blocked).close()
        assert service.heavy_waiting == 0

    svc = Service(Limits(heavy_flops=1), whole_workers=2, cache_bytes=0)
    try:
        asyncio.run(main(svc))
    finally:
        svc.close()


# --- abandoned work keeps its admission; SIGTERM is a retryable refusal -------------------


def test_an_abandoned_derivation_keeps_its_admission_until_the_thread_ends(monkeypatch: Any) -> None:
    inside, finish = threading.Event(), threading.Event()
    stops: list[threading.Event] = []
    real = engine.prepare

    def slow_prepare(resolved: Resolved, *, stop: threading.Event | None = None) -> engine.Generation:
        assert stop is not None
        stops.append(stop)
        inside.set()
        finish.wait(30)
        return real(resolved, stop=None)

    monkeypatch.setattr(engine, "prepare", slow_prepare)

    async def main(service: Service) -> None:
        task = asyncio.ensure_future(service.generate(_resolve("normal", (64, 64)), caller="leaver"))
        await asyncio.to_thread(inside.wait, 30)
        assert service.admission.streams == 1
        task.cancel()  # the caller goes away while JAX works
        await asyncio.sleep(0)
        await asyncio.to_thread(lambda: stops[0].wait(30))  # the work is told to stop...
        assert stops[0].is_set() and not task.done()
        assert service.admission.streams == 1  # ...and its admission is held until it ends
        finish.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (service.admission.streams, service.admission.bytes) == (0, 0)

    svc = Service(Limits(), workers=1, cache_bytes=0)
    try:
        asyncio.run(main(svc))
    finally:
        finish.set()
        svc.close()


def test_a_stacked_request_stops_between_slices() -> None:
    resolved = _resolve("lecun_normal", (64, 8, 8), derive=(("stack", 64),))
    stop = threading.Event()
    stop.set()
    with pytest.raises(ServerUnavailable, match="cancelled"):
        engine.prepare(resolved, stop=stop)
    made = np.concatenate(list(engine.prepare(resolved, stop=threading.Event()).produce()))
    assert made.size == 64 * 64


def test_work_on_a_thread_at_shutdown_is_server_unavailable() -> None:
    async def main() -> None:
        executor = ThreadPoolExecutor(max_workers=1)
        release = threading.Event()
        aborted = threading.Event()
        busy = asyncio.ensure_future(on_thread(executor, lambda stop: release.wait(30), aborted=aborted))
        queued = asyncio.ensure_future(on_thread(executor, lambda stop: 1))
        await asyncio.sleep(0)
        executor.shutdown(wait=False, cancel_futures=True)  # what Service.close does
        with pytest.raises(ServerUnavailable, match="shutting down"):
            await queued  # dropped from the queue: retryable, not a bare cancellation
        with pytest.raises(ServerUnavailable, match="shutting down"):
            await on_thread(executor, lambda stop: 1)  # nothing new is taken
        aborted.set()  # what Service.abort does at the end of the grace period
        with pytest.raises(ServerUnavailable, match="shutting down"):
            await busy
        release.set()

    asyncio.run(main())


def test_a_caller_waiting_on_a_thread_at_abort_gets_server_unavailable(monkeypatch: Any) -> None:
    inside, finish = threading.Event(), threading.Event()
    real = engine.prepare

    def slow_prepare(resolved: Resolved, *, stop: threading.Event | None = None) -> engine.Generation:
        inside.set()
        finish.wait(30)
        return real(resolved)

    monkeypatch.setattr(engine, "prepare", slow_prepare)

    async def main(service: Service) -> None:
        task = asyncio.ensure_future(service.generate(_resolve("normal", (64, 64))))
        await asyncio.to_thread(inside.wait, 30)
        service.abort()
        with pytest.raises(ServerUnavailable):
            await task

    svc = Service(Limits(), workers=1, cache_bytes=0)
    try:
        asyncio.run(main(svc))
    finally:
        finish.set()
        svc.close()


def test_an_abandoned_model_keeps_its_share_until_the_tensors_made_ahead_end(monkeypatch: Any) -> None:
    """A model stream whose reader goes after the first tensor: the tensors being made ahead
    on JAX threads keep the model's admission until their threads are done."""
    inside, finish = threading.Event(), threading.Event()
    real = engine.prepare

    def slow_prepare(plan: Plan, *, stop: threading.Event | None = None) -> engine.Generation:
        if plan.resolved.shape == (3, 3):  # the second and third tensors block
            inside.set()
            finish.wait(30)
        return real(plan, stop=stop)

    monkeypatch.setattr(engine, "prepare", slow_prepare)

    async def main(service: Service) -> None:
        model = {
            "params": [
                {"path": "a", "shape": [2, 2], "initializer": "normal"},
                {"path": "b", "shape": [3, 3], "initializer": "normal"},
                {"path": "c", "shape": [3, 3], "initializer": "normal"},
            ]
        }
        resolved = await service.prepare_model(InitModelParams(model=model, key=Key(seed=0)))
        ticket = service.admit_model(resolved)
        stream = cast("AsyncGenerator[Any, None]", service.generate_model(resolved, ticket=ticket))
        name, first = await stream.__anext__()
        assert name == "a" and not isinstance(first, BaseException)
        first.close()
        await asyncio.to_thread(inside.wait, 30)
        closing = asyncio.ensure_future(stream.aclose())  # the reader goes
        for _ in range(20):
            await asyncio.sleep(0)
        assert not closing.done() and service.admission.streams == 1  # held while JAX works
        finish.set()
        await closing
        assert (service.admission.streams, service.admission.bytes) == (0, 0)

    svc = Service(Limits(), workers=2, cache_bytes=0)
    try:
        asyncio.run(main(svc))
    finally:
        finish.set()
        svc.close()


def test_an_empty_stacked_request_derives_no_batch(monkeypatch: Any) -> None:
    """A 0-size stacked tensor (or an empty range of one) has no slice to make: its batch of
    keys (here 134 M) is not derived; the provenance's key data is the head key's, as before."""
    derive = (("fold_in", 5), ("stack", 4096), ("split", 32768, 1))
    full = _resolve("normal", (4096, 2), derive=derive)
    empty = _resolve("normal", (4096, 0), derive=derive)
    assert engine.route(empty) == engine.EMPTY
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_batch_keys", lambda key: pytest.fail("derived the batch"))
        generation = engine.prepare(empty)
    assert generation.array is not None and generation.array.size == 0
    head = jax.random.fold_in(jax.random.key(3), np.uint32(5))
    assert generation.key_data == tuple(int(w) for w in np.asarray(jax.random.key_data(head)))
    assert engine.price(full).compute > engine.price(empty).compute


def test_a_caller_waiting_for_a_heavy_slot_at_abort_gets_server_unavailable() -> None:
    async def main(service: Service) -> None:
        resolved = _resolve("lecun_normal", (8, 8, 8), derive=(("stack", 8),))
        held = await service.production.make(service.plan(resolved))  # the one heavy slot
        waiting = asyncio.ensure_future(service.production.make(service.plan(resolved)))
        await _until(lambda: service.heavy_waiting == 1)
        service.abort()
        with pytest.raises(ServerUnavailable, match="shutting down"):
            await waiting
        held.close()
        assert service.heavy_waiting == 0

    svc = Service(Limits(heavy_flops=1), whole_workers=2, cache_bytes=0)
    try:
        asyncio.run(main(svc))
    finally:
        svc.close()
