"""Retries and resumption in the client: what is kept, what is asked for next, and what is
refused (pieces from two JAX versions are never stitched together)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import urllib.parse

import numpy as np
import pytest

from jaxinit import Interrupted, ProtocolError, ServerUnavailable
from jaxinit._client import _Resumption, join
from jaxinit._http import get_url
from jaxinit._types import Assembler, Provenance, Request

WHOLE = {"initializer": "normal", "shape": [4, 5]}


def _provenance(range_: tuple[int, int] | None = None, jax_version: str = "0.10.2") -> Provenance:
    """A provenance as the server writes it: the canonical request, compact, and its SHA-256."""
    fields = dict(WHOLE, **({"range": list(range_)} if range_ else {}))
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return Provenance(
        jax_version=jax_version,
        canonical_request=canonical,
        request_digest=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def _partial(request: Request, received: int, provenance: Provenance) -> Interrupted:
    """What a transport raises when a stream of ``request`` breaks after ``received`` bytes."""
    data = np.arange(20, dtype=np.float32).tobytes()
    start = request.offset or 0
    count = 20 - start if request.count is None else request.count
    assembler = Assembler(
        request.shape, "float32", count * 4, provenance, "", start, None if request.offset is None else count
    )
    assembler.add(0, data[start * 4 : start * 4 + received])
    return Interrupted("broke", assembler.partial())


def _tail(start: int, provenance: Provenance) -> object:
    from jaxinit._types import Tensor

    return Tensor(np.arange(start, 20, dtype=np.float32), provenance, "", start, (4, 5))


def test_a_broken_stream_resumes_from_the_last_whole_element() -> None:
    request = Request("normal", 0, (4, 5), "float32")
    state = _Resumption(request, retries=2, backoff=0.0)
    # 7 elements and 2 bytes of the 8th arrived: the 8th is asked for again.
    state.failed(_partial(request, 30, _provenance()))
    resumed = state.next_request()
    assert (resumed.offset, resumed.count) == (7, 13)
    tensor = state.done(_tail(7, _provenance((7, 13))))  # type: ignore[arg-type]
    assert tensor.array.shape == (4, 5) and tensor.offset == 0
    np.testing.assert_array_equal(tensor.array.reshape(-1), np.arange(20, dtype=np.float32))
    assert tensor.provenance == _provenance()


def test_pieces_from_two_jax_versions_are_refused() -> None:
    request = Request("normal", 0, (4, 5), "float32")
    state = _Resumption(request, retries=2, backoff=0.0)
    state.failed(_partial(request, 40, _provenance()))
    with pytest.raises(ProtocolError, match="different requests or servers"):
        state.done(_tail(10, _provenance((10, 10), jax_version="0.10.3")))  # type: ignore[arg-type]


def test_a_range_request_resumes_inside_its_range() -> None:
    request = Request("normal", 0, (4, 5), "float32", offset=5, count=10)
    state = _Resumption(request, retries=1, backoff=0.0)
    state.failed(_partial(request, 12, _provenance((5, 10))))
    assert (state.next_request().offset, state.next_request().count) == (8, 7)
    tail = dataclasses.replace(_tail(8, _provenance((8, 7))), array=np.arange(8, 15, dtype=np.float32))  # type: ignore[type-var]
    tensor = state.done(tail)
    assert tensor.offset == 5 and tensor.array.shape == (10,)
    np.testing.assert_array_equal(tensor.array, np.arange(5, 15, dtype=np.float32))


def test_retries_run_out_and_the_last_error_is_raised() -> None:
    state = _Resumption(Request("normal", 0, (4, 5)), retries=2, backoff=0.1)
    waits = [state.failed(ServerUnavailable("down")) for _ in range(2)]
    assert 0.05 <= waits[0] <= 0.15 and 0.1 <= waits[1] <= 0.3  # doubled, jittered
    with pytest.raises(ServerUnavailable, match="down"):
        state.failed(ServerUnavailable("down"))


def test_join_refuses_a_gap() -> None:
    request = Request("normal", 0, (4, 5), "float32")
    head = _partial(request, 20, _provenance()).partial
    with pytest.raises(ProtocolError, match=r"leave elements \[5, 10\) of \[0, 20\) uncovered"):
        join(request, [head, _tail(10, _provenance((10, 10)))])  # type: ignore[list-item]


def test_get_urls_are_canonical_and_carry_every_field() -> None:
    args = {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform", "batch_axis": (0,)}
    shuffled = {"batch_axis": [0], "distribution": "uniform", "mode": "fan_avg", "scale": 2.0}
    a = Request("variance_scaling", 3, (8, 4), "bfloat16", args, threefry_partitionable=False, offset=2, count=5)
    b = Request("variance_scaling", 3, [8, 4], "bfloat16", shuffled, threefry_partitionable=False, offset=2, count=5)
    assert get_url(a) == get_url(b)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(get_url(a)).query))
    assert query == {
        "shape": "8,4",
        "dtype": "bfloat16",
        "seed": "3",
        "key_impl": "threefry2x32",
        "threefry_partitionable": "false",
        "offset": "2",
        "count": "5",
        "scale": "2.0",
        "mode": '"fan_avg"',
        "distribution": '"uniform"',
        "batch_axis": "[0]",
    }
