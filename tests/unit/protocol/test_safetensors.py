"""The safetensors writer and reader, against the safetensors package itself (and torch
for the types numpy lacks)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from jaxinit import InvalidArgument, ProtocolError
from jaxinit.protocol import safetensors as st
from jaxinit.protocol.codec import raw_bits_dtype


def test_safetensors_store_raw_bits_as_their_own_type() -> None:
    """A BF16 file from raw bits is the file ml_dtypes' array makes, and torch reads it."""
    torch = pytest.importorskip("torch", reason="torch: the release tier's extra (make setup-release)")
    from safetensors.torch import load

    values = np.array([1.5, -2.25, 3e38, -0.0], dtype=ml_dtypes.bfloat16)
    raw = values.view(np.uint16).view(raw_bits_dtype("bfloat16"))
    data = st.dumps({"w": raw})
    assert data == st.dumps({"w": values})
    assert load(data)["w"].view(torch.int16).numpy().tobytes() == values.tobytes()


def test_writer_is_read_by_the_safetensors_package() -> None:
    import safetensors.numpy

    arrays = {
        "b": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a": np.array([1, -2], np.int64),
        "e": np.zeros((0, 4), np.float16),
        "s": np.array(True),
    }
    data = st.dumps(arrays, {"who": "me"})
    loaded = safetensors.numpy.load(data)
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()
    ours, metadata = st.loads(data)
    assert list(ours) == list(arrays) and metadata == {"who": "me"}


def test_reader_reads_the_package_and_bfloat16_via_torch() -> None:
    import safetensors.numpy

    torch = pytest.importorskip("torch", reason="torch: the release tier's extra (make setup-release)")
    import safetensors.torch

    data = safetensors.numpy.save({"x": np.ones((2, 2), np.float64)}, metadata={"k": "v"})
    tensors, metadata = st.loads(data)
    assert tensors["x"].dtype == np.float64 and metadata == {"k": "v"}
    bf = np.array([1.5, -2.25, 3e38], dtype=ml_dtypes.bfloat16)
    loaded = safetensors.torch.load(st.dumps({"w": bf}))
    assert loaded["w"].dtype == torch.bfloat16
    assert loaded["w"].view(torch.int16).numpy().tobytes() == bf.tobytes()
    back, _ = st.loads(safetensors.torch.save({"w": loaded["w"]}))
    assert back["w"].dtype == bf.dtype and back["w"].tobytes() == bf.tobytes()


MALFORMED = [
    b"",  # no header length
    b"\xff" * 8 + b"{}",  # a header length past the end
    (10).to_bytes(8, "little") + b"not json!!",
    st.header([("a", "float32", (2,))]),  # the data is missing
    st.header([("a", "float32", (2,))]).replace(b"[0,8]", b"[4,8]") + bytes(8),  # a hole
]


@pytest.mark.parametrize("data", MALFORMED)
def test_reader_rejects_malformed_files(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        st.loads(data)


def test_dtypes_without_a_safetensors_name() -> None:
    with pytest.raises(InvalidArgument, match="no dtype for complex128"):
        st.header([("z", "complex128", (1,))])
