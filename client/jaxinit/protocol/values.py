"""A caller's values: checked as ints and shapes, and quoted short in error messages.

JAX-free and shared: every part of the protocol (the catalog, keys, model descriptions)
and the server's request resolution and KServe mapping check ints and shapes and quote
what a caller sent with these, so that the same mistake reads the same everywhere and
no message echoes a huge value back whole.

>>> is_int(3), is_int(True), is_int(3.0)
(True, False, False)
>>> check_shape([2, 3])
(2, 3)
>>> quote("x" * 100, 8)
"'xxxxxxx... (100 characters)"
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np

from jaxinit.protocol.errors import InvalidArgument

__all__ = [
    "MAX_INDEX",
    "MAX_RANK",
    "QUOTE_CHARS",
    "RELAYED_CHARS",
    "check_flag",
    "check_shape",
    "dims",
    "is_int",
    "quote",
    "relay",
]

QUOTE_CHARS = 80  # how much of a caller's value an error message quotes
RELAYED_CHARS = 600  # how much of a message from elsewhere (catalog, dtypes) is passed on
MAX_RANK = 64  # no JAX array has more dimensions than this
# What numpy and XLA can index: every byte count, including the product of the non-zero
# dimensions of a 0-size shape, must stay below 2**63.
MAX_INDEX = 2**63 - 1


def is_int(value: Any) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_flag(value: Any, what: str) -> bool:
    """``value`` as a flag: true or false, nothing else (no 0, 1 or "true").

    Raises:
        InvalidArgument: naming ``what``.
    """
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be true or false, got {quote(value, 40)}")
    return value


def check_shape(value: Any, what: str = "shape") -> tuple[int, ...]:
    """``value`` as a shape: a sequence (or 1-D array) of at most :data:`MAX_RANK`
    non-negative ints, each at most :data:`MAX_INDEX`.

    Raises:
        InvalidArgument: naming ``what`` (``"shape"``, ``"model.params[3]: 'init_shape'"``).
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise InvalidArgument(f"{what} must be a sequence of non-negative ints, got {quote(value)}")
    if len(value) > MAX_RANK:
        raise InvalidArgument(f"{what} has rank {len(value)}; at most {MAX_RANK} dimensions")
    out: list[int] = []
    for dim in value:
        if not is_int(dim) or dim < 0:
            raise InvalidArgument(f"{what} must be a sequence of non-negative ints, got {quote(value)}")
        if int(dim) > MAX_INDEX:
            raise InvalidArgument(f"{what} {dims(value)}: dimension {len(out)} is over 2**63 - 1")
        out.append(int(dim))
    return tuple(out)


def dims(shape: Sequence[Any] | np.ndarray, limit: int = 8) -> str:
    """A shape for a message: at most ``limit`` dimensions, then how many more.

    >>> dims(range(10), 3)
    '[0, 1, 2, ... 7 more]'
    """
    shown = ", ".join(quote(d, 24) for d in list(shape[:limit]))
    more = f", ... {len(shape) - limit} more" if len(shape) > limit else ""
    return f"[{shown}{more}]"


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters of it.

    A longer one is cut and ends in ``...`` and the value's size. The work is bounded
    whatever the value's size or nesting: only as much of it is rendered as is shown.

    >>> quote("abc"), quote(list(range(1000)), 10)
    ("'abc'", '[0, 1, 2, ... (1000 items)')
    """
    text = ""
    for part in _repr_parts(value, limit + 1):
        text += part
        if len(text) > limit:
            break
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...{_size(value)}"


def _repr_parts(value: Any, budget: int) -> Iterator[str]:
    """``repr(value)`` in pieces, lazily, so that a consumer that stops early pays only for what it
    read; strings are cut to ``budget`` characters first. Every container yields its opening
    bracket first, so a consumer that stops after ``budget`` characters is at most that deep."""
    kind = type(value)
    if kind is str or kind is bytes:
        yield repr(value[:budget])
    elif kind is dict:
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _repr_parts(k, budget)
            yield ": "
            yield from _repr_parts(v, budget)
        yield "}"
    elif kind is list or kind is tuple:
        yield "[" if kind is list else "("
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _repr_parts(item, budget)
        yield "]" if kind is list else ("," if len(value) == 1 else "") + ")"
    else:
        try:
            yield repr(value)
        except Exception:  # an int past Python's digit limit, a repr that raises
            yield f"<{kind.__name__}>"


def _size(value: Any) -> str:
    """`` (N characters)`` and the like, for a cut quote; empty where the value has no length."""
    if isinstance(value, str):
        return f" ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)):
        return f" ({len(value)} bytes)"
    if isinstance(value, Sized):
        try:
            n = len(value)
        except Exception:
            return ""
        return f" ({n} item{'' if n == 1 else 's'})"
    return ""


def relay(message: str, *values: Any) -> str:
    """A message from elsewhere (the catalog, the dtype table), which may quote a caller's value
    whole: each long ``repr`` of ``values`` in it quoted short, and the whole kept bounded.

    The message may hold only the start of a ``repr`` (where it was cut to a length): that
    part is what is replaced.
    """
    if len(message) <= QUOTE_CHARS:  # too short to hold a long repr
        return message
    for value in values:
        try:
            text = repr(value)
        except Exception:  # too deep to repr: the clip below bounds what was said of it
            continue
        if len(text) <= QUOTE_CHARS or quote(value) in message:  # short, or quoted short already
            continue
        start = message.find(text[:QUOTE_CHARS])
        if start < 0:
            continue
        # The longest start of ``text`` the message holds there (binary search, compared in C).
        low, high = QUOTE_CHARS, min(len(text), len(message) - start)
        while low < high:
            mid = (low + high + 1) // 2
            if message[start : start + mid] == text[:mid]:
                low = mid
            else:
                high = mid - 1
        message = f"{message[:start]}{quote(value)}{message[start + low :]}"
    if len(message) > RELAYED_CHARS:
        message = f"{message[:RELAYED_CHARS]}... ({len(message)} characters)"
    return message
