"""jit chunk plans (chunked.py, engine.route and the self-check): a jit request is chunked by
one compiled program per scale and chunk size, and the warm-up self-check disables, loudly and
for jit requests only, a family (or dtype, or the legacy mode) whose jit chunks differ from
``jax.jit(init)``; the eager chunks go on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.keys import Key
from jaxinit_server.core import chunked, engine
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, Resolved, resolve


@pytest.fixture(autouse=True)
def _nothing_disabled() -> Iterator[None]:
    chunked._disabled.clear()
    yield
    chunked._disabled.clear()


def _resolved(name: str, shape: tuple[int, ...], *, jit: bool, dtype: str = "float32", **args: Any) -> Resolved:
    params = GenerateParams(name, shape, args=args, dtype=dtype, key=Key(seed=3), jit=jit)
    return resolve(params, Limits(), PrngDefaults(True, False))


def test_a_jit_request_is_chunked() -> None:
    for name in sorted(chunked.FAMILIES):
        args = engine.CHECK_VARIANTS.get(name, {})
        assert engine.route(_resolved(name, (64, 32), jit=True, **args)) == engine.CHUNKED, name
    assert engine.route(_resolved("ones", (64, 32), jit=True)) == engine.FILL
    assert engine.route(_resolved("orthogonal", (64, 32), jit=True)) == engine.WHOLE


def test_one_program_serves_every_shape_of_the_same_scale() -> None:
    """normal(0.02) on any shape is one program (per chunk size); a variance family's scale
    depends on the fans, so its program does too."""
    chunked._PROGRAMS.clear()
    chunked.forget_plans()
    plans = [chunked.plan(_resolved("normal", shape, jit=True, stddev=0.02)) for shape in [(7, 9), (1000, 3), (5,)]]
    assert all(p is not None for p in plans)
    assert len({id(p.compiled) for p in plans if p is not None}) == 1
    lecun = [chunked.plan(_resolved("lecun_normal", shape, jit=True)) for shape in [(7, 9), (7, 300), (8, 9)]]
    assert len({id(p.compiled) for p in lecun if p is not None}) == 2  # fan_in 7, 7, 8
    eager = chunked.plan(_resolved("normal", (7, 9), jit=False, stddev=0.02))
    assert eager is not None and eager.compiled is None and eager.scale is not None


def test_the_installed_jax_passes_the_jit_self_check() -> None:
    assert engine.self_check() == {}


def test_a_jit_chunk_that_differs_is_disabled_for_jit_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A jit program that is not jax.jit(init)'s (here: uniform's scale doubled) is found at
    warm-up; jit requests of that family then run whole, exactly, and eager ones still chunk."""
    jit_plan = chunked._jit_plan

    def broken(resolved: Resolved, dtype: Any) -> chunked.Plan | None:
        plan = jit_plan(resolved, dtype)
        if resolved.spec.name == "uniform" and plan is not None and plan.compiled is not None:
            compiled = plan.compiled
            plan = dataclasses.replace(plan, compiled=lambda k, n: compiled(k, n) * 2)
        return plan

    monkeypatch.setattr(chunked, "_jit_plan", broken)
    disabled = engine.self_check()
    assert set(disabled) == {chunked.jit("uniform")}, disabled
    assert "differs from jax.jit(init)" in disabled[chunked.jit("uniform")]
    jitted = _resolved("uniform", (64, 64), jit=True)
    assert engine.route(jitted) == engine.WHOLE
    made = engine.prepare(jitted)
    assert made.route == engine.WHOLE
    assert np.array_equal(made.array, engine.run(jitted)[0].reshape(-1))
    assert engine.route(_resolved("uniform", (64, 64), jit=False)) == engine.CHUNKED
    assert engine.route(_resolved("normal", (64, 64), jit=True)) == engine.CHUNKED


def test_a_dtype_or_the_legacy_mode_disabled_for_jit() -> None:
    chunked.disable(chunked.jit("bfloat16"), "test")
    assert not chunked.chunkable(_resolved("normal", (64, 64), jit=True, dtype="bfloat16"))
    assert chunked.chunkable(_resolved("normal", (64, 64), jit=True, dtype="float32"))
    assert chunked.chunkable(_resolved("normal", (64, 64), jit=False, dtype="bfloat16"))
    chunked.disable(chunked.jit(chunked.LEGACY), "test")
    legacy = resolve(
        GenerateParams("normal", (64, 64), key=Key(seed=3), jit=True), Limits(), PrngDefaults(False, False)
    )
    assert not chunked.chunkable(legacy)
    assert chunked.chunkable(dataclasses.replace(legacy, jit=False))
