"""The client facade's model parameters: handed to torch with the same bits whether the
arrays are ml_dtypes' types or raw bits."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol.codec import raw_bits_dtype


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_model_params_give_torch_the_same_bits_from_raw_bits_and_from_ml_dtypes(name: str) -> None:
    import torch

    typed = np.array([1.5, -0.25, 0.0, -2.0], dtype=getattr(ml_dtypes, name))
    raw = typed.view(np.uint8).view(raw_bits_dtype(name))
    states = [jaxinit.ModelParams({"layer": {"w": array}}).to_torch() for array in (typed, raw)]
    for state in states:
        assert state["layer.w"].dtype == getattr(torch, name)
        assert state["layer.w"].float().tolist() == [1.5, -0.25, 0.0, -2.0]
