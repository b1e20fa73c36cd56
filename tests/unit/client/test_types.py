"""The client's received-tensor types: the assembler that collects a streamed tensor, the
check that an answer is for the key and jit asked, and model errors named by tensor."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

import jaxinit
from jaxinit._types import Assembler
from jaxinit.protocol.codec import ITEMSIZE
from jaxinit.protocol.keys import Key


def test_an_answer_without_the_derive_steps_asked_for_is_refused() -> None:
    """A server older than derive steps drops them (an unknown proto field) and answers for
    the plain key: the client refuses the tensor rather than return other values."""
    from jaxinit._types import check_derived

    key = jaxinit.split(jaxinit.key(3), 4)[1]

    def answer(answered: Key) -> jaxinit.Tensor:
        canonical = json.dumps({"key": answered.to_json()})
        provenance = jaxinit.Provenance(canonical_request=canonical)
        return jaxinit.Tensor(np.zeros(1, np.float32), provenance)

    assert check_derived(key, answer(key)).array.shape == (1,)
    assert check_derived(jaxinit.key(3), answer(jaxinit.key(3)))  # no steps: nothing to check
    with pytest.raises(jaxinit.ProtocolError, match="older than this client"):
        check_derived(key, answer(jaxinit.key(3)))
    model_tensor = answer(jaxinit.fold_in(key, 9))  # a model's tensor: the root's steps, then its own
    assert check_derived(key, model_tensor) is model_tensor
    # jit asked of a server that predates it: it answers eagerly, its canonical request says no jit
    eager = jaxinit.Tensor(np.zeros(1, np.float32), jaxinit.Provenance(canonical_request='{"key": null}'))
    with pytest.raises(jaxinit.ProtocolError, match="eager values where jit values"):
        check_derived(None, eager, jit=True)
    compiled = jaxinit.Tensor(np.zeros(1, np.float32), jaxinit.Provenance(canonical_request='{"jit":true,"key":null}'))
    assert check_derived(None, compiled, jit=True) is compiled


def test_a_named_model_error_keeps_what_it_carries() -> None:
    from jaxinit import Overloaded
    from jaxinit._types import named

    error = Overloaded("busy", retry_after=2.5)
    renamed = named("Dense_0.kernel", error)
    assert isinstance(renamed, Overloaded) and renamed.retry_after == 2.5
    assert renamed.message == str(renamed) == "Dense_0.kernel: busy"


def _assembler(
    shape: tuple[int, ...] = (4, 5), dtype: str = "float32", total: int | None = None, **fields: Any
) -> Assembler:
    """An assembler for a tensor of ``shape`` (or the range ``fields`` name), its byte count
    the one that adds up unless ``total`` says otherwise."""
    if total is None:
        count = fields.get("count")
        elements = math.prod(shape) - fields.get("offset", 0) if count is None else count
        total = elements * ITEMSIZE[dtype]
    return Assembler(shape, dtype, total, jaxinit.Provenance(request_digest="d"), "r", **fields)


DATA = np.arange(20, dtype=np.float32)


def test_chunks_in_order_make_the_tensor_and_report_progress() -> None:
    seen: list[tuple[int, int]] = []
    assembler = _assembler(on_progress=lambda received, announced: seen.append((received, announced)))
    data = DATA.tobytes()
    for start in range(0, len(data), 7):  # chunks cut mid-element
        assembler.add(start, memoryview(data)[start : start + 7])
    assert assembler.done and assembler.complete
    tensor = assembler.finish()
    assert tensor.array.shape == (4, 5) and tensor.array.tobytes() == data
    assert (tensor.request_id, tensor.offset, tensor.tensor_shape) == ("r", 0, (4, 5))
    assert seen[0] == (0, 80) and sum(r for r, _ in seen) == 80


def test_a_range_is_flat_and_placed() -> None:
    assembler = _assembler(offset=3, count=6)
    assembler.add(0, DATA[3:9].tobytes())
    tensor = assembler.finish()
    assert tensor.array.shape == (6,) and (tensor.offset, tensor.tensor_shape) == (3, (4, 5))
    with pytest.raises(jaxinit.ProtocolError, match="outside a tensor of 20 elements"):
        _assembler(offset=15, count=6)


@pytest.mark.parametrize(("offset", "size"), [(4, 4), (0, 84)])  # a gap; more than announced
def test_a_chunk_out_of_place_is_an_integrity_error(offset: int, size: int) -> None:
    assembler = _assembler()
    with pytest.raises(jaxinit.IntegrityError, match="does not follow byte 0 of 80"):
        assembler.add(offset, bytes(size))


def test_overlap_and_early_ends_are_integrity_errors() -> None:
    assembler = _assembler()
    assembler.add(0, bytes(8))
    with pytest.raises(jaxinit.IntegrityError):
        assembler.add(4, bytes(8))  # overlaps
    with pytest.raises(jaxinit.IntegrityError, match="stream ended after 8 of 80 bytes"):
        assembler.finish()


def test_a_header_that_does_not_add_up_is_a_protocol_error() -> None:
    with pytest.raises(jaxinit.ProtocolError, match="header says 79 bytes"):
        _assembler(total=79)
    with pytest.raises(jaxinit.ProtocolError, match="unknown dtype 'float5'"):
        _assembler(dtype="float5", total=20)
    with pytest.raises(jaxinit.ProtocolError, match="cannot check"):
        _assembler(digest_algorithm="md5")


def test_an_announced_digest_is_checked_before_the_tensor_is_given() -> None:
    from jaxinit.protocol.digest import ALGORITHM, new_hasher

    hasher = new_hasher()
    hasher.update(DATA.tobytes())
    good = _assembler(digest_algorithm=ALGORITHM)
    with pytest.raises(jaxinit.ProtocolError, match="a digest after 0 of 80 bytes"):
        good.check_digest(ALGORITHM, hasher.digest())
    good.add(0, DATA.tobytes())
    assert good.done and not good.complete
    with pytest.raises(jaxinit.IntegrityError, match="digest the server announced never came"):
        good.finish()
    with pytest.raises(jaxinit.ProtocolError, match="announced a 'xxh3-128' digest"):
        good.check_digest("sha256", hasher.digest())
    good.check_digest(ALGORITHM, hasher.digest())
    assert good.finish().array.tobytes() == DATA.tobytes()

    corrupted = _assembler(digest_algorithm=ALGORITHM)
    corrupted.add(0, DATA[::-1].tobytes())
    with pytest.raises(jaxinit.IntegrityError, match="do not match"):
        corrupted.check_digest(ALGORITHM, hasher.digest())


def test_partial_keeps_only_whole_elements() -> None:
    assembler = _assembler()
    assert assembler.partial() is None
    assembler.add(0, DATA.tobytes()[:3])
    assert assembler.partial() is None  # not one whole element yet
    assembler.add(3, DATA.tobytes()[3:30])
    partial = assembler.partial()
    assert partial.array.tobytes() == DATA[:7].tobytes() and partial.offset == 0 and partial.tensor_shape == (4, 5)


def test_a_shared_memory_region_is_every_byte_at_once() -> None:
    assembler = _assembler()
    region = np.frombuffer(DATA.tobytes(), dtype=np.uint8)
    assembler.use_region(region)
    tensor = assembler.finish()
    assert tensor.shared_memory and tensor.array.tobytes() == DATA.tobytes()
    with pytest.raises(jaxinit.ProtocolError, match="region of 40 bytes for 80 announced"):
        _assembler().use_region(region[:40])
    started = _assembler()
    started.add(0, bytes(4))
    with pytest.raises(jaxinit.ProtocolError):
        started.use_region(region)  # after bytes came in the stream: not both
