"""Model expansion, by its old name: :mod:`jaxinit.protocol.model` under the module path
it had until 0.3 (kept for one release; import from ``jaxinit.protocol.model``)."""

from __future__ import annotations

from jaxinit.protocol.model import *  # noqa: F403  (every public name, as model.__all__ lists them)
from jaxinit.protocol.model import __all__ as __all__
