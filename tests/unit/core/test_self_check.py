"""The fence around JAX internals: the chunked engine's warm-up self-check compares every
chunked family with eager JAX and disables (and reports) any that differs, and a chunk
plan that fails is never a silent fall-back to unpriced whole-tensor work."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
from collections.abc import Iterator

import numpy as np
import pytest

from jaxinit.protocol.errors import ServerUnavailable
from jaxinit.protocol.keys import Key
from jaxinit_server.core import chunked, engine
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, resolve

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _nothing_disabled() -> Iterator[None]:
    chunked._disabled.clear()
    yield
    chunked._disabled.clear()


def _resolved(name: str, shape: tuple[int, ...] = (64, 64)) -> object:
    return resolve(GenerateParams(name, shape, key=Key(seed=3)), Limits(), PrngDefaults(True, False))


def test_only_the_compat_module_imports_jax_internals() -> None:
    found = []
    for path in sorted([*(ROOT / "server").rglob("*.py"), *(ROOT / "client").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            if any(n == "jax._src" or n.startswith("jax._src.") for n in names):
                found.append(str(path.relative_to(ROOT)))
    assert sorted(set(found)) == ["server/jaxinit_server/core/_jax_compat.py"], found


def test_the_installed_jax_passes_the_self_check() -> None:
    assert engine.self_check() == {}
    assert engine.route(_resolved("lecun_normal")) == engine.CHUNKED


def test_a_broken_chunk_plan_is_disabled_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that makes other bytes than eager JAX (here: normal's scale doubled) is found at
    warm-up; the family then runs whole, and exactly."""
    family_plan = chunked._family_plan

    def broken(resolved, dtype):  # type: ignore[no-untyped-def]
        plan = family_plan(resolved, dtype)
        if resolved.spec.name == "normal" and plan is not None:
            plan = dataclasses.replace(plan, scale=plan.scale * 2)
        return plan

    monkeypatch.setattr(chunked, "_family_plan", broken)
    disabled = engine.self_check()
    assert set(disabled) == {"normal"}, disabled
    assert "differs from eager JAX" in disabled["normal"]
    resolved = _resolved("normal")
    assert not chunked.chunkable(resolved)
    assert engine.route(resolved) == engine.WHOLE
    made = engine.prepare(resolved)
    assert made.route == engine.WHOLE
    whole, _ = engine.run(resolved)
    assert np.array_equal(made.array, whole.reshape(-1))
    assert engine.route(_resolved("uniform")) == engine.CHUNKED  # the others still chunk


def test_a_failing_chunk_plan_is_no_silent_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that raises (a JAX whose private API moved) disables the family loudly and asks
    the caller to retry (then priced and run whole), instead of running whole unpriced."""

    def moved(resolved):  # type: ignore[no-untyped-def]
        raise AttributeError("module 'jax._src.random.prng' has no attribute 'iota_2x32_shape'")

    monkeypatch.setattr(chunked, "plan", moved)
    resolved = _resolved("lecun_normal", (2048, 1024))
    assert engine.route(resolved) == engine.CHUNKED
    with pytest.raises(ServerUnavailable, match="retry"):
        engine.prepare(resolved)
    assert "AttributeError" in chunked.disabled()["lecun_normal"]
    assert engine.route(resolved) == engine.WHOLE


def test_jax_refusing_the_request_is_still_its_own_error() -> None:
    """Fans of a 1-D shape: JAX's own error, not a disabled family."""
    from jaxinit.protocol.errors import JaxError

    resolved = _resolved("lecun_normal", (7,))
    with pytest.raises(JaxError):
        engine.prepare(resolved)
    assert chunked.disabled() == {}


def test_a_broken_legacy_mode_is_disabled_as_a_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The legacy mode draws its bits its own way for every family: a difference there
    (here: every legacy plan's scale doubled) disables chunking in that mode only."""
    plan = chunked.plan

    def broken(resolved, **kwargs):  # type: ignore[no-untyped-def]
        made = plan(resolved, **kwargs)
        return made if made is None or made.total is None else dataclasses.replace(made, scale=made.scale * 2)

    monkeypatch.setattr(chunked, "plan", broken)
    disabled = engine.self_check()
    assert set(disabled) == {chunked.LEGACY}, disabled
    legacy = resolve(GenerateParams("lecun_normal", (64, 64), key=Key(seed=3)), Limits(), PrngDefaults(False, False))
    assert engine.route(legacy) == engine.WHOLE
    assert engine.route(_resolved("lecun_normal")) == engine.CHUNKED
