"""Model orchestration (core/models.py): every tensor planned once, by check, and those
plans are what admission and generation read (a model handed on without them included)."""

from __future__ import annotations

import asyncio

from jaxinit.protocol.keys import Key
from jaxinit_server.core import InitModelParams, Limits, Service

MODEL = {
    "params": [
        {"path": "a", "shape": [4, 8], "initializer": "lecun_normal"},
        {"path": "b", "shape": [8], "initializer": "zeros"},
    ]
}


def test_a_models_tensors_are_planned_once_and_streamed_in_order() -> None:
    service = Service(Limits(), whole_workers=1, cache_bytes=0)
    planned_calls = []
    real = service.plan

    def plan(resolved: object) -> object:
        planned_calls.append(resolved)
        return real(resolved)  # type: ignore[arg-type]

    service.plan = plan  # type: ignore[method-assign]
    try:

        async def run() -> list[str]:
            model = await service.prepare_model(InitModelParams(MODEL, Key(seed=0)))
            planned = await service.check_model(model)
            assert [p.resolved for p in planned.plans] == model.requests
            ticket = service.admit_model(model)  # the ResolvedModel: check's plans are found
            names = []
            async for name, tensor in service.generate_model(model, ticket=ticket):
                assert not isinstance(tensor, BaseException)
                async for _ in tensor.chunks(2**20):
                    pass
                names.append(name)
            return names

        assert asyncio.run(run()) == ["a", "b"]
        assert len(planned_calls) == 2  # once per tensor
        assert service.idle
    finally:
        service.close()
