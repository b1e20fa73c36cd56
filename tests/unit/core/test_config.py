"""jaxinit_server.core.config: a service's configuration as one frozen value. Its defaults are
the server's own (a Config() in a test is configured as production is, but for what a test
names), and the composition root (main.build_service) carries every setting into it.
No service is built here: build_service's Service is replaced by the Config it is given."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from jaxinit_server import main
from jaxinit_server.core.config import Config
from jaxinit_server.core.request import Limits
from jaxinit_server.settings import Settings


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """build_service returns the Config it would build a Service from; the environment's
    JAXINIT_* settings (the test suite's own among them) are left out."""
    monkeypatch.setattr(main, "Service", lambda config: config)
    for name in [n for n in os.environ if n.startswith("JAXINIT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    yield


def test_the_defaults() -> None:
    config = Config()
    assert dataclasses.asdict(config) == {
        "limits": dataclasses.asdict(Limits()),
        "workers": 4,
        "whole_workers": 2,
        "compilation_cache_dir": None,
        "worker_rss_bytes": 2**30,
        "stall_seconds": 60.0,
        "log_level": None,
        "cache_bytes": 256 * 2**20,
        "cache_dir": None,
        "cache_dir_bytes": 8 * 2**30,
        "shared_memory_dir": None,
        "shared_memory_lease": 60.0,
        "shared_memory_bytes": 2**32,
    }
    assert config.limits == Limits()


def test_a_config_is_a_value() -> None:
    config = Config(workers=1, cache_bytes=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 2  # type: ignore[misc]
    assert config == Config(workers=1, cache_bytes=0) and hash(config) == hash(Config(workers=1, cache_bytes=0))
    changed = dataclasses.replace(config, limits=Limits(max_streams=3))
    assert (changed.workers, changed.cache_bytes, changed.limits.max_streams) == (1, 0, 3)
    assert config.limits == Limits()  # the original is untouched


@pytest.mark.usefixtures("configs")
def test_the_defaults_are_the_servers_but_for_its_cache_directory_and_log_level() -> None:
    built = main.build_service(Settings())
    assert built == Config(compilation_cache_dir="/somewhere/cache/jaxinit/jax", log_level="info")


@pytest.mark.usefixtures("configs")
def test_every_setting_reaches_the_config() -> None:
    settings = Settings(
        workers=3,
        whole_workers=5,
        worker_rss_bytes=2**29,
        stall_seconds=0,
        log_level="debug",
        cache_bytes=0,
        cache_dir="/var/cache/jaxinit/results",
        cache_dir_bytes=2**20,
        shared_memory=True,
        shared_memory_dir="/dev/shm/jaxinit",
        shared_memory_lease=5,
        shared_memory_bytes=2**20,
        compilation_cache_dir="/var/cache/jaxinit/jax",
        max_streams=7,
        max_caller_bytes=2**10,
    )
    assert main.build_service(settings) == Config(
        limits=dataclasses.replace(Limits(), max_streams=7, max_caller_bytes=2**10),
        workers=3,
        whole_workers=5,
        compilation_cache_dir="/var/cache/jaxinit/jax",
        worker_rss_bytes=2**29,
        stall_seconds=0.0,
        log_level="debug",
        cache_bytes=0,
        cache_dir="/var/cache/jaxinit/results",
        cache_dir_bytes=2**20,
        shared_memory_dir="/dev/shm/jaxinit",
        shared_memory_lease=5.0,
        shared_memory_bytes=2**20,
    )
    # shared memory and the compilation cache off: no directory for either
    off = main.build_service(Settings(shared_memory_dir="/dev/shm/jaxinit", compilation_cache=False))
    assert (off.shared_memory_dir, off.compilation_cache_dir) == (None, None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", 0, "Config.workers must be at least 1, got 0"),
        ("whole_workers", 0, "Config.whole_workers must be at least 1, got 0"),
        ("worker_rss_bytes", -1, "Config.worker_rss_bytes must be at least 0, got -1"),
        ("stall_seconds", float("nan"), "Config.stall_seconds must be at least 0, got nan"),
        ("cache_bytes", -5, "Config.cache_bytes must be at least 0, got -5"),
        ("cache_dir_bytes", -1, "Config.cache_dir_bytes must be at least 0, got -1"),
        ("shared_memory_bytes", -1, "Config.shared_memory_bytes must be at least 0, got -1"),
        ("shared_memory_lease", 0.0, "Config.shared_memory_lease must be more than 0, got 0.0"),
    ],
)
def test_what_no_service_runs_with_is_refused_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Config(**{field: value})  # type: ignore[arg-type]
    assert str(caught.value) == message
