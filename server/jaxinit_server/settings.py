"""Server settings: from JAXINIT_* environment variables, overridden by command-line flags.

Built once, in ``main()``, and passed into the factories; nothing reads them at import.
"""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jaxinit_server.core.request import Limits
from jaxinit_server.logs import LogFormat
from jaxinit_server.pools import Deployment, Pool, parse_pools

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of the server. Env: ``JAXINIT_<NAME>`` (e.g. ``JAXINIT_GRPC_PORT``)."""

    model_config = SettingsConfigDict(env_prefix="JAXINIT_", extra="forbid")

    host: str = Field("127.0.0.1", description="address both servers bind; 0.0.0.0 for all")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    workers: int = Field(4, ge=1, description="the one pool of threads every JAX call runs on")
    whole_workers: int = Field(
        2, ge=1, description="worker processes for whole-tensor requests (orthogonal, complex, rbg keys, ...)"
    )
    worker_rss_bytes: int = Field(
        2**30, ge=2**27, description="a whole-tensor worker larger than this after a request is replaced"
    )
    max_tensor_bytes: int = Field(4 * 2**30, ge=0, description="largest tensor served, in bytes")
    max_json_elements: int = Field(2**20, ge=0, description="largest tensor served as JSON")
    max_model_bytes: int = Field(16 * 2**30, ge=0, description="all tensors of one model request, in bytes")
    max_streams: int = Field(64, ge=1, description="tensors made or sent at once; more: 429 / RESOURCE_EXHAUSTED")
    max_inflight_bytes: int = Field(
        Limits.max_inflight_bytes,
        ge=0,
        description="the admission budget: memory the requests in flight hold together, as priced (a chunked "
        "stream: a few chunks; a whole tensor: its working set); more: 429; one request over it: 413",
    )
    max_whole_flops: int = Field(
        Limits.max_whole_flops,
        ge=0,
        description="compute one request may take on a JAX thread or whole-tensor worker, in FLOP or their "
        "equivalent (a QR of n x n: ~4n^3; key derivation, eager calls of a stack, a jit compile); more: 413",
    )
    heavy_flops: int = Field(
        Limits.heavy_flops,
        ge=0,
        description="compute from which a request is heavy (see --max-heavy-requests)",
    )
    max_heavy_requests: int | None = Field(
        None,
        ge=1,
        description="heavy requests admitted at once, running or waiting (default: four per running slot; "
        "heavy ones run one fewer at a time than --whole-workers, at least 1, so cheaper ones always find a "
        "worker); more: 429",
    )
    max_caller_streams: int = Field(
        Limits.max_caller_streams,
        ge=1,
        description="requests one caller (a connection; with --api-keys, a key) has in flight at once; more: 429",
    )
    max_caller_bytes: int | None = Field(
        None,
        ge=0,
        description="one caller's share of the admission budget: priced memory it holds at once (default: a quarter of "
        "--max-inflight-bytes); more: 429, unless it holds nothing else",
    )
    max_body_bytes: int = Field(
        16 * 2**20, ge=1024, description="largest request body (REST) or message (gRPC); more: 413 / RESOURCE_EXHAUSTED"
    )
    chunk_bytes: int = Field(2**20, ge=1024, le=3 * 2**20, description="bytes per streamed chunk")
    grace_seconds: float = Field(10.0, ge=0, description="drain time for in-flight calls on stop")
    stall_seconds: float = Field(
        60.0, ge=0, description="a reader that takes no bytes for this long is disconnected; 0: never"
    )
    cache_bytes: int = Field(
        256 * 2**20,
        ge=0,
        description="the result cache's budget: memory for whole tensors made once and shared: identical requests "
        "in flight share one generation, repeats are served from it (LRU by bytes; every stored byte counts, those "
        "still read after eviction too); 0: off",
    )
    cache_dir: str | None = Field(
        None,
        description="the disk result cache: also keep made tensors in this directory (checked by digest when read; "
        "survives restarts)",
    )
    cache_dir_bytes: int = Field(
        8 * 2**30,
        ge=0,
        description="the disk result cache's budget: most bytes --cache-dir holds (oldest used go first)",
    )
    shared_memory: bool = Field(
        False,
        description="offer same-host callers their tensors in shared memory (Linux: a sealed memory file handed "
        "over a Unix socket, no socket copy): only callers that can read the server's token file (its user, on its "
        "host) are served so",
    )
    shared_memory_dir: str = Field("/dev/shm", description="where --shared-memory makes its directory (memory-backed)")
    shared_memory_lease: float = Field(
        60.0, gt=0, description="seconds a region waits for its caller to claim it before it is closed"
    )
    shared_memory_bytes: int = Field(
        2**32,
        ge=0,
        description="the shared-memory budget: most bytes of regions offered and not yet claimed; past that, "
        "the stream",
    )
    warm_up: bool = Field(
        True,
        description="before reporting ready, compile the common chunk programs (unless the compilation cache "
        "holds them) and start the whole-tensor workers (the self-check that proves chunking exact runs either way)",
    )
    compilation_cache: bool = Field(
        True,
        description="keep compiled programs and the self-check's verdict in --compilation-cache-dir, so a "
        "restart is ready in seconds",
    )
    compilation_cache_dir: str | None = Field(
        None,
        description="the compilation cache, JAX's persistent one (default: $XDG_CACHE_HOME/jaxinit/jax, else "
        "~/.cache/jaxinit/jax)",
    )
    log_level: str = Field("info", description="uvicorn and server log level")
    log_format: LogFormat = Field(
        "text",
        description="text: lines for a terminal; json: one JSON object per line from every logger (uvicorn, "
        "grpc, jaxinit), for a log shipper (the container image's default)",
    )
    api_keys: str | None = Field(None, description="comma-separated bearer tokens (prefer the env var)")
    api_keys_file: str | None = Field(None, description="bearer tokens, one per line; re-read on change")
    request_log: bool = Field(
        True, description="one log line per request, with its fields in JSON (logger jaxinit_server.requests)"
    )
    tls_cert_file: str | None = Field(None, description="PEM certificate chain: both servers speak TLS only")
    tls_key_file: str | None = Field(None, description="PEM private key of --tls-cert-file")
    pools: str | None = Field(
        None,
        description="the deployment's JAX version pools, VERSION=URL,... (URL: HTTP, the pool's own address or the "
        "balancer's); GET /v1/versions and ListVersions list each pool's entries, as it reports them, beside this "
        "server's. Give every server the same list: the pool of its own version is itself",
    )
    default_pool: str | None = Field(
        None,
        description="the JAX version of the pool that takes unpinned requests (the balancer's default), marked "
        '"default" in /v1/versions (default: this server\'s own pool)',
    )
    replica: str = Field(
        default_factory=socket.gethostname,
        description="this replica's name, sent as x-jaxinit-replica on every response (default: the host name)",
    )

    @field_validator("pools")
    @classmethod
    def _pools_parse(cls, value: str | None) -> str | None:
        parse_pools(value)
        return value

    @model_validator(mode="after")
    def _default_pool_known(self) -> Settings:
        if self.default_pool is not None:
            import jax  # (loaded already: the core's request module uses it)

            Deployment(jax.__version__, self.pool_list(), default_pool=self.default_pool)
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
        return self

    def tls(self) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) as PEM bytes, or None without TLS."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        with open(self.tls_cert_file, "rb") as chain, open(self.tls_key_file, "rb") as key:
            return chain.read(), key.read()

    def compilation_cache_path(self) -> str | None:
        """Where compiled programs are kept: --compilation-cache-dir, else a per-user cache
        directory; None with --no-compilation-cache."""
        if not self.compilation_cache:
            return None
        if self.compilation_cache_dir:
            return self.compilation_cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "jaxinit", "jax")

    def pool_list(self) -> tuple[Pool, ...]:
        """--pools, parsed."""
        return parse_pools(self.pools)

    def api_token(self) -> str | None:
        """A key this server accepts (the first of --api-keys, else of --api-keys-file), sent
        to the deployment's other pools, which share its keys; None without auth."""
        keys = [k.strip() for k in (self.api_keys or "").split(",") if k.strip()]
        if not keys and self.api_keys_file:
            with open(self.api_keys_file, encoding="utf-8") as file:
                keys = [k for k in (line.split("#", 1)[0].strip() for line in file) if k]
        return keys[0] if keys else None

    def limits(self) -> Limits:
        return Limits(
            max_tensor_bytes=self.max_tensor_bytes,
            max_json_elements=self.max_json_elements,
            max_model_bytes=self.max_model_bytes,
            chunk_bytes=self.chunk_bytes,
            max_streams=self.max_streams,
            max_inflight_bytes=self.max_inflight_bytes,
            max_whole_flops=self.max_whole_flops,
            heavy_flops=self.heavy_flops,
            max_heavy_requests=self.max_heavy_requests,
            max_caller_streams=self.max_caller_streams,
            max_caller_bytes=self.max_caller_bytes,
        )
