"""Before ready: the chunked families proven exact on this JAX, the common programs
compiled and the whole-tensor workers started (see :mod:`startup` for what a compilation
cache keeps of it across restarts)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from jaxinit.protocol.keys import Key
from jaxinit_server.core import chunked, engine, startup
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.request import GenerateParams
from jaxinit_server.core.whole import WholePool


class Host(Protocol):
    """What the warm-up uses of its :class:`~service.Service`."""

    whole: WholePool
    compilation_cache_dir: str | None
    ready: bool

    def prepare(self, params: GenerateParams) -> Plan: ...


__all__ = ["Host", "warm_up"]

log = logging.getLogger("jaxinit_server.service")


def warm_up(service: Host, *, requests: bool = True) -> None:
    """Make serving exact, then (``requests``) fast: prove the chunked families against
    eager JAX (disabling any that differs; with a compilation cache, the verdict stored
    for exactly this installation is read instead, see :mod:`startup`), then run one
    small request of each common kind (unless the cache holds their programs already)
    and start the whole-tensor workers, so that the first real requests are not slow."""
    began = time.perf_counter()
    if requests:
        # They load JAX meanwhile, and join the pool when they have (not waited for: a
        # whole-tensor request that comes first waits for one).
        service.whole.begin()
    directory = service.compilation_cache_dir
    print_ = startup.fingerprint() if directory else {}
    verdict = startup.load_verdict(directory, print_) if directory else None
    if directory is None or (verdict is not None and (verdict.warmed or not requests)):
        account = _prove(service, directory, print_, verdict, requests=requests)
    else:  # one server of those that start at once on this directory proves; the others read
        with startup.proving(directory, print_):
            waited = time.perf_counter() - began
            verdict = startup.load_verdict(directory, print_)
            account = _prove(service, directory, print_, verdict, requests=requests)
        if waited > 0.1:
            account.insert(0, f"{waited:.2f} s waiting for another server's self-check on this cache")
    log.info("start-up: %s; %.2f s in all", "; ".join(account), time.perf_counter() - began)
    service.ready = True


def _prove(
    service: Host, directory: str | None, print_: dict[str, str], verdict: startup.Verdict | None, *, requests: bool
) -> list[str]:
    """The self-check (or ``verdict``, read), then (``requests``) the warm-up's programs;
    stores what changed. Returns the account of what was done."""
    began = time.perf_counter()
    keep = directory is not None and (verdict is None or (requests and not verdict.warmed))
    if verdict is None:
        verdict = startup.Verdict(engine.self_check(), warmed=False)
        account = [f"self-check {time.perf_counter() - began:.2f} s"]
    else:
        for name, why in verdict.disabled.items():
            chunked.disable(name, why)
            log.error("chunking disabled for %s, which now runs whole: %s (stored self-check verdict)", name, why)
        account = ["self-check verdict read from the compilation cache"]
    chunked.proven()
    if requests and not verdict.warmed:
        started = time.perf_counter()
        # Chunk programs for the common families and dtypes, in every chunk size.
        for dtype in ("float32", "bfloat16"):
            for name in ("lecun_normal", "he_normal", "glorot_uniform", "normal"):
                size = chunked.MIN_CHUNK
                while size <= chunked.MAX_CHUNK:
                    params = GenerateParams(name, (size // 64, 64), dtype=dtype, key=Key(seed=0))
                    for _ in engine.prepare(service.prepare(params)).produce():
                        pass
                    size *= 2
        engine.prepare(service.prepare(GenerateParams("zeros", (2, 2))))
        verdict.warmed = directory is not None  # their programs are in the cache now
        account.append(f"warm-up {time.perf_counter() - started:.2f} s")
    elif requests:
        account.append("warm-up programs in the compilation cache")
    if keep:
        assert directory is not None
        startup.store_verdict(directory, print_, verdict)
    return account
