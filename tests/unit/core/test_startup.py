"""Start-up: the compilation cache's directory, the self-check's stored verdict, chunking held
back until it is proven, and whole-tensor workers that load while the server gets ready."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import jax
import pytest

from jaxinit.protocol.keys import Key
from jaxinit_server.core import chunked, engine, startup
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, resolve
from jaxinit_server.core.whole import WholePool
from jaxinit_server.settings import Settings

pytestmark = pytest.mark.usefixtures("chunking_as_found")  # (tests/unit/core/conftest.py)


def _print() -> dict[str, str]:
    return {**startup.fingerprint(), "source": "test"}


def test_the_cache_is_per_user_by_default_configurable_and_can_be_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAXINIT_COMPILATION_CACHE_DIR", raising=False)  # (the test suite's own, for its servers)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert Settings().compilation_cache_path() == "/somewhere/cache/jaxinit/jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert Settings().compilation_cache_path() == "/home/someone/.cache/jaxinit/jax"
    assert Settings(compilation_cache_dir="/var/cache/jaxinit").compilation_cache_path() == "/var/cache/jaxinit"
    assert Settings(compilation_cache=False, compilation_cache_dir="/x").compilation_cache_path() is None
    monkeypatch.setenv("JAXINIT_COMPILATION_CACHE", "false")
    assert Settings().compilation_cache_path() is None


def test_a_cache_directory_that_cannot_be_made_leaves_the_cache_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    updates: list[tuple[str, object]] = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING, "jaxinit_server.startup"):
        assert startup.use_compilation_cache(str(tmp_path / "file" / "jax")) is None
    assert "cannot be made" in caplog.text and updates == []
    assert startup.use_compilation_cache(None) is None
    made = tmp_path / "new" / "jax"
    assert startup.use_compilation_cache(str(made)) == str(made) and made.is_dir()
    # every program, however quick to compile: a restart compiles nothing it had
    assert dict(updates) == {
        "jax_compilation_cache_dir": str(made),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }


def test_the_fingerprint_names_what_the_verdict_depends_on(monkeypatch: pytest.MonkeyPatch) -> None:
    first = startup.fingerprint()
    assert startup.fingerprint() == first
    assert first["jax"] == jax.__version__ and first["backend"] == jax.default_backend()
    assert {"jaxlib", "numpy", "ml_dtypes", "device_kind", "platform_version", "cpu", "jax_config"} <= set(first)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert startup.fingerprint() != first
    monkeypatch.delenv("XLA_FLAGS")
    jax.config.update("jax_debug_nans", True)  # type: ignore[no-untyped-call]
    try:  # JAX's configuration, whatever set it
        assert startup.fingerprint()["jax_config"] != first["jax_config"]
    finally:
        jax.config.update("jax_debug_nans", False)  # type: ignore[no-untyped-call]
    assert startup.fingerprint() == first


def test_a_verdict_is_read_back_only_for_the_same_fingerprint(tmp_path: Path) -> None:
    print_ = _print()
    assert startup.load_verdict(str(tmp_path), print_) is None
    startup.store_verdict(str(tmp_path), print_, startup.Verdict({"normal": "a chunk differs"}, warmed=True))
    assert [p.name.startswith(startup.VERDICT_PREFIX) for p in tmp_path.iterdir()] == [True]  # no temporary left
    verdict = startup.load_verdict(str(tmp_path), print_)
    assert verdict is not None and verdict.disabled == {"normal": "a chunk differs"} and verdict.warmed
    assert startup.load_verdict(str(tmp_path), {**print_, "jax": "0.0.1"}) is None


@pytest.mark.parametrize(
    "body", ["{not json", json.dumps({"fingerprint": {"other": "1"}, "disabled": {}, "warmed": True}), "[]"]
)
def test_an_unreadable_or_foreign_verdict_is_ignored(
    tmp_path: Path, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    print_ = _print()
    startup.store_verdict(str(tmp_path), print_, startup.Verdict({}, warmed=False))
    (path,) = tmp_path.iterdir()
    path.write_text(body)
    with caplog.at_level(logging.WARNING, "jaxinit_server.startup"):
        assert startup.load_verdict(str(tmp_path), print_) is None
    assert "checking again" in caplog.text


def test_a_verdict_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "jaxinit_server.startup"):
        startup.store_verdict(str(tmp_path / "missing"), _print(), startup.Verdict({}, warmed=False))
    assert "could not keep" in caplog.text


def test_chunking_waits_for_the_proof() -> None:
    """A server runs every family whole until its self-check has proven them; the check itself
    judges the chunk plans meanwhile."""
    resolved = resolve(GenerateParams("lecun_normal", (64, 64), key=Key(seed=3)), Limits(), PrngDefaults(True, False))
    chunked.require_proof()
    assert engine.route(resolved) == engine.WHOLE
    assert engine.self_check() == {}
    assert engine.route(resolved) == engine.WHOLE  # judged, not yet declared proven
    chunked.proven()
    assert engine.route(resolved) == engine.CHUNKED


def test_a_job_takes_a_worker_still_loading_instead_of_starting_another() -> None:
    pool = WholePool(1)
    try:
        pool.begin()
        assert len(pool._all) == 1
        resolved = resolve(GenerateParams("orthogonal", (3, 3), key=Key(seed=1)), Limits(), PrngDefaults(True, False))

        async def one() -> bytes:
            job = await pool.run(resolved)
            return b"".join(piece.tobytes() for piece in job.pieces(2**20))

        assert len(asyncio.run(one())) == 9 * 4
        assert len(pool._all) == 1 and pool.state()["busy"] == 0
        pool.start()  # nothing missing: waits for nothing new
        assert len(pool._all) == 1
    finally:
        pool.close()


def test_one_server_proves_while_the_others_wait(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Servers starting at once on one cache directory: while one holds the verdict's lock,
    another does not prove beside it (with no time left to wait, it says it proves alone);
    once the lock is given back, the next takes it at once."""
    print_, where = {"a": "b"}, str(tmp_path)
    caplog.set_level("WARNING", logger="jaxinit_server.startup")
    with startup.proving(where, print_):
        with startup.proving(where, print_, wait=0):
            pass
        assert "proving alone" in caplog.text
        caplog.clear()
        with startup.proving(where, {"another": "fingerprint"}, wait=0):  # its own lock
            pass
        assert not caplog.text
    with startup.proving(where, print_, wait=0):
        pass
    assert not caplog.text


def test_a_directory_without_room_for_the_lock_proves_alone(tmp_path: Path) -> None:
    with startup.proving(str(tmp_path / "missing"), {"a": "b"}):
        pass  # nothing to lock: the caller proves, as without a cache
