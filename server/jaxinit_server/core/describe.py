"""The server as plain data: what it serves (the registry, dtypes, key implementations and
its identity) and its state (readiness with its pools, caches and caps, as /readyz shows)."""

from __future__ import annotations

from typing import Any, Protocol

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit.protocol.keys import KEY_IMPLS
from jaxinit_server.core import _jax_compat, chunked
from jaxinit_server.core.admission import Admission
from jaxinit_server.core.production import Production
from jaxinit_server.core.provenance import ServerIdentity
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.results import Results
from jaxinit_server.core.stream import StallWatch
from jaxinit_server.core.whole import WholePool


class Host(Protocol):
    """What :func:`state` reads of its :class:`~service.Service`."""

    ready: bool
    whole: WholePool
    stalls: StallWatch | None
    results: Results
    regions: Regions | None
    admission: Admission
    production: Production


__all__ = ["Host", "describe", "state"]


def describe(identity: ServerIdentity, regions: Regions | None) -> dict[str, Any]:
    """The registry, dtypes, key implementations and server identity, as plain data."""
    return {
        "initializers": [
            {
                "name": spec.name,
                "kind": spec.kind,
                "source": spec.source,
                "summary": spec.summary,
                "uses_key": spec.uses_key,
                "arguments": [
                    {
                        "name": a.name,
                        "type": a.type,
                        "required": a.required,
                        "default_json": a.default_json,
                        "choices": list(a.choices),
                        "doc": a.doc,
                    }
                    for a in spec.arguments
                ],
            }
            for spec in CATALOG.values()
        ],
        # what this JAX has of what the protocol names (an older JAX lacks some)
        "dtypes": [name for name in DTYPE_NAMES if _jax_compat.unsupported(dtype=name) is None],
        "key_impls": [impl for impl in KEY_IMPLS if impl in _jax_compat.KEY_IMPLS],
        "server": {
            **identity.as_dict(),
            "threefry_partitionable": identity.defaults.threefry_partitionable,
            "enable_x64": identity.defaults.enable_x64,
        },
        "shared_memory": {"directory": str(regions.directory)} if regions else None,
    }


def state(service: Host) -> dict[str, Any]:
    """Readiness with the pools' state, as /readyz shows it."""
    admission = service.admission
    return {
        "ready": service.ready,
        "whole_tensor_workers": service.whole.state(),
        # Families the warm-up self-check found to differ from this JAX: they run whole.
        "chunking": {"disabled": chunked.disabled(), "disabled_count": len(chunked.disabled())},
        "stalled_readers_disconnected": service.stalls.disconnected if service.stalls else 0,
        "results": service.results.state(),
        "shared_memory": service.regions.state() if service.regions else None,
        "admission": {
            "streams": admission.streams,
            "max_streams": admission.max_streams,
            "bytes": admission.bytes,
            "max_bytes": admission.max_bytes,
            "callers": len(admission.callers),
            "max_caller_streams": admission.max_caller_streams,
            "max_caller_bytes": admission.max_caller_bytes,
            "heavy": admission.heavy,
            "max_heavy": admission.max_heavy,
            "heavy_waiting": service.production.heavy_waiting,
            "heavy_slots": service.production.heavy_slots,
        },
    }
