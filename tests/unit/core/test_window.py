"""GenerateMany's read-ahead (core/window.py), transport-free: items start as they come,
an item refused for capacity while others are unsent waits for them and is then judged
alone, and a refusal with nothing ahead is the item's own error at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument, Overloaded
from jaxinit_server.core.delivery import STREAM
from jaxinit_server.core.window import SIZE, Window


class FakeService:
    """Admits while fewer than ``capacity`` are held; generate returns what it was given."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.refused = 0

    def admit(self, plan: Any, *, delivery: Any, caller: Any) -> str:
        if self.held >= self.capacity:
            self.refused += 1
            raise Overloaded("full", retry_after=1.0)
        self.held += 1
        return f"admitted {plan}"

    async def generate(self, admitted: str, *, delivery: Any) -> str:
        return admitted


def _window(service: FakeService) -> Window:
    return Window(service, "caller")  # type: ignore[arg-type]


def test_items_start_as_they_come_and_count_until_sent() -> None:
    async def run() -> None:
        window = _window(FakeService(capacity=10))
        first = await window.start("a", STREAM)  # type: ignore[arg-type]
        second = await window.start("b", STREAM)  # type: ignore[arg-type]
        assert (await first, await second) == ("admitted a", "admitted b")
        assert window.unsent == 2
        window.sent()
        window.sent()
        assert window.unsent == 0

    asyncio.run(run())
    assert SIZE == 4


def test_a_refusal_with_nothing_ahead_is_the_items_error() -> None:
    async def run() -> None:
        window = _window(FakeService(capacity=0))
        future = await window.start("a", STREAM)  # type: ignore[arg-type]
        with pytest.raises(Overloaded):
            await future
        assert window.unsent == 1  # it still takes its turn in the order
        window.sent()

    asyncio.run(run())


def test_a_refusal_behind_unsent_items_waits_for_them_then_is_judged_alone() -> None:
    async def run() -> None:
        service = FakeService(capacity=1)
        window = _window(service)
        ahead = await window.start("a", STREAM)  # type: ignore[arg-type]
        behind = asyncio.ensure_future(window.start("b", STREAM))  # type: ignore[arg-type]
        for _ in range(10):
            await asyncio.sleep(0)
        assert not behind.done() and service.refused == 1  # refused once, waiting
        await ahead
        service.held -= 1  # the item ahead is sent: its capacity comes back
        window.sent()
        assert await (await behind) == "admitted b"

    asyncio.run(run())


def test_an_item_that_failed_before_it_started_keeps_its_place() -> None:
    async def run() -> None:
        window = _window(FakeService(capacity=1))
        future = window.failed(InvalidArgument("no such initializer"))
        assert window.unsent == 1
        with pytest.raises(InvalidArgument):
            await future
        window.sent()
        assert window.unsent == 0

    asyncio.run(run())
