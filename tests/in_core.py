"""Driving the core in this process: requests through ``Service.prepare`` and
``Service.generate`` to the bytes an adapter would send (tests/core)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol import Provenance
from jaxinit.protocol.codec import array_from_buffer
from jaxinit.protocol.errors import JaxinitError
from jaxinit.protocol.keys import as_key
from jaxinit_server.core import GenerateParams, Service


@dataclass(frozen=True)
class Made:
    """One answer as the core streams it: the wire bytes, read back as the client does."""

    data: bytes
    array: np.ndarray
    dtype: str
    provenance: Provenance
    route: str


@dataclass(frozen=True)
class Ask:
    """One request as a caller sends it (a key as the client takes one)."""

    initializer: str
    key: Any
    shape: tuple[int, ...]
    dtype: str | None = None
    args: dict[str, Any] | None = None
    threefry_partitionable: bool | None = None
    enable_x64: bool | None = None
    offset: int | None = None
    count: int | None = None
    jit: bool = False

    def params(self) -> GenerateParams:
        return GenerateParams(
            self.initializer,
            self.shape,
            args=self.args or {},
            dtype=self.dtype,
            key=None if self.key is None else as_key(self.key),
            threefry_partitionable=self.threefry_partitionable,
            enable_x64=self.enable_x64,
            offset=self.offset,
            count=self.count,
            jit=self.jit,
        )


async def _one(service: Service, ask: Ask) -> Made | JaxinitError:
    try:
        resolved = service.prepare(ask.params())
        stream = await service.generate(resolved)
        parts = [bytes(piece) async for _, piece in stream.chunks(2**20)]
    except JaxinitError as exc:
        return exc
    data = b"".join(parts)
    array = array_from_buffer(data, stream.sent_shape, stream.dtype)
    return Made(data, array, stream.dtype, stream.provenance, stream.route)


def make_all(service: Service, asks: Sequence[Ask]) -> list[Made | JaxinitError]:
    """Each request's answer (or the domain error the core raised for it), in order."""

    async def main() -> list[Made | JaxinitError]:
        return [await _one(service, ask) for ask in asks]

    return asyncio.run(main())


def make(service: Service, ask: Ask) -> Made:
    (made,) = make_all(service, [ask])
    if isinstance(made, Exception):
        raise made
    return made
