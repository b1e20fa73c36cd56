"""jax.jit programs are priced as a compile until this server has made them once; then,
with the compilation cache on (another worker reads the program back), they are not:
a jitted model of many same-shaped tensors is not queued as heavy work tensor by tensor. (jit
requests of the chunked families are chunked, each chunk program compiled once per scale and
chunk size, as the eager ones are: the whole-tensor route is priced here.)"""

from __future__ import annotations

import asyncio
import pathlib

import numpy as np

from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, Service, engine


def _jit(seed: int) -> GenerateParams:
    return GenerateParams("orthogonal", (64, 32), key=Key(seed=seed), jit=True)  # runs whole


def test_a_compiled_program_is_priced_once(tmp_path: pathlib.Path) -> None:
    cached, uncached = (
        Service(Limits(), compilation_cache_dir=str(tmp_path)),
        Service(Limits(), compilation_cache_dir=None),
    )
    try:
        for service in (cached, uncached):
            service.ready = True
            before = service.price(service.prepare(_jit(1))).compute
            assert before >= engine.COMPILE_FLOPS

            async def run(service: Service = service) -> bytes:
                tensor = await service.generate(service.prepare(_jit(1)))
                return bytes(await tensor.array())

            made = asyncio.run(run())
            assert len(made) == 64 * 32 * 4 and np.frombuffer(made, np.float32).std() > 0
            other_key = service.price(service.prepare(_jit(2))).compute  # the same program, another key
            other_shape = service.price(
                service.prepare(GenerateParams("orthogonal", (64, 33), key=Key(seed=1), jit=True))
            )
            assert other_shape.compute >= engine.COMPILE_FLOPS
            if service is cached:
                assert other_key < engine.COMPILE_FLOPS
            else:
                assert other_key >= engine.COMPILE_FLOPS
    finally:
        cached.close()
        uncached.close()
