"""Failures that are not bugs, named as domain errors wherever an adapter catches them.

The one error table (:data:`jaxinit.protocol.errors.ERROR_TABLE`) maps domain errors to HTTP and
gRPC; this maps the few foreign exceptions a request can cause to domain errors, so that
no adapter answers them as an internal error.
"""

from __future__ import annotations

from jaxinit.protocol.errors import InvalidArgument, JaxinitError, TooLarge

__all__ = ["as_domain_error"]


def as_domain_error(exc: BaseException) -> JaxinitError | None:
    """``exc`` as the domain error it means, or None for a bug (an internal error).

    >>> as_domain_error(RecursionError()).message
    'the request is nested too deeply to read'
    """
    if isinstance(exc, JaxinitError):
        return exc
    if isinstance(exc, RecursionError):  # a body or value nested past Python's stack
        return InvalidArgument("the request is nested too deeply to read")
    text = str(exc)
    if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
        return TooLarge("the server ran out of memory making this answer; ask for a smaller tensor or a range")
    return None
