"""How an answer is delivered, decided by the core from what the request asked: in the
stream, into a same-host caller's shared-memory region, or gathered whole in memory (a
JSON answer, capped by ``Limits.max_json_elements``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jaxinit.protocol.errors import TooLarge
from jaxinit_server.core.request import Limits, Resolved

__all__ = ["STREAM", "Delivery", "Gathered", "Region", "Stream", "delivery_for", "gathered_form"]


@dataclass(frozen=True)
class Stream:
    """The bytes in the answer's stream, a few chunks in memory at a time."""


@dataclass(frozen=True)
class Gathered:
    """The answer built whole in memory: as JSON (capped by ``Limits.max_json_elements``),
    or, with ``unary`` (the name of a call answered in one message), as its raw bytes
    (capped by ``Limits.max_unary_bytes``). ``nested``: JSON of nested lists, one per row
    of every axis, which count against the cap too; ``instead``: what to ask for instead
    of an answer over the cap (the refusal says it)."""

    nested: bool = True
    instead: str = ""
    unary: str = ""

    @property
    def as_json(self) -> bool:
        """Built as Python objects and text (admission prices those too)."""
        return not self.unary

    def check(self, limits: Limits, resolved: Resolved) -> None:
        """Raise TooLarge when the answer is over its cap: a unary answer's bytes; a JSON
        answer's elements, and when nested its lists too (a 0-size (2**40, 0) is 2**40 lists)."""
        if self.unary:
            if resolved.nbytes > limits.max_unary_bytes:
                raise TooLarge(
                    f"{self.unary} answers at most {limits.max_unary_bytes} bytes in its one message; this "
                    f"tensor has {resolved.nbytes}. {self.instead}".rstrip()
                )
            return
        elements = resolved.stop - resolved.start
        if self.nested and not resolved.is_range:
            elements = max(elements, sum(math.prod(resolved.shape[:axis]) for axis in range(len(resolved.shape))))
        if elements > limits.max_json_elements:
            what = "elements and lists" if self.nested else "elements"
            raise TooLarge(
                f"JSON answers are capped at {limits.max_json_elements} {what}; this one has {elements}. "
                f"{self.instead}".rstrip()
            )


STREAM = Stream()


@dataclass(frozen=True)
class Region:
    """The bytes in a shared-memory region of the caller holding ``token``; ``fallback``:
    how they go when shared memory has no room for them."""

    token: str
    fallback: Stream | Gathered = STREAM


Delivery = Stream | Region | Gathered


def gathered_form(delivery: Delivery) -> Gathered | None:
    """The gathered form ``delivery`` may take (admission prices it so), or None."""
    if isinstance(delivery, Region):
        delivery = delivery.fallback
    return delivery if isinstance(delivery, Gathered) else None


def delivery_for(*, region_token: str | None = None, gathered: Gathered | None = None) -> Delivery:
    """The delivery a request asked for: a region when it named a shared-memory token,
    gathered when its answer is built whole, else the stream."""
    plain: Stream | Gathered = gathered if gathered is not None else STREAM
    return Region(region_token, plain) if region_token is not None else plain
