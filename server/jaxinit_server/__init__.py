"""jaxinit server: JAX initializers served bit-exact over gRPC and REST."""

from __future__ import annotations

from jaxinit.protocol import __version__  # one version for client and server

__all__ = ["__version__"]
