"""A request decided once: its resolved form, the one producer it gets, its price and the
identity of its whole tensor. :meth:`Service.prepare` makes it; admission, the result cache
and the engine read it and never decide any of it again."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass

from jaxinit.protocol.codec import DTYPES
from jaxinit.protocol.errors import TooLarge
from jaxinit_server.core.request import Limits, Resolved

__all__ = ["Cost", "Plan", "refuse", "whole_request"]


@dataclass(frozen=True)
class Cost:
    """What a request will hold and do, decided before it is admitted."""

    route: str
    memory: int  # bytes held at the peak while it is made and sent
    flops: int  # floating-point operations of its largest step (a QR: ~4mn^2)
    # What making it takes on a JAX thread or a whole-tensor worker that the caller cannot
    # interrupt midway (key derivation, eager calls, compiles, a whole tensor's arithmetic),
    # in FLOP equivalents; streaming chunks, which stop with their reader, is not counted.
    compute: int = 0
    why: str = ""  # what most of ``compute`` is, for a refusal's message


@dataclass(frozen=True)
class Plan:
    """One priced request (see the module's doc).

    Attributes:
        resolved: the request, every default decided.
        cost: its producer's route and price (``cost.route``: empty, chunked, fill or whole).
        identity: the key of its whole tensor in the result cache (its canonical request
            without the range, and what besides the request the bytes depend on).
        heavy: its uninterruptible compute is over ``Limits.heavy_flops`` (see admission).
    """

    resolved: Resolved
    cost: Cost
    identity: str = ""
    heavy: bool = False

    @property
    def count(self) -> int:
        """The elements sent."""
        return self.resolved.stop - self.resolved.start

    @property
    def gathered_bytes(self) -> int:
        """What building the answer whole in memory adds (a JSON answer's Python objects and text)."""
        return self.count * (DTYPES[self.resolved.out_dtype].itemsize + 64)

    @functools.cached_property
    def whole(self) -> Plan:
        """The plan of the whole tensor a range is part of (itself when it is whole): what a
        shared generation makes. Its route is the range's; its price is the range's too, as
        only whether it is heavy is read from it."""
        if not self.resolved.is_range:
            return self
        return dataclasses.replace(self, resolved=whole_request(self.resolved))


def whole_request(resolved: Resolved) -> Resolved:
    """``resolved`` for its whole tensor (a range's whole)."""
    if not resolved.is_range:
        return resolved
    fields = json.loads(resolved.canonical)
    fields.pop("range", None)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    total = math.prod(resolved.shape)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return dataclasses.replace(
        resolved,
        start=0,
        stop=total,
        nbytes=total * DTYPES[resolved.out_dtype].itemsize,
        canonical=canonical,
        digest=digest,
        tensor_digest=digest,
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def refuse(resolved: Resolved, cost: Cost, memory: int, limits: Limits) -> None:
    """TooLarge for what this server will never do: more working memory (``memory``) than
    all requests together may hold, or more compute than one whole-tensor request may take."""
    whole = cost.route == "whole"
    what = f"{resolved.spec.name} on a {resolved.out_dtype} tensor of shape {list(resolved.shape)[:8]}"
    if memory > limits.max_inflight_bytes:
        how = "is made whole" if whole else "is built whole in memory"
        raise TooLarge(
            f"{what} {how} and needs ~{_gib(memory)} of working memory, over this server's "
            f"{_gib(limits.max_inflight_bytes)} for all requests (--max-inflight-bytes)"
            + (
                "; ask for a chunked family, or binary data instead of JSON"
                if not whole or resolved.spec.name not in ("orthogonal", "delta_orthogonal")
                else ""
            )
        )
    if cost.compute > limits.max_whole_flops:
        raise TooLarge(
            f"{what} needs ~{cost.compute / 1e9:.0f} GFLOP of compute (mostly {cost.why}), over this "
            f"server's {limits.max_whole_flops / 1e9:.0f} GFLOP per request (--max-whole-flops)"
        )
