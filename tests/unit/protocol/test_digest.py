"""The integrity digest: xxh3-128 over the bytes in order, big-endian, the same whatever
the pieces they were fed in."""

from __future__ import annotations

import numpy as np
import xxhash

from jaxinit.protocol.digest import ALGORITHM, DIGEST_BYTES, new_hasher


def _digest(*pieces: bytes | memoryview) -> bytes:
    hasher = new_hasher()
    for piece in pieces:
        hasher.update(piece)
    return hasher.digest()


def test_it_is_xxh3_128_big_endian() -> None:
    assert ALGORITHM == "xxh3-128" and DIGEST_BYTES == 16
    data = b"jaxinit" * 1000
    digest = _digest(data)
    assert len(digest) == DIGEST_BYTES
    assert digest == xxhash.xxh3_128_digest(data) == xxhash.xxh3_128_intdigest(data).to_bytes(16, "big")
    # the published value for no input (xxHash's own test vectors: XXH3_128bits of "")
    assert _digest().hex() == "99aa06d3014798d86001c324468d497f"


def test_pieces_digest_as_the_whole() -> None:
    data = np.arange(100_000, dtype=np.float32).tobytes()
    whole = _digest(data)
    for cut in (1, 7, 4096, 65_536, 399_999):
        assert _digest(data[:cut], data[cut:]) == whole
    view = memoryview(data)
    assert _digest(*(view[i : i + 1000] for i in range(0, len(data), 1000))) == whole  # memoryviews, no copy


def test_any_change_changes_the_digest() -> None:
    data = bytearray(np.arange(1000, dtype=np.float32).tobytes())
    whole = _digest(bytes(data))
    assert _digest(bytes(data[:-1])) != whole  # truncated
    data[500] ^= 1
    assert _digest(bytes(data)) != whole  # one bit flipped
