"""A whole-tensor worker's loop, run in this process over in-memory pipes: a ready frame,
then per job a header, exactly the requested range's bytes (eager JAX's) and an RSS
trailer; JAX's refusals and bugs come back as error headers and the loop goes on."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

from helpers import local_jax
from jaxinit.protocol.keys import Key
from jaxinit_server.core import _worker, engine
from jaxinit_server.core._frames import read_frame, write_frame
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, Resolved, resolve

DEFAULTS = PrngDefaults(threefry_partitionable=bool(jax.config.jax_threefry_partitionable), enable_x64=False)


def _resolved(name: str, shape: tuple[int, ...], **fields: Any) -> Resolved:
    return resolve(GenerateParams(name, shape, key=Key(seed=fields.pop("seed", 0)), **fields), Limits(), DEFAULTS)


TRIMS: list[bool] = []  # each trim: whether it was a full collection


def _run_worker(jobs: list[Resolved], monkeypatch: pytest.MonkeyPatch, **env: str) -> io.BytesIO:
    """Run the worker's loop on ``jobs`` (then EOF); what it wrote on its stdout. The heap
    trim after each job is counted in TRIMS, not run (a full collection of this test
    process's heap is slow and proves nothing about the worker), and this process's
    objects are not frozen as the worker freezes its own."""
    stdin = io.BytesIO()
    for job in jobs:
        write_frame(stdin, job)
    stdin.seek(0)
    stdout = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stdin))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=stdout))
    monkeypatch.setattr(_worker, "_orphan_watch", lambda parent: None)  # no thread left behind
    TRIMS.clear()
    monkeypatch.setattr(_worker, "_trim", TRIMS.append)
    monkeypatch.setattr(_worker.gc, "freeze", lambda: None)
    for name in ("JAXINIT_WORKER_SOFT_RSS", "JAXINIT_WORKER_LOG_LEVEL", "JAXINIT_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _worker.main()
    stdout.seek(0)
    return stdout


def _answer(stdout: io.BytesIO) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    header = read_frame(stdout)
    data = stdout.read(header["nbytes"]) if header.get("ok") else b""
    trailer = read_frame(stdout) if header.get("ok") else {}
    return header, data, trailer


def test_jobs_are_answered_in_order_with_eager_jaxs_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [
        _resolved("orthogonal", (16, 8), seed=3),
        _resolved("orthogonal", (16, 8), seed=3, offset=5, count=60),  # a range: only its bytes
        _resolved("normal", (3, 4), dtype="complex64", seed=1),
    ]
    stdout = _run_worker(jobs, monkeypatch, JAXINIT_WORKER_SOFT_RSS=str(2**50))  # whatever this process's size
    hello = read_frame(stdout)
    assert hello["ready"] is True and isinstance(hello["pid"], int)
    for job in jobs:
        header, data, trailer = _answer(stdout)
        expected = local_jax(job.spec.name, {}, job.key.seed, job.shape, job.dtype)  # type: ignore[union-attr]
        assert isinstance(expected, np.ndarray)
        want = expected.reshape(-1)[job.start : job.stop].tobytes()
        assert header == {"ok": True, "key_data": engine.run(job)[1], "nbytes": len(want)}
        assert data == want
        assert trailer["rss"] > 0
    assert stdout.read() == b""  # nothing but frames, and nothing after the last
    assert not any(TRIMS) and len(TRIMS) == len(jobs)  # freed heap given back after every job, no full collection


def test_jax_refusing_a_job_is_its_error_and_the_loop_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _resolved("orthogonal", (5,))  # JAX: orthogonal needs at least two dimensions
    stdout = _run_worker([refused, _resolved("orthogonal", (2, 2))], monkeypatch)
    read_frame(stdout)
    header, _, _ = _answer(stdout)
    assert header["ok"] is False and header["error"] == "JaxError"
    expected = local_jax("orthogonal", {}, 0, (5,), None)
    assert isinstance(expected, Exception) and header["message"] == str(expected)  # JAX's words, verbatim
    assert _answer(stdout)[0]["ok"] is True


def test_a_bug_is_an_internal_error_that_says_no_more(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(resolved: Resolved) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(engine, "run", broken)
    stdout = _run_worker([_resolved("orthogonal", (2, 2)), _resolved("orthogonal", (2, 2))], monkeypatch)
    read_frame(stdout)
    for _ in range(2):
        assert read_frame(stdout) == {"ok": False, "error": "InternalError", "message": "internal server error"}
    assert "secret detail" in capsys.readouterr().err  # in the server's log, not the answer


def test_a_worker_over_its_soft_rss_clears_jaxs_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    cleared: list[int] = []
    clear: Callable[[], None] = lambda: cleared.append(1)  # noqa: E731
    monkeypatch.setattr(jax, "clear_caches", clear)
    _run_worker([_resolved("orthogonal", (2, 2))] * 2, monkeypatch, JAXINIT_WORKER_SOFT_RSS="0")
    assert len(cleared) == 2 and TRIMS == [True, True]  # and a full collection with it
    cleared.clear()
    _run_worker([_resolved("orthogonal", (2, 2))], monkeypatch, JAXINIT_WORKER_SOFT_RSS=str(2**50))
    assert cleared == [] and TRIMS == [False]


def test_large_answers_are_written_in_pieces_and_read_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    job = _resolved("normal", (2 * _worker.PIECE // 8 + 5,), dtype="complex64")  # 2 pieces and a bit
    stdout = _run_worker([job], monkeypatch)
    read_frame(stdout)
    header, data, _ = _answer(stdout)
    assert header["nbytes"] == job.nbytes == len(data)
    assert data == engine.run(job)[0].tobytes()


def test_a_worker_whose_server_is_gone_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The orphan watch: once the parent is no longer the server, the worker ends at once,
    even in the middle of a computation (os._exit, not an exception the job could catch)."""
    parents = iter([100, 100, 1])  # the server, the server, then reparented to init

    def gone(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(_worker.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(_worker.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(_worker.os, "_exit", gone)
    with pytest.raises(SystemExit) as info:
        _worker._orphan_watch(100)
    assert info.value.code == 0
    assert next(parents, None) is None  # it looked until the parent changed, and no further


def test_a_trim_collects_the_youngest_generation_unless_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection walks JAX's objects (tens of ms, more than a small job): only the
    trim that comes with clearing JAX's caches makes one."""
    generations: list[int] = []
    monkeypatch.setattr(_worker.gc, "collect", generations.append)
    _worker._trim(False)
    _worker._trim(True)
    assert generations == [0, 2]
