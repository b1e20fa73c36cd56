"""JSON for big bodies and answers without stalling the event loop, and the garbage
collector kept from doing so.

``json.loads`` and ``json.dumps`` are single C calls that hold the GIL for their whole
run: moved to a thread, a 7 MB body still froze the event loop (and health) for its
full parse. The pure-Python scanner and encoder of the standard library give the GIL
up between bytecodes, so in a worker thread they cost seconds of that thread, not of
the loop. Small documents keep the fast C path. The same holds for the collector: a
full collection over a request's millions of objects held the GIL for ~0.2 s.
"""

from __future__ import annotations

import asyncio
import gc
import json
import json.decoder
import json.scanner
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxinit.protocol.codec import is_bits_type

__all__ = ["SMALL", "collect_garbage", "dumps", "json_numbers", "loads"]

SMALL = 64 * 2**10  # bytes: below this the C parser is quick enough anywhere


def _interruptible_decoder(parse_constant: Callable[[str], Any] | None = None) -> json.JSONDecoder:
    decoder = json.JSONDecoder(parse_constant=parse_constant)
    decoder.parse_string = json.decoder.py_scanstring  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


_DECODER = _interruptible_decoder()
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def loads(data: bytes | str, *, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """``json.loads``; a large document with the interruptible scanner (call it from a
    worker thread). Raises ValueError (JSONDecodeError) and RecursionError as json does."""
    if len(data) <= SMALL:
        return json.loads(data, parse_constant=parse_constant)
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    decoder = _DECODER if parse_constant is None else _interruptible_decoder(parse_constant)
    return decoder.decode(text)


def dumps(content: Any) -> bytes:
    """Compact JSON (NaN and infinities refused), built piece by piece: the GIL is given
    up between pieces, so a big answer encoded in a worker thread never stalls the loop."""
    return "".join(_ENCODER.iterencode(content)).encode()


async def collect_garbage(idle: Callable[[], bool], *, period: float = 0.1, full_every: float = 5.0) -> None:
    """Run the collector on a schedule instead of by allocation counts (a task).

    Objects made at start-up (JAX's, the app's) are frozen out of every collection. While
    requests are in flight only the youngest generation is collected, every ``period``
    seconds, so a pause is bounded by what was allocated in that time (a full collection
    over a big model request's millions of objects took ~0.2 s). A full collection runs
    when nothing is in flight, at most every ``full_every`` seconds, and at the latest
    after ``full_every * 60`` busy seconds. Acyclic garbage is freed at once by reference
    counting, as always; only cycles wait.
    """
    loop = asyncio.get_running_loop()
    gc.collect()
    gc.freeze()
    gc.disable()
    last_full = loop.time()
    try:
        while True:
            await asyncio.sleep(period)
            since = loop.time() - last_full
            if (since > full_every and idle()) or since > full_every * 60:
                gc.collect()
                last_full = loop.time()
            else:
                gc.collect(0)
    finally:
        gc.enable()


def json_numbers(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype whose ``tolist()`` JSON can hold exactly: bfloat16 and the float8
    types as float32, which holds each of their values."""
    return array.astype(np.float32) if is_bits_type(array.dtype) else array
