"""Provenance: which server, JAX and settings produced a tensor (one typed record, the
same on both sides: the server fills it, every transport carries it, the client reads it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Provenance", "version_matches"]


@dataclass(frozen=True)
class Provenance:
    """Which server, JAX and settings produced a tensor."""

    jaxinit_version: str = ""
    jax_version: str = ""
    jaxlib_version: str = ""
    backend: str = ""
    device_kind: str = ""
    key_impl: str = ""
    key_data: tuple[int, ...] = ()
    threefry_partitionable: bool = False
    enable_x64: bool = False
    canonical_request: str = ""
    request_digest: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Provenance:
        """From its JSON or protobuf form; unknown fields (a newer server's) are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["key_data"] = tuple(int(w) for w in values.get("key_data", ()))
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``key_data`` a list): what JSON and ``pb.Provenance(**...)`` take."""
        # Field by field (dataclasses.asdict deep-copies, which shows on small requests).
        out = {name: getattr(self, name) for name in _FIELDS}
        out["key_data"] = list(self.key_data)
        return out


_FIELDS = tuple(f.name for f in fields(Provenance))


def version_matches(pin: str, version: str) -> bool:
    """Whether a request pinned to JAX ``pin`` may be answered by JAX ``version``: the
    same version string, or ``pin`` a prefix of it on a dot boundary (``"0.10"`` takes
    any 0.10.x; ``"0.1"`` does not take 0.10.2).

    >>> version_matches("0.10.2", "0.10.2"), version_matches("0.10", "0.10.2")
    (True, True)
    >>> version_matches("0.1", "0.10.2"), version_matches("0.10.2", "0.10")
    (False, False)
    """
    return bool(pin) and (version == pin or version.startswith(pin + "."))
