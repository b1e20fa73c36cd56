"""The priced plan (core/plan.py): a request is routed and priced once, the engine reads
its route, and a range's whole is its tensor."""

from __future__ import annotations

from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, engine
from jaxinit_server.core.plan import Plan, whole_request
from jaxinit_server.core.request import PrngDefaults, resolve

DEFAULTS = PrngDefaults(True, False)


def _resolved(shape: tuple[int, ...], **kwargs: object) -> object:
    return resolve(GenerateParams("normal", shape, key=Key(seed=1), **kwargs), Limits(), DEFAULTS)  # type: ignore[arg-type]


def test_a_plan_carries_its_route_and_price_and_its_ranges_whole() -> None:
    resolved = _resolved((64, 64), offset=10, count=100)
    plan = Plan(resolved, engine.price(resolved), "id")  # type: ignore[arg-type]
    assert plan.cost.route == engine.CHUNKED and plan.count == 100
    assert plan.gathered_bytes == 100 * (4 + 64)
    whole = plan.whole
    assert (whole.resolved.start, whole.resolved.stop) == (0, 64 * 64)
    assert whole.resolved == whole_request(resolved)  # type: ignore[arg-type]
    assert whole.cost is plan.cost and whole.whole is whole


def test_the_engine_reads_a_plans_route() -> None:
    resolved = _resolved((4, 4))
    plan = Plan(resolved, engine.price(resolved))  # type: ignore[arg-type]
    made = engine.prepare(plan)
    assert made.route == engine.CHUNKED and made.array is not None and made.array.size == 16
