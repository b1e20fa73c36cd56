"""The transport-free core: registry, keys, request resolution, engine, provenance.

Nothing under this package imports grpc, fastapi, starlette, uvicorn, httpx or
settings code; a test holds it to that.
"""

from __future__ import annotations

from jaxinit_server.core.model_init import InitModelParams, ResolvedModel
from jaxinit_server.core.request import GenerateParams, Limits, Resolved
from jaxinit_server.core.service import Service
from jaxinit_server.core.stream import TensorStream

__all__ = ["GenerateParams", "Limits", "InitModelParams", "Resolved", "ResolvedModel", "Service", "TensorStream"]
