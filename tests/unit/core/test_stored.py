"""Stored tensors (core/stored.py): digests fixed from the pieces as they are made, before
they are copied; large ones sealed in a memfd and checked once; small ones checked on
every read; blocks checked only where a reader reads."""

from __future__ import annotations

import numpy as np
import pytest

from jaxinit.protocol.digest import new_hasher
from jaxinit_server.core.stored import BLOCK, Corrupt, Digests, Stored


def test_digests_split_blocks_wherever_the_pieces_end() -> None:
    data = np.random.default_rng(0).integers(0, 255, 3 * BLOCK + 123, np.uint8).tobytes()
    digests = Digests()
    for start in range(0, len(data), 777_777):
        digests.update(memoryview(data[start : start + 777_777]))
    whole = digests.finish()
    hasher = new_hasher()
    hasher.update(data)
    assert whole == hasher.digest() and len(digests.blocks) == 4
    for index, block in enumerate(digests.blocks):
        one = new_hasher()
        one.update(data[index * BLOCK : (index + 1) * BLOCK])
        assert block == one.digest()


def test_a_large_tensor_is_sealed_and_a_small_one_checked_each_read() -> None:
    pieces = [np.arange(300_000, dtype=np.float32), np.arange(5, dtype=np.float32)]
    stored = Stored(300_005, np.dtype(np.float32))
    for piece in pieces:
        stored.write(piece)
    stored.finish()
    assert stored.array.tobytes() == np.concatenate(pieces).tobytes()
    assert stored.sealed and stored.dup() is not None  # 1.2 MB: a sealed memfd where the OS has them
    small = Stored(4, np.dtype(np.float32))
    small.write(np.ones(4, np.float32))
    small.finish()
    assert not small.sealed and small.fd is None
    small.array[0] = 5
    with pytest.raises(Corrupt, match="differs from its digest"):
        small.verify(0, 4)


def test_a_view_of_a_larger_chunk_is_copied_out() -> None:
    chunk = np.arange(4096, dtype=np.float32)
    stored = Stored(4, np.dtype(np.float32), sealed=False)
    stored.adopt(chunk[:4])
    assert stored.array.base is None and stored.array.nbytes == 16
    assert stored.array.tobytes() == chunk[:4].tobytes()


def test_only_the_blocks_a_reader_reads_are_checked() -> None:
    stored = Stored(3 * BLOCK // 4, np.dtype(np.float32), sealed=False)
    stored.write(np.zeros(3 * BLOCK // 4, np.float32))
    stored.finish()
    stored.array.view(np.uint8)[2 * BLOCK + 7] = 1  # the third block changed
    stored.verify(0, BLOCK // 2)  # the first two blocks: fine
    with pytest.raises(Corrupt, match="block 2"):
        stored.verify(BLOCK // 2, 3 * BLOCK // 4)
