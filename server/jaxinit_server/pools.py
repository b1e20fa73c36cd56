"""What a deployment serves (``GET /v1/versions``, gRPC ``ListVersions``): this server's own
entry, and each other pool's entries as that pool reports them.

A deployment runs one pool of servers per JAX version behind one balancer
(docs/deployment.md). Each server is told the pools (``--pools VERSION=URL,...``, the same
list for every server of the deployment; the entry of its own version is itself) and which
one takes unpinned requests (``--default-pool VERSION``). A pool is asked
``GET URL/v1/versions?scope=server`` (only that server: pools never ask each other back),
with its version in ``x-jaxinit-jax-version``, so ``URL`` may be the pool's own address or
the balancer's. Answers are kept for a few seconds (callers at once share one ask); a pool
that does not answer, or answers as another version, is listed as
``{"jax_version": V, "reachable": false, "default": ...}`` rather than failing the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.provenance import version_matches
from jaxinit.protocol.wire import JAX_VERSION_HEADER
from jaxinit_server.core.provenance import served_versions

__all__ = ["SCOPES", "Deployment", "Pool", "parse_pools"]

log = logging.getLogger("jaxinit_server.pools")

# "deployment" (the default; gRPC: ""): every pool's entries; "server": this server's only.
SCOPES = ("deployment", "server")


@dataclass(frozen=True)
class Pool:
    """One pool of a deployment: its JAX version and an HTTP URL that reaches it."""

    version: str
    url: str


def parse_pools(text: str | None) -> tuple[Pool, ...]:
    """``"0.8.3=http://pool-a:8000,0.4.38=http://lb:8000"`` as pools, in order.

    >>> parse_pools("0.8.3=http://a:8000, 0.4.38=http://lb:8000/")
    (Pool(version='0.8.3', url='http://a:8000'), Pool(version='0.4.38', url='http://lb:8000'))

    Raises:
        ValueError: an item is not ``VERSION=http(s)://...``, or a version is named twice.
    """
    pools: list[Pool] = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        version, sep, url = (part.strip() for part in item.partition("="))
        if not sep or not version or not url.startswith(("http://", "https://")):
            raise ValueError(f"--pools: {item.strip()!r} is not VERSION=URL (e.g. 0.8.3=http://jaxinit-jax-0-8-3:8000)")
        if any(p.version == version for p in pools):
            raise ValueError(f"--pools names JAX {version} twice")
        pools.append(Pool(version, url.rstrip("/")))
    return tuple(pools)


class Deployment:
    """The list of JAX versions this server answers with: itself alone (no pools), or the
    deployment's, one entry per pool in ``pools``' order (its own where its version is
    listed, else first).

    Args:
        jax_version: this server's JAX version.
        pools: the deployment's pools; the one of this server's version is this server.
        default_pool: the version of the pool that takes unpinned requests (matched as
            pins are: exactly or as a prefix on a dot boundary). None: this server's pool.
        timeout: seconds a pool has to answer.
        ttl: seconds a pool's answer (or its silence) is kept.
        token: a bearer token for pools that need one (this deployment's API key).
        mounts: httpx transports by URL prefix (tests: an in-process pool).
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        jax_version: str,
        pools: Sequence[Pool] = (),
        *,
        default_pool: str | None = None,
        timeout: float = 2.0,
        ttl: float = 5.0,
        token: str | None = None,
        mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jax_version = jax_version
        self.pools = tuple(pools)
        # The pools this server asks: all but its own (which it answers for itself).
        self.others = tuple(p for p in pools if not version_matches(p.version, jax_version))
        if default_pool is not None and not any(
            version_matches(default_pool, v) for v in (jax_version, *(p.version for p in self.others))
        ):
            raise ValueError(
                f"--default-pool {default_pool} is neither this server's JAX ({jax_version}) nor one of "
                f"--pools ({_versions(self.others)})"
            )
        self.default_pool = default_pool
        self._timeout, self._ttl, self._clock = timeout, ttl, clock
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._mounts = dict(mounts or {})
        self._kept: dict[Pool, tuple[float, list[dict[str, Any]]]] = {}
        # An ask in flight, which concurrent callers share (one request per pool at a time).
        self._asking: dict[Pool, asyncio.Task[list[dict[str, Any]]]] = {}

    def own(self, described: Mapping[str, Any]) -> dict[str, Any]:
        """This server's entry, from :meth:`Service.describe`."""
        (entry,) = served_versions(described)["versions"]
        default = self.default_pool is None or version_matches(self.default_pool, entry["jax_version"])
        return {**entry, "default": default, "reachable": True}

    async def versions(self, described: Mapping[str, Any], scope: str = "deployment") -> dict[str, Any]:
        """``{"versions": [...]}`` for ``scope`` (``""`` is ``"deployment"``).

        Raises:
            InvalidArgument: an unknown scope.
        """
        scope = scope or "deployment"
        if scope not in SCOPES:
            raise InvalidArgument(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        own = self.own(described)
        if scope == "server" or not self.others:
            return {"versions": [own]}
        answers = await asyncio.gather(*(self._entries(p) for p in self.others))
        asked = dict(zip(self.others, answers, strict=True))
        # In the pools' order, this server where its own pool is listed (else first).
        listed = [] if len(self.others) < len(self.pools) else [own]
        for pool in self.pools:
            if pool in asked:
                listed += asked[pool]
            elif own not in listed:
                listed.append(own)
        return {"versions": listed}

    async def _entries(self, pool: Pool) -> list[dict[str, Any]]:
        now = self._clock()
        kept = self._kept.get(pool)
        if kept is not None and kept[0] > now:
            return kept[1]
        task = self._asking.get(pool)
        if task is None:
            task = self._asking[pool] = asyncio.ensure_future(self._ask(pool))
            task.add_done_callback(lambda _: self._asking.pop(pool, None))
        # Shielded: a caller that goes away does not cancel the others' answer.
        return await asyncio.shield(task)

    async def _ask(self, pool: Pool) -> list[dict[str, Any]]:
        """``pool``'s own entries, its default as this deployment says; one unreachable
        entry when it does not answer with entries of its version."""
        default = self.default_pool is not None and version_matches(self.default_pool, pool.version)
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout, mounts=self._mounts, trust_env=False, headers=self._headers
            ) as http:
                response = await http.get(
                    f"{pool.url}/v1/versions",
                    params={"scope": "server"},
                    headers={JAX_VERSION_HEADER: pool.version},
                )
            response.raise_for_status()
            entries = response.json()["versions"]
            if not entries or not all(version_matches(pool.version, e["jax_version"]) for e in entries):
                found = sorted({str(e.get("jax_version")) for e in entries})
                raise ValueError(f"it answered as JAX {', '.join(found) or 'nothing'}")
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            why = str(exc) or type(exc).__name__
            log.warning("pool JAX %s at %s is listed as unreachable: %s", pool.version, pool.url, why)
            listed = [{"jax_version": pool.version, "reachable": False, "default": default}]
        else:
            listed = [{**entry, "default": default, "reachable": True} for entry in entries]
        self._kept[pool] = (self._clock() + self._ttl, listed)
        return listed


def _versions(pools: Sequence[Pool]) -> str:
    return ", ".join(p.version for p in pools) or "none given"
