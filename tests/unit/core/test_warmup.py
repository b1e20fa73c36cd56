"""jaxinit_server.core.warmup: what a server does before it is ready. The self-check runs (or
its verdict stored for exactly this installation is read instead), chunking is declared
proven, the common programs are compiled by running their requests (unless the compilation
cache holds them already), the verdict is kept, and the service is ready.

The self-check, the engine and the host are stand-ins that record what the warm-up asks of
them: no program is compiled and no worker started here (the real self-check is
test_self_check.py's, the stored verdict's file test_startup.py's). The warm-up's requests
are resolved for real, to show each is one the chunked engine takes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jaxinit.protocol.keys import Key
from jaxinit_server.core import chunked, engine, startup, warmup
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, resolve

PRINT = {"layout": "1", "source": "test"}


class Whole:
    def __init__(self) -> None:
        self.begun = 0

    def begin(self) -> None:
        self.begun += 1


class Host:
    """What warm_up uses of a Service: ``prepare`` hands the request back as its plan."""

    def __init__(self, directory: str | None) -> None:
        self.whole: Any = Whole()
        self.compilation_cache_dir = directory
        self.ready = False
        self.prepared: list[GenerateParams] = []

    def prepare(self, params: GenerateParams) -> Any:
        self.prepared.append(params)
        return params


class Engine:
    """The engine's self_check and prepare, recorded."""

    def __init__(self, disabled: dict[str, str]) -> None:
        self.disabled = disabled
        self.checks = 0
        self.produced: list[GenerateParams] = []

    def self_check(self) -> dict[str, str]:
        self.checks += 1
        return dict(self.disabled)

    def prepare(self, plan: GenerateParams) -> Any:
        produced = self.produced

        class Prepared:
            def produce(self) -> Iterator[bytes]:
                produced.append(plan)
                yield b""

        return Prepared()


pytestmark = pytest.mark.usefixtures("chunking_as_found")  # (tests/unit/core/conftest.py)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Engine:
    fake = Engine({})
    monkeypatch.setattr(engine, "self_check", fake.self_check)
    monkeypatch.setattr(engine, "prepare", fake.prepare)
    monkeypatch.setattr(startup, "fingerprint", lambda: dict(PRINT))
    return fake


# Chunk programs for the common families and dtypes, in every chunk size, then a fill.
FAMILIES = ("lecun_normal", "he_normal", "glorot_uniform", "normal")
SIZES = [2**n for n in range(12, 21)]
REQUESTS = [
    GenerateParams(name, (size // 64, 64), dtype=dtype, key=Key(seed=0))
    for dtype in ("float32", "bfloat16")
    for name in FAMILIES
    for size in SIZES
]


def test_without_a_cache_it_checks_then_runs_the_common_requests_then_is_ready(stand_in: Engine) -> None:
    host = Host(None)
    chunked.require_proof()
    warmup.warm_up(host)
    assert host.ready and host.whole.begun == 1
    assert stand_in.checks == 1
    assert stand_in.produced == REQUESTS  # 72 requests, each run to its end
    assert host.prepared == [*REQUESTS, GenerateParams("zeros", (2, 2))]  # the fill is prepared, not made
    resolved = resolve(REQUESTS[0], Limits(), PrngDefaults(True, False))
    assert engine.route(resolved) == engine.CHUNKED  # proven: chunking is on


def test_the_warm_up_requests_are_each_one_the_chunked_engine_takes() -> None:
    assert (SIZES[0], SIZES[-1]) == (chunked.MIN_CHUNK, chunked.MAX_CHUNK)
    for params in REQUESTS:
        resolved = resolve(params, Limits(), PrngDefaults(True, False))
        assert engine.route(resolved) == engine.CHUNKED, params
        assert resolved.shape[0] * resolved.shape[1] in SIZES


def test_without_requests_it_only_checks(stand_in: Engine) -> None:
    host = Host(None)
    warmup.warm_up(host, requests=False)
    assert host.ready and stand_in.checks == 1
    assert (host.whole.begun, host.prepared, stand_in.produced) == (0, [], [])


def test_with_a_cache_the_verdict_is_kept_and_the_next_start_reads_it(stand_in: Engine, tmp_path: Path) -> None:
    stand_in.disabled = {"normal": "a chunk differs"}
    first = Host(str(tmp_path))
    warmup.warm_up(first)
    assert first.ready and stand_in.checks == 1 and len(stand_in.produced) == 72
    verdict = startup.load_verdict(str(tmp_path), PRINT)
    assert verdict is not None
    assert (verdict.disabled, verdict.warmed) == ({"normal": "a chunk differs"}, True)

    chunked._disabled.clear()  # a new process: nothing disabled yet
    second = Host(str(tmp_path))
    warmup.warm_up(second)
    assert second.ready and second.whole.begun == 1  # the workers are started all the same
    assert stand_in.checks == 1 and len(stand_in.produced) == 72  # nothing checked or run again
    assert second.prepared == []
    assert chunked.disabled() == {"normal": "a chunk differs"}  # the stored verdict disables again


def test_a_verdict_kept_without_requests_gets_them_run_on_the_next_start(stand_in: Engine, tmp_path: Path) -> None:
    warmup.warm_up(Host(str(tmp_path)), requests=False)
    verdict = startup.load_verdict(str(tmp_path), PRINT)
    assert verdict is not None and (verdict.disabled, verdict.warmed) == ({}, False)

    warmup.warm_up(Host(str(tmp_path)))
    assert stand_in.checks == 1  # the verdict is read
    assert stand_in.produced == REQUESTS  # but the programs were never compiled into the cache
    verdict = startup.load_verdict(str(tmp_path), PRINT)
    assert verdict is not None and verdict.warmed


def test_a_verdict_is_written_only_when_it_changed(
    stand_in: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[bool] = []
    store = startup.store_verdict
    monkeypatch.setattr(startup, "store_verdict", lambda d, p, v: (stored.append(v.warmed), store(d, p, v))[-1])
    warmup.warm_up(Host(str(tmp_path)))
    warmup.warm_up(Host(str(tmp_path)))
    warmup.warm_up(Host(str(tmp_path)), requests=False)
    assert stored == [True]


def test_the_start_up_is_accounted_in_the_log(
    stand_in: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in.disabled = {"uniform": "a chunk differs"}
    with caplog.at_level(logging.INFO, "jaxinit_server.service"):
        warmup.warm_up(Host(str(tmp_path)))
        first = caplog.messages[-1]
        caplog.clear()
        warmup.warm_up(Host(str(tmp_path)))
    assert first.startswith("start-up: self-check ") and "; warm-up " in first and first.endswith(" s in all")
    assert caplog.messages == [
        "chunking disabled for uniform, which now runs whole: a chunk differs (stored self-check verdict)",
        caplog.messages[-1],
    ]
    assert caplog.messages[-1].startswith(
        "start-up: self-check verdict read from the compilation cache; warm-up programs in the compilation cache; "
    )
    assert caplog.records[0].levelno == logging.ERROR
