"""The transport-free core: registry, keys, request resolution, engine, provenance.

Nothing under this package imports grpc, fastapi, starlette, uvicorn, httpx or
settings code; a test holds it to that.
"""

from __future__ import annotations

from jaxinit_server.core.models import ModelParams, ResolvedModel
from jaxinit_server.core.request import GenerateParams, Limits, Resolved
from jaxinit_server.core.service import Service
from jaxinit_server.core.stream import TensorStream

__all__ = ["GenerateParams", "Limits", "ModelParams", "Resolved", "ResolvedModel", "Service", "TensorStream"]
