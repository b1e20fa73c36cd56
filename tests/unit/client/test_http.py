"""The HTTP transport's plan check: a model tensor is taken only when it is the request
the server's plan named."""

from __future__ import annotations

import numpy as np
import pytest

from jaxinit import InvalidArgument, ProtocolError
from jaxinit import models as m
from jaxinit.protocol.expansion import expand, outputs


def test_the_http_client_refuses_an_answer_its_plan_did_not_name() -> None:
    from jaxinit._http import finish_planned
    from jaxinit._types import Tensor
    from jaxinit.protocol import Provenance

    out = outputs(expand(m.Dense(2, 3)), "torch")[0]
    tensor = Tensor(np.zeros((2, 3), np.float32), Provenance(request_digest="a" * 64), out.name)
    with pytest.raises(ProtocolError, match="plan named"):
        finish_planned(out, "b" * 64, tensor)
    laid_out = finish_planned(out, "a" * 64, tensor)
    assert isinstance(laid_out, Tensor) and laid_out.array.shape == (3, 2)
    failed = finish_planned(out, "a" * 64, InvalidArgument("bad"))
    assert isinstance(failed, InvalidArgument) and failed.message == f"{out.name}: bad"
