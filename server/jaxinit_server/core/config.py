"""What a :class:`~service.Service` is built from: one frozen value (the composition root
builds it from its settings, ``main.build_service``; tests name what they change)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxinit_server.core.request import Limits

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    """A service's configuration.

    Args:
        limits: caps checked before any work.
        workers: the one pool of threads every JAX call runs on (``--workers``), so that
            the event loop never blocks on it.
        whole_workers: worker processes that make whole tensors (see :mod:`whole`).
        compilation_cache_dir: JAX's persistent compilation cache (see :mod:`startup`).
        worker_rss_bytes: a whole-tensor worker above this is replaced (half: its caches cleared).
        stall_seconds: a reader that takes no bytes this long is cut off (0: never).
        log_level: the whole-tensor workers' log level.
        cache_bytes: memory for tensors shared between identical requests and kept for
            repeats (0: every request is made on its own).
        cache_dir: a directory where made tensors are also kept (at most
            ``cache_dir_bytes``), surviving restarts; None: none.
        shared_memory_dir: where to offer same-host callers shared-memory regions
            (``/dev/shm``); None: not offered (see :mod:`regions`).
        shared_memory_lease: seconds a region waits for its caller to take it.
        shared_memory_bytes: the most bytes of regions offered at once.
    """

    limits: Limits = field(default_factory=Limits)
    workers: int = 4
    whole_workers: int = 2
    compilation_cache_dir: str | None = None
    worker_rss_bytes: int = 2**30
    stall_seconds: float = 60.0
    log_level: str | None = None
    cache_bytes: int = 256 * 2**20
    cache_dir: str | None = None
    cache_dir_bytes: int = 8 * 2**30
    shared_memory_dir: str | None = None
    shared_memory_lease: float = 60.0
    shared_memory_bytes: int = 2**32

    def __post_init__(self) -> None:
        """What no service can run with is refused here, whoever builds it (``Settings``
        adds the operator's floors, e.g. a worker's smallest RSS, and says them per flag)."""
        at_least = {
            "workers": 1,
            "whole_workers": 1,
            "worker_rss_bytes": 0,
            "stall_seconds": 0,
            "cache_bytes": 0,
            "cache_dir_bytes": 0,
            "shared_memory_bytes": 0,
        }
        for name, least in at_least.items():
            if not getattr(self, name) >= least:  # (NaN too)
                raise ValueError(f"Config.{name} must be at least {least}, got {getattr(self, name)!r}")
        if not self.shared_memory_lease > 0:
            raise ValueError(f"Config.shared_memory_lease must be more than 0, got {self.shared_memory_lease!r}")
