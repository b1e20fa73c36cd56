"""The framed multi-tensor body: frames read back whatever pieces the body arrives in."""

from __future__ import annotations

import json

import pytest

from jaxinit.protocol import frames
from jaxinit.protocol.errors import InvalidArgument, ProtocolError


def _body() -> bytes:
    header = json.dumps({"name": "w", "shape": [3]}).encode()
    error = frames.error_payload(InvalidArgument("no"), "b")
    return b"".join(
        [
            frames.frame(frames.HEADER, header),
            frames.prefix(frames.DATA, 6) + b"abcdef",
            frames.prefix(frames.DATA, 0),
            frames.frame(frames.DIGEST, b"\x01" * 16),
            frames.frame(frames.ERROR, error),
            frames.frame(frames.END, b""),
        ]
    )


def _read(pieces: list[bytes]) -> list[tuple[str, bytes]]:
    reader = frames.FrameReader()
    out: list[tuple[str, bytes]] = []
    for piece in pieces:
        for kind, payload in reader.feed(piece):
            if out and kind == frames.DATA and out[-1][0] == frames.DATA:
                out[-1] = (kind, out[-1][1] + bytes(payload))
            else:
                out.append((kind, bytes(payload)))
    assert reader.between
    return out


@pytest.mark.parametrize("size", [1, 2, 5, 7, 4096])
def test_frames_read_back_in_any_pieces(size: int) -> None:
    body = _body()
    got = _read([body[i : i + size] for i in range(0, len(body), size)])
    assert [kind for kind, _ in got] == ["h", "d", "s", "e", "z"]
    assert got[1] == ("d", b"abcdef")
    error = {"name": "b", "code": "INVALID_ARGUMENT", "type": "InvalidArgument", "message": "no"}
    assert json.loads(got[3][1]) == error


def test_an_unknown_kind_or_an_oversized_header_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        list(frames.FrameReader().feed(b"q\0\0\0\0"))
    with pytest.raises(ProtocolError, match="over"):
        list(frames.FrameReader().feed(frames.prefix(frames.HEADER, frames.MAX_META_BYTES + 1)))
    with pytest.raises(ProtocolError, match="not a JSON object"):
        frames.json_payload(frames.HEADER, b"[1]")
