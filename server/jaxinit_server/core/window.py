"""A stream of requests answered in order (gRPC GenerateMany): each request's tensor is
started as it arrives, at most :data:`SIZE` ahead of the one being sent.

Read-ahead is opportunistic: a request refused for capacity while others are ahead of it
waits until they are sent, and is then judged alone, so a caller's own read-ahead never
makes its request a 429. Transport-free: the adapter reads requests, hands each one here,
and sends the answers in order.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from jaxinit.protocol.errors import Overloaded
from jaxinit_server.core.delivery import STREAM, Delivery
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.stream import TensorStream

if TYPE_CHECKING:
    from jaxinit_server.core.service import Service

__all__ = ["SIZE", "Window"]

SIZE = 4  # requests started ahead of the one being sent


class Window:
    """One stream's read-ahead (see the module's doc).

    Args:
        service: what admits and makes the tensors.
        caller: whom admission charges them to.
        size: requests started ahead of the one being sent (the adapter's queue bound).
    """

    def __init__(self, service: Service, caller: str | None, size: int = SIZE) -> None:
        self._service = service
        self._caller = caller
        self.size = size
        self.unsent = 0  # started, and not yet sent (or failed)
        self._all_sent = asyncio.Event()
        self._all_sent.set()

    async def start(self, plan: Plan, delivery: Delivery = STREAM) -> asyncio.Future[TensorStream]:
        """``plan``'s tensor, admitted and started; its errors come out of the future. A
        request refused for capacity while others are unsent waits for them, then is
        admitted (or refused) alone."""
        try:
            try:
                admitted = self._service.admit(plan, delivery=delivery, caller=self._caller)
            except Overloaded:
                if not self.unsent:
                    raise
                await self._all_sent.wait()  # the items ahead hold capacity: once they are sent, try alone
                admitted = self._service.admit(plan, delivery=delivery, caller=self._caller)
        except Exception as exc:
            return self.failed(exc)
        self._started()
        return asyncio.ensure_future(self._service.generate(admitted, delivery=delivery))

    def failed(self, error: BaseException) -> asyncio.Future[TensorStream]:
        """An item that failed before it started (it still takes its turn in the order)."""
        future: asyncio.Future[TensorStream] = asyncio.get_running_loop().create_future()
        future.set_exception(error)
        self._started()
        return future

    def sent(self) -> None:
        """An item's answer is sent (or failed): the items behind it may be judged alone."""
        self.unsent -= 1
        if not self.unsent:
            self._all_sent.set()

    def _started(self) -> None:
        self.unsent += 1
        self._all_sent.clear()
