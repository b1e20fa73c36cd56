"""Bearer-token authentication, one check for both transports.

Keys come from ``--api-keys`` (comma-separated; ``JAXINIT_API_KEYS``) and/or
``--api-keys-file`` (one key per line, ``#`` comments). The file is read again
when it changes, so keys rotate without a restart: add the new key, move the
clients over, remove the old one. Only SHA-256 digests of the keys are kept, and
tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from jaxinit.protocol.errors import InvalidArgument, Unauthenticated

__all__ = [
    "OPEN_GRPC_PREFIXES",
    "OPEN_HTTP_PATHS",
    "KeyRing",
    "bearer",
    "caller",
    "grpc_authorization",
    "http_authorization",
    "http_caller",
    "one_authorization",
]

# Health stays open: orchestrators probe without credentials.
OPEN_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
OPEN_GRPC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
_RELOAD_EVERY = 1.0  # seconds between looks at the key file


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def one_authorization(values: Iterable[str]) -> str | None:
    """The one ``Authorization`` value of a call, None without one; InvalidArgument for two or
    more. Auth and the per-caller identity both read it here, so they can never disagree
    (auth once read the last of two headers, the caller identity the first: a caller with a
    valid key sent junk first and got a fresh share per call)."""
    given = list(values)
    if len(given) > 1:
        raise InvalidArgument(
            f"send one Authorization header (gRPC: one authorization metadata entry), got {len(given)}"
        )
    return given[0] if given else None


def http_authorization(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """:func:`one_authorization` of an ASGI scope's raw headers (names are lower case there)."""
    return one_authorization(value.decode("latin-1") for name, value in headers if name == b"authorization")


def grpc_authorization(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """:func:`one_authorization` of a gRPC call's invocation metadata (keys are lower case)."""
    values = (value for name, value in metadata or () if name == "authorization")
    return one_authorization(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in values)


def caller(keyring: KeyRing | None, authorization: str | None, connection: str) -> str:
    """Whom admission charges a call to: its API key when auth is on (the token was checked
    before the call got here; named by a digest prefix, never the key), else its connection
    (``host:port`` of the peer; for gRPC one channel, which multiplexes many calls)."""
    if keyring is not None and keyring.enabled and (token := bearer(authorization)):
        return "API key sha256:" + _digest(token).hex()[:12]
    return "connection " + connection


def http_caller(request: Any) -> str:
    """:func:`caller` of a Starlette request (the app's ``state.keyring``: the keys, if any)."""
    client = request.client
    connection = f"{client.host}:{client.port}" if client is not None else "unknown"
    keyring = getattr(request.app.state, "keyring", None)
    if keyring is None or not keyring.enabled:
        return caller(None, None, connection)
    return caller(keyring, http_authorization(request.scope.get("headers") or ()), connection)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The accepted keys. ``enabled`` is False when none are configured (no auth)."""

    def __init__(self, keys: Iterable[str] = (), path: str | None = None) -> None:
        self._static = {_digest(k) for k in keys if k}
        self._path = path
        self._from_file: set[bytes] = set()
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if path is not None:
            self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self._path is not None

    def check(self, token: str | None) -> None:
        """Raises Unauthenticated unless ``token`` is one of the keys (or auth is off)."""
        if not self.enabled:
            return
        self._reload()
        if token:
            given = _digest(token)
            # Every key compared, in constant time: no early exit tells which matched.
            if sum(hmac.compare_digest(given, k) for k in self._static | self._from_file):
                return
        raise Unauthenticated("missing or invalid bearer token")

    def _reload(self, force: bool = False) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < _RELOAD_EVERY:
            return
        with self._lock:
            self._checked = now
            try:
                info = os.stat(self._path)
                stamp = (info.st_mtime, info.st_size)
                if stamp == self._stamp and not force:
                    return
                with open(self._path, encoding="utf-8") as file:
                    lines = [line.split("#", 1)[0].strip() for line in file]
            except OSError:
                if force:
                    raise
                return  # keep the last good keys while the file is being replaced
            self._from_file = {_digest(line) for line in lines if line}
            self._stamp = stamp
