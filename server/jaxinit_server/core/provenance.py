"""Provenance: which JAX, backend and settings produced a tensor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jaxlib.version as jaxlib_version

import jaxinit_server
from jaxinit.protocol.provenance import Provenance
from jaxinit_server.core.request import PrngDefaults, Resolved

__all__ = ["ServerIdentity", "server_identity", "served_versions"]


@dataclass(frozen=True)
class ServerIdentity:
    """What every response of this process shares."""

    jaxinit_version: str
    jax_version: str
    jaxlib_version: str
    backend: str
    device_kind: str
    defaults: PrngDefaults

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["defaults"]
        return out

    def provenance(self, resolved: Resolved, key_data: tuple[int, ...]) -> Provenance:
        """The provenance of ``resolved``'s bytes, made here with ``key_data``."""
        return Provenance(
            **self.as_dict(),
            key_impl=resolved.key.impl if resolved.key else "",
            key_data=tuple(key_data),
            threefry_partitionable=resolved.threefry_partitionable,
            enable_x64=resolved.enable_x64,
            canonical_request=resolved.canonical,
            request_digest=resolved.digest,
        )

    @property
    def fingerprint(self) -> str:
        """Everything besides the request that the bytes can depend on."""
        return f"{self.jax_version}/{self.jaxlib_version}/{self.backend}/{self.device_kind}"


def server_identity() -> ServerIdentity:
    """Read the installed JAX's versions, default backend and default PRNG settings."""
    device = jax.devices()[0]
    backend = jax.default_backend()
    return ServerIdentity(
        jaxinit_version=jaxinit_server.__version__,
        jax_version=jax.__version__,
        jaxlib_version=jaxlib_version.__version__,
        backend=backend,
        device_kind=device.device_kind,
        defaults=PrngDefaults(
            threefry_partitionable=bool(jax.config.jax_threefry_partitionable),  # type: ignore[attr-defined]
            enable_x64=bool(jax.config.jax_enable_x64),  # type: ignore[attr-defined]
            jax_version=jax.__version__,
            backend=backend,
        ),
    )


def served_versions(described: Mapping[str, Any]) -> dict[str, Any]:
    """What this server serves (``GET /v1/versions``, gRPC ListVersions), from
    :meth:`Service.describe`: one entry, its own default. A pooled deployment answers
    with one entry per pool (docs/deployment.md)."""
    server = described["server"]
    entry = {
        name: server[name]
        for name in (
            "jax_version",
            "jaxlib_version",
            "backend",
            "device_kind",
            "jaxinit_version",
            "threefry_partitionable",
            "enable_x64",
        )
    }
    entry.update(key_impls=described["key_impls"], dtypes=described["dtypes"], default=True)
    return {"versions": [entry]}
