"""Model expansion, by its old name: :mod:`jaxinit.protocol.model` under the module path
it had until 0.3 (kept for one release; import from ``jaxinit.protocol.model``)."""

from __future__ import annotations

from jaxinit.protocol.model import (
    LAYOUTS,
    MAX_DEPTH,
    MAX_NAME_CHARS,
    MAX_PARAMS,
    MAX_PATH_COMPONENTS,
    MODES,
    MODULE_TYPES,
    Output,
    Param,
    expand,
    file_metadata,
    linen_fold_in,
    model_canonical,
    model_prng,
    nest,
    outputs,
    plan_jit,
)

__all__ = [
    "LAYOUTS",
    "MAX_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_PARAMS",
    "MAX_PATH_COMPONENTS",
    "MODES",
    "MODULE_TYPES",
    "Param",
    "Output",
    "expand",
    "file_metadata",
    "linen_fold_in",
    "model_canonical",
    "model_prng",
    "nest",
    "outputs",
    "plan_jit",
]
