"""jaxinit server: JAX initializers served bit-exact over gRPC and REST."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
