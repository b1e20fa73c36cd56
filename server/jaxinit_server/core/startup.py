"""Ready in seconds: JAX's persistent compilation cache, and the self-check's verdict kept in it.

Before a server reports ready it proves each chunked family exact on this JAX
(:func:`engine.self_check`, which disables chunking for any family that differs) and
compiles the programs common requests need (the warm-up). With a compilation cache
directory, both are paid once per installation, not once per start:

- the compiled programs are JAX's persistent cache (every program, however quick to
  compile; the whole-tensor workers share it);
- the self-check's verdict (which families are disabled, and whether the warm-up's
  programs were compiled into this directory) is a small JSON file beside them, named
  by a digest of everything the verdict depends on (:func:`fingerprint`): jaxinit's
  core and protocol source, the JAX, jaxlib, numpy and ml_dtypes versions, the backend,
  its platform version and device kind, the CPU model and its instruction-set flags,
  and JAX's whole configuration. A start with the same fingerprint reads the verdict
  instead of recomputing it; any change computes it again. Servers that start at once on
  one directory (replicas on a shared volume) prove it once: the first to come holds the
  verdict's lock (:func:`proving`) while the others wait, then read what it stored.

Why a stored verdict is sound: the self-check compares bytes made by programs that are
deterministic functions of the code, the JAX build, its configuration and the hardware
they were compiled for; with all of those the same, the same programs give the same
bytes, which is the premise JAX's own persistent cache rests on (it reuses a compiled
program by a key of the same things). Anyone who can write this directory can already
replace the compiled programs, so the verdict adds nothing to trust. A verdict that
cannot be read is ignored and computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jaxlib.version
import ml_dtypes
import numpy as np

import jaxinit.protocol
import jaxinit_server

__all__ = ["Verdict", "fingerprint", "load_verdict", "proving", "store_verdict", "use_compilation_cache"]

log = logging.getLogger("jaxinit_server.startup")

VERDICT_PREFIX = "jaxinit-self-check-"
VERSION = 1  # of the verdict file's layout


def use_compilation_cache(directory: str | None) -> str | None:
    """Turn JAX's persistent compilation cache on in ``directory`` (made if missing), for
    every program, so that a restart compiles nothing it had. Returns the directory, or
    None: none given, or (logged) it cannot be made, and the server runs without it."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        log.warning("no compilation cache: %s cannot be made (%s); every start compiles everything", directory, exc)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)  # type: ignore[no-untyped-call]
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # type: ignore[no-untyped-call]
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)  # type: ignore[no-untyped-call]
    return directory


def _source_digest() -> str:
    """sha256 of jaxinit's core and protocol source: the code that makes and checks the bytes."""
    digest = hashlib.sha256()
    for root in (Path(jaxinit_server.__file__).parent / "core", Path(jaxinit.protocol.__file__).parent):
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{path.relative_to(root.parent)}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpu() -> str:
    """The CPU model and instruction-set flags: XLA compiles for the host's features."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "features", "cpu model", "isa")
    seen: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in wanted and name not in seen:
            seen[name] = " ".join(sorted(value.split())) if name in ("flags", "features") else value.strip()
    return f"{platform.machine()} " + "; ".join(f"{k}={v}" for k, v in sorted(seen.items()))


def fingerprint() -> dict[str, str]:
    """Everything the self-check's verdict depends on, as strings."""
    device = jax.devices()[0]
    config = {
        name: repr(value)
        for name, value in sorted(jax.config.values.items())
        if "compilation_cache" not in name and "persistent_cache" not in name
    }
    return {
        "layout": str(VERSION),
        "jaxinit": jaxinit_server.__version__,
        "source": _source_digest(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.version.__version__,
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "backend": jax.default_backend(),
        "platform_version": str(getattr(device.client, "platform_version", "")),
        "device_kind": device.device_kind,
        "cpu": hashlib.sha256(_cpu().encode()).hexdigest(),
        "jax_config": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


class Verdict:
    """What a start proved: the chunked families disabled on this installation (and why),
    and whether the warm-up's programs were compiled into the cache directory."""

    def __init__(self, disabled: dict[str, str], warmed: bool) -> None:
        self.disabled = dict(disabled)
        self.warmed = warmed


def _path(directory: str, print_: dict[str, str]) -> Path:
    name = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:32]
    return Path(directory) / f"{VERDICT_PREFIX}{name}.json"


def load_verdict(directory: str, print_: dict[str, str]) -> Verdict | None:
    """The verdict stored in ``directory`` for exactly ``print_``, or None (none yet, or unreadable)."""
    path = _path(directory, print_)
    try:
        stored = json.loads(path.read_text())
        if stored["fingerprint"] != print_:
            raise ValueError("another fingerprint")
        disabled = {str(k): str(v) for k, v in dict(stored["disabled"]).items()}
        return Verdict(disabled, bool(stored["warmed"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the stored self-check verdict %s (%s): checking again", path, exc)
        return None


def store_verdict(directory: str, print_: dict[str, str], verdict: Verdict) -> None:
    """Keep ``verdict`` for the next start with the same fingerprint (written whole, then
    renamed, so a reader never sees part of it). A failure to write is logged, not raised."""
    path = _path(directory, print_)
    body: dict[str, Any] = {"fingerprint": print_, "disabled": verdict.disabled, "warmed": verdict.warmed}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("could not keep the self-check verdict in %s: %s", directory, exc)
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def proving(directory: str, print_: dict[str, str], *, wait: float = 600.0) -> Iterator[None]:
    """Hold the lock of the verdict for ``print_`` in ``directory`` (an advisory ``flock`` on a
    file beside it, released when the process ends however it ends): one server proves
    while the others that started at once wait, then read its verdict instead of proving
    it again on the same cores. After ``wait`` seconds (a holder stopped mid-way) or where
    the lock cannot be had (no ``fcntl``, a read-only directory), the caller proves alone."""
    try:
        import fcntl

        fd = os.open(_path(directory, print_).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except (ImportError, OSError):
        yield
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("another server has been proving for %.0f s: proving alone", wait)
                    break
                time.sleep(0.05)  # (a server start: no event loop to block)
        yield
    finally:
        os.close(fd)  # (releases the lock)
