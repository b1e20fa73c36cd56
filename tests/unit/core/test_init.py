"""The core package's face: the names adapters import from ``jaxinit_server.core`` are
the defining modules' own (the import fence itself is test_protocol_boundary.py's)."""

from __future__ import annotations

import jaxinit_server.core as core
from jaxinit_server.core import model_init, request, service, stream


def test_the_exports_are_the_modules_objects() -> None:
    assert sorted(core.__all__) == sorted(
        ["GenerateParams", "Limits", "InitModelParams", "Resolved", "ResolvedModel", "Service", "TensorStream"]
    )
    assert core.GenerateParams is request.GenerateParams and core.Limits is request.Limits
    assert core.Resolved is request.Resolved
    assert core.InitModelParams is model_init.InitModelParams and core.ResolvedModel is model_init.ResolvedModel
    assert core.Service is service.Service and core.TensorStream is stream.TensorStream
