"""The client facade: model parameters handed to torch with the same bits whether the
arrays are ml_dtypes' types or raw bits, and ranges joined into one tensor (retries and
resumption are test_resumption.py's)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol.codec import raw_bits_dtype


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_model_params_give_torch_the_same_bits_from_raw_bits_and_from_ml_dtypes(name: str) -> None:
    torch = pytest.importorskip("torch", reason="torch: the release tier's extra (make setup-release)")

    typed = np.array([1.5, -0.25, 0.0, -2.0], dtype=getattr(ml_dtypes, name))
    raw = typed.view(np.uint8).view(raw_bits_dtype(name))
    states = [jaxinit.ModelParams({"layer": {"w": array}}).to_torch() for array in (typed, raw)]
    for state in states:
        assert state["layer.w"].dtype == getattr(torch, name)
        assert state["layer.w"].float().tolist() == [1.5, -0.25, 0.0, -2.0]


def _piece(start: int, stop: int) -> jaxinit.Tensor:
    provenance = jaxinit.Provenance(canonical_request=f'{{"initializer":"normal","range":[{start},{stop}]}}')
    return jaxinit.Tensor(np.arange(start, stop, dtype=np.float32), provenance, "", start, (20,))


def test_join_places_pieces_in_any_order() -> None:
    from jaxinit._client import join
    from jaxinit._types import Request

    request = Request("normal", 0, (20,), "float32")
    joined = join(request, [_piece(12, 20), _piece(0, 5), _piece(5, 12)])
    assert joined.array.tobytes() == np.arange(20, dtype=np.float32).tobytes() and joined.offset == 0
    ranged = join(Request("normal", 0, (20,), "float32", offset=4, count=10), [_piece(4, 9), _piece(9, 14)])
    assert ranged.array.tobytes() == np.arange(4, 14, dtype=np.float32).tobytes() and ranged.offset == 4
    with pytest.raises(jaxinit.ProtocolError, match="outside"):
        join(request, [_piece(0, 20), _piece(15, 25)])


def test_join_refuses_overlapping_pieces_that_leave_a_gap() -> None:
    from jaxinit._client import join
    from jaxinit._types import Request

    with pytest.raises(jaxinit.ProtocolError):
        join(Request("normal", 0, (20,), "float32"), [_piece(0, 10), _piece(5, 15)])  # [15, 20) never came
