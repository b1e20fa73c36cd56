"""The service facade the adapters call: describe, prepare, generate."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit._catalog import CATALOG
from jaxinit._codec import DTYPE_NAMES, to_wire_bytes
from jaxinit._keys import KEY_IMPLS, Key
from jaxinit_server.core import engine
from jaxinit_server.core.provenance import ServerIdentity, server_identity
from jaxinit_server.core.request import GenerateParams, Limits, Resolved, resolve

__all__ = ["Service", "Tensor"]


@dataclass(frozen=True)
class Tensor:
    """A produced tensor, its header fields and provenance, ready to be framed."""

    resolved: Resolved
    array: np.ndarray
    provenance: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.resolved.shape

    @property
    def dtype(self) -> str:
        return self.resolved.out_dtype

    @property
    def nbytes(self) -> int:
        return self.resolved.nbytes

    def chunks(self, chunk_bytes: int) -> Iterator[tuple[int, memoryview]]:
        """(byte offset, bytes) pieces of at most ``chunk_bytes``, little-endian, in order."""
        data = to_wire_bytes(self.array)
        for offset in range(0, len(data), chunk_bytes):
            yield offset, data[offset : offset + chunk_bytes]


class Service:
    """Everything the transports need, with no knowledge of any transport.

    Args:
        limits: caps checked before any work.
        workers: threads that run JAX, so that the event loop never blocks on it.
    """

    def __init__(self, limits: Limits | None = None, *, workers: int = 4) -> None:
        self.limits = limits or Limits()
        self.identity: ServerIdentity = server_identity()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaxinit-jax")
        self.ready = False

    def describe(self) -> dict[str, Any]:
        """The registry, dtypes, key implementations and server identity, as plain data."""
        return {
            "initializers": [
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "source": spec.source,
                    "summary": spec.summary,
                    "uses_key": spec.uses_key,
                    "arguments": [
                        {
                            "name": a.name,
                            "type": a.type,
                            "required": a.required,
                            "default_json": a.default_json,
                            "choices": list(a.choices),
                            "doc": a.doc,
                        }
                        for a in spec.arguments
                    ],
                }
                for spec in CATALOG.values()
            ],
            "dtypes": list(DTYPE_NAMES),
            "key_impls": list(KEY_IMPLS),
            "server": {
                **self.identity.as_dict(),
                "threefry_partitionable": self.identity.defaults.threefry_partitionable,
                "enable_x64": self.identity.defaults.enable_x64,
            },
        }

    def prepare(self, params: GenerateParams) -> Resolved:
        """Validate and resolve a request (cheap, no JAX work). Raises domain errors."""
        return resolve(params, self.limits, self.identity.defaults)

    def etag(self, resolved: Resolved) -> str:
        """A strong ETag: the bytes are a pure function of the request on this JAX and backend."""
        text = f"{resolved.canonical}\n{self.identity.fingerprint}"
        return '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'

    async def generate(self, resolved: Resolved) -> Tensor:
        """Produce the tensor on a worker thread. Raises domain errors."""
        loop = asyncio.get_running_loop()
        generated = await loop.run_in_executor(self._executor, engine.run, resolved)
        return Tensor(resolved, generated.array, self._provenance(resolved, generated.key_data))

    def warm_up(self) -> None:
        """Run one small request of each common kind, so the first real one is not slow."""
        for name in ("lecun_normal", "normal", "zeros"):
            engine.run(self.prepare(GenerateParams(name, (2, 2), key=Key(seed=0))))
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _provenance(self, resolved: Resolved, key_data: tuple[int, ...]) -> dict[str, Any]:
        return {
            **self.identity.as_dict(),
            "key_impl": resolved.key.impl if resolved.key else "",
            "key_data": list(key_data),
            "threefry_partitionable": resolved.threefry_partitionable,
            "enable_x64": resolved.enable_x64,
            "canonical_request": resolved.canonical,
            "request_digest": resolved.digest,
        }

