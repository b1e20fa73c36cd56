"""core/models.laid_out: a model's tensor in the PyTorch layout, each piece written to its
place in the delivered tensor as it is made, on the JAX pool (never the event loop), with
no gathered copy; the bytes are exactly the whole tensor transposed, whatever the pieces'
sizes (rows begun by one piece and ended by the next, at every axis), and admission counts
the one buffer it holds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.keys import Key
from jaxinit.protocol.model.derive import expand
from jaxinit.protocol.model.layout import Output, outputs
from jaxinit_server.core import InitModelParams, Limits, Service
from jaxinit_server.core.models import INLINE_BYTES, _fill, laid_out
from jaxinit_server.core.source import Made, Source

DESCRIPTION = {
    "type": "Module",
    "children": [
        {"type": "Conv", "in_features": 3, "features": 8, "kernel_size": [5, 4]},
        {"type": "Dense", "in_features": 7, "features": 6},
        {"type": "DenseGeneral", "in_features": [2, 3], "features": [4, 5]},
        {"type": "Conv", "in_features": 2, "features": 3, "kernel_size": [3]},
    ],
}
OUTPUTS = [o for o in outputs(expand(DESCRIPTION), "torch") if o.needs_whole]


def transposed(out: Output, generated: np.ndarray) -> np.ndarray:
    """The PyTorch layout of ``generated`` the plain way: the whole array transposed."""
    array = generated.reshape(out.param.shape)
    if out.convert == "t":
        array = array.T
    elif out.convert == "conv":
        array = array.transpose(array.ndim - 1, array.ndim - 2, *range(array.ndim - 2))
    else:
        assert out.convert == "flat_t"
        array = array.reshape(out.param.init_shape).T
    return np.ascontiguousarray(array).reshape(out.shape)


def generated(out: Output, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(len(out.name)).standard_normal(out.param.init_shape).astype(dtype).reshape(-1)


def test_every_conversion_is_covered() -> None:
    assert {o.convert for o in OUTPUTS} == {"t", "conv", "flat_t"}
    assert any(len(o.shape) == 3 for o in OUTPUTS) and any(len(o.shape) == 4 for o in OUTPUTS)


@pytest.mark.parametrize("out", OUTPUTS, ids=lambda o: o.name)
@pytest.mark.parametrize("piece", [1, 2, 5, 7, 13, 24, 61, 10**6])
def test_pieces_of_any_size_land_as_the_whole_transposed(out: Output, piece: int) -> None:
    values = generated(out)
    dest = np.full(out.shape, np.nan, np.float32)
    view = out.arranged(dest)
    for start in range(0, values.size, piece):
        _fill(view, start, values[start : start + piece])
    assert dest.tobytes() == transposed(out, values).tobytes()
    assert out.finish(values).tobytes() == dest.tobytes()  # finish is the same arrangement, whole


def test_bfloat16_bits_are_placed_as_they_are_and_another_dtype_is_refused() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    out = next(o for o in OUTPUTS if o.convert == "t")
    values = generated(out, ml_dtypes.bfloat16)
    dest = np.empty(out.shape, ml_dtypes.bfloat16)
    _fill(out.arranged(dest), 0, values)
    assert dest.tobytes() == transposed(out, values).tobytes()
    with pytest.raises(TypeError):  # never converted on the way
        _fill(out.arranged(np.empty(out.shape, np.float32)), 0, values)


def test_arranged_wants_the_delivered_buffer() -> None:
    out = OUTPUTS[0]
    with pytest.raises(ValueError, match="C-contiguous array of shape"):
        out.arranged(np.empty(out.shape[::-1], np.float32))
    with pytest.raises(ValueError, match="C-contiguous array of shape"):
        out.arranged(np.empty(out.shape[::-1], np.float32).T)


class Pieces(Source):
    """A source that makes ``array`` in pieces of ``size`` elements, noting its closing."""

    def __init__(self, array: np.ndarray, size: int) -> None:
        super().__init__((0, 1), close=self.closing)
        self.array, self.size, self.closed = array, size, False

    def closing(self) -> None:
        self.closed = True

    async def pieces(self) -> AsyncGenerator[np.ndarray, None]:
        for start in range(0, self.array.size, self.size):
            yield self.array[start : start + self.size]


class Counting(ThreadPoolExecutor):
    """A pool that notes each call it runs and the thread it ran on."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="test-jax")
        self.threads: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def noted(*a: Any, **k: Any) -> Any:
            self.threads.append(threading.current_thread().name)
            return fn(*a, **k)

        return super().submit(noted, *args, **kwargs)


def test_small_pieces_are_laid_out_inline_and_the_source_is_closed() -> None:
    out = next(o for o in OUTPUTS if o.convert == "t")
    values = generated(out)
    assert values.nbytes <= INLINE_BYTES
    pool = Counting()
    try:
        source = Pieces(values, 5)
        made = asyncio.run(laid_out(source, out, "float32", executor=pool))
        assert isinstance(made, Made) and source.closed and pool.threads == []
        assert made.array.tobytes() == transposed(out, values).tobytes()
    finally:
        pool.shutdown()


def test_a_piece_over_inline_bytes_is_laid_out_on_the_pool() -> None:
    dense = {"type": "Dense", "in_features": 256, "features": 384}  # 384 KiB: a third is over INLINE_BYTES
    (out,) = [o for o in outputs(expand(dense), "torch") if o.needs_whole]
    values = generated(out)
    assert values.nbytes > INLINE_BYTES
    pool = Counting()
    try:
        source = Pieces(values, values.size // 3 + 5)  # three pieces, rows split between them
        made = asyncio.run(laid_out(source, out, "float32", executor=pool))
        assert isinstance(made, Made) and source.closed
        assert made.array.tobytes() == transposed(out, values).tobytes()
        assert len(pool.threads) == 3 and all(t.startswith("test-jax") for t in pool.threads)
    finally:
        pool.shutdown()


def test_a_source_that_makes_the_wrong_count_is_an_error_and_is_closed() -> None:
    out = next(o for o in OUTPUTS if o.convert == "t")
    values = generated(out)
    pool = Counting()
    try:
        for wrong in (values[:-1], np.concatenate([values, values[:1]])):
            source = Pieces(wrong, 4)
            with pytest.raises(RuntimeError, match=f"made {wrong.size} elements of {values.size}"):
                asyncio.run(laid_out(source, out, "float32", executor=pool))
            assert source.closed
    finally:
        pool.shutdown()


def test_admission_counts_the_one_buffer_a_torch_tensor_is_laid_out_in() -> None:
    dense = {"type": "Dense", "in_features": 64, "features": 32}
    service = Service(Limits(), whole_workers=1, cache_bytes=0)
    try:

        async def priced(layout: str) -> tuple[int, int]:
            resolved = await service.prepare_model(InitModelParams(model=dense, key=Key(seed=0), layout=layout))
            planned = await service.check_model(resolved)
            ticket = service.admit_model(resolved)
            try:
                return service.admission.bytes, sum(p.cost.memory for p in planned.plans)
            finally:
                ticket.release()

        torch, torch_plans = asyncio.run(priced("torch"))
        flax, flax_plans = asyncio.run(priced("flax"))
        assert torch_plans == flax_plans and flax == flax_plans
        assert torch == flax + 64 * 32 * 4  # the kernel's buffer (in the Flax layout: none)
    finally:
        service.close()
