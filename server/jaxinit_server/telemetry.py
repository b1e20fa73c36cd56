"""Metrics (Prometheus) and one structured log line per request, for both transports.

The adapters open a :class:`Call` per request (a ``GenerateMany`` item is one), note what
the caller asked for, fill in what the request turned out to be, and close it with its
status; this module turns that into counters, histograms and a log record whose fields
(``extra``) are the JSON object of ``--log-format json``. XLA compiles and JAX's
persistent compilation cache are counted from ``jax.monitoring`` events.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax.monitoring
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import JaxinitError, mapping_for
from jaxinit.protocol.wire import REPLICA_HEADER, REQUEST_ID_HEADER
from jaxinit_server.core import _jax_compat

__all__ = ["CONTENT_TYPE", "REPLICA_HEADER", "REQUEST_ID_HEADER", "Call", "Telemetry", "request_id_from"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("jaxinit_server.requests")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def request_id_from(value: str | None) -> str:
    """The caller's request id when it gave a usable one, else a new one."""
    if value and len(value) <= 128 and value.isprintable():
        return value
    return uuid.uuid4().hex


@dataclass
class Call:
    """One request as telemetry sees it; the adapter fills it in as it learns more."""

    telemetry: Telemetry
    transport: str
    method: str
    request_id: str
    initializer: str = ""
    shape: tuple[int, ...] | None = None
    dtype: str = ""
    # What the caller asked for, as it asked (the log's fields until the request resolves).
    requested: dict[str, Any] = field(default_factory=dict)
    bytes_sent: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _closed: bool = False

    def describe(self, initializer: str, shape: tuple[int, ...], dtype: str) -> None:
        """What the request resolved to (the metrics' labels and the log's fields)."""
        self.initializer, self.shape, self.dtype = initializer, tuple(shape), dtype

    def asked(self, initializer: Any, shape: Any, dtype: Any = None) -> None:
        """What the caller asked for, before any validation: logged when it is refused (an
        operator sees the ``lecun_normall`` a caller sent), never a metrics label."""
        self.requested = {"initializer": _loggable(initializer), "shape": _loggable(shape), "dtype": _loggable(dtype)}

    def sent(self, nbytes: int) -> None:
        self.bytes_sent += nbytes

    def close(self, error: BaseException | None = None) -> None:
        """Record the outcome: ``error`` None for success (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.telemetry._record(self, error)


class Telemetry:
    """The server's metrics registry and request log."""

    def __init__(self, *, log_requests: bool = True, replica: str = "") -> None:
        self.log_requests = log_requests
        self.replica = replica
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "jaxinit_requests",
            "Requests answered, by transport, method, initializer and status code",
            ["transport", "method", "initializer", "code"],
            registry=r,
        )
        self.errors = Counter(
            "jaxinit_errors", "Requests that failed, by transport and status code", ["transport", "code"], registry=r
        )
        self.bytes_sent = Counter("jaxinit_bytes_sent", "Tensor bytes sent", ["transport", "initializer"], registry=r)
        self.in_flight = Gauge("jaxinit_streams_in_flight", "Requests being answered", ["transport"], registry=r)
        self.phase = Histogram(
            "jaxinit_request_phase_seconds",
            "Time per request phase: queue (waiting for a JAX worker), generate (JAX), send (the rest)",
            ["transport", "initializer", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "jaxinit_request_seconds",
            "Request duration, end to end",
            ["transport", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compiles = Counter("jaxinit_xla_compiles", "XLA programs compiled (in-memory cache misses)", registry=r)
        self.compile_seconds = Histogram(
            "jaxinit_xla_compile_seconds", "Time per XLA compile", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cache = Counter(
            "jaxinit_compilation_cache", "JAX's persistent compilation cache, by result", ["result"], registry=r
        )
        for result in ("hit", "miss"):
            self.cache.labels(result)
        self.calls_in_flight = 0  # requests being answered, every transport
        # Per initializer, every transport: counts and nanoseconds of successes, failures and
        # their phases, and the last success (ms since the epoch): KServe's model statistics.
        self.model_counters: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.loop_lag = Histogram(
            "jaxinit_event_loop_lag_seconds",
            "How late the event loop ran a 20 ms timer: time it was busy with one piece of work",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self._gauges = {
            name: Gauge(name, doc, registry=r)
            for name, doc in (
                ("jaxinit_whole_workers_busy", "Whole-tensor worker processes computing or sending"),
                ("jaxinit_whole_workers_waiting", "Whole-tensor requests waiting for a worker"),
                ("jaxinit_whole_workers_killed", "Whole-tensor workers killed (caller gone, shutdown)"),
                ("jaxinit_whole_workers_replaced", "Whole-tensor workers replaced for their size"),
                ("jaxinit_admitted_bytes", "Memory held by admitted requests, as priced"),
                (
                    "jaxinit_chunking_disabled_families",
                    "Chunked families the warm-up self-check found to differ from this JAX (they run whole)",
                ),
            )
        }
        jax.monitoring.register_event_listener(self._jax_event)
        jax.monitoring.register_event_duration_secs_listener(self._jax_duration)

    def call(self, transport: str, method: str, request_id: str | None = None) -> Call:
        self.in_flight.labels(transport).inc()
        self.calls_in_flight += 1
        return Call(self, transport, method, request_id_from(request_id))

    def watch(self, state: Callable[[], dict[str, Any]]) -> None:
        """Export the service's pool and admission state (``Service.state``) as gauges."""
        pool = ("whole_tensor_workers",)
        for name, path in (
            ("jaxinit_whole_workers_busy", (*pool, "busy")),
            ("jaxinit_whole_workers_waiting", (*pool, "waiting")),
            ("jaxinit_whole_workers_killed", (*pool, "killed")),
            ("jaxinit_whole_workers_replaced", (*pool, "replaced")),
            ("jaxinit_admitted_bytes", ("admission", "bytes")),
            ("jaxinit_chunking_disabled_families", ("chunking", "disabled_count")),
        ):

            def read(path: tuple[str, ...] = path) -> float:
                value: Any = state()
                for part in path:
                    value = value[part]
                return float(value)

            self._gauges[name].set_function(read)
        self.registry.register(_ResultsCollector(lambda: state()["results"]))

    async def watch_loop(self, period: float = 0.02) -> None:
        """Measure the event loop's lag forever (a task): how late a short sleep wakes up."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(period)
            self.loop_lag.observe(max(0.0, loop.time() - start - period))

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def close(self) -> None:
        _jax_compat.unregister_event_listener(self._jax_event)
        _jax_compat.unregister_event_duration_listener(self._jax_duration)

    def _jax_event(self, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache.labels("hit").inc()
        elif event == "/jax/compilation_cache/cache_misses":
            self.cache.labels("miss").inc()

    def _jax_duration(self, event: str, duration_secs: float, **_: str | int) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.compiles.inc()
            self.compile_seconds.observe(duration_secs)

    def _record(self, call: Call, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - call.started
        if error is None:
            code = "OK"
        elif isinstance(error, JaxinitError):
            code = mapping_for(error).grpc_code
        elif isinstance(error, Exception):
            code = "INTERNAL"
        else:  # CancelledError, GeneratorExit: the caller went away
            code = "CANCELLED"
        initializer = call.initializer or "-"
        self.in_flight.labels(call.transport).dec()
        self.calls_in_flight -= 1
        self.requests.labels(call.transport, call.method, initializer, code).inc()
        if error is not None:
            self.errors.labels(call.transport, code).inc()
        if call.bytes_sent:
            self.bytes_sent.labels(call.transport, initializer).inc(call.bytes_sent)
        self.duration.labels(call.transport, call.method).observe(elapsed)
        if error is None and call.timings:
            queue, generate = call.timings.get("queue", 0.0), call.timings.get("generate", 0.0)
            self.phase.labels(call.transport, initializer, "queue").observe(queue)
            self.phase.labels(call.transport, initializer, "generate").observe(generate)
            self.phase.labels(call.transport, initializer, "send").observe(max(0.0, elapsed - queue - generate))
        model = call.initializer or call.requested.get("initializer")  # a bad argument fails a known one
        if isinstance(model, str) and model in CATALOG:
            counters = self.model_counters[model]
            nanoseconds = int(elapsed * 1e9)
            if error is None:
                counters.update(success_count=1, success_ns=nanoseconds)
                counters["last_inference"] = int(time.time() * 1000)
                if call.timings:
                    queue, generate = call.timings.get("queue", 0.0), call.timings.get("generate", 0.0)
                    counters.update(
                        queue_count=1,
                        queue_ns=int(queue * 1e9),
                        compute_infer_count=1,
                        compute_infer_ns=int(generate * 1e9),
                        compute_output_count=1,
                        compute_output_ns=max(0, int((elapsed - queue - generate) * 1e9)),
                    )
            else:
                counters.update(fail_count=1, fail_ns=nanoseconds)
        if not (self.log_requests and log.isEnabledFor(logging.INFO)):
            return
        asked = call.requested
        fields: dict[str, Any] = {
            "request_id": call.request_id,
            "transport": call.transport,
            "method": call.method,
            "initializer": call.initializer or asked.get("initializer"),
            "shape": list(call.shape) if call.shape is not None else asked.get("shape"),
            "dtype": call.dtype or asked.get("dtype"),
            "bytes": call.bytes_sent,
            "duration_ms": round(elapsed * 1000, 3),
            "status": code,
        }
        if error is not None:
            fields["error"] = type(error).__name__
            if isinstance(error, JaxinitError):
                fields["error_message"] = error.message[:_LOGGED_CHARS]
        # The fields ride on the record (--log-format json: top-level keys); the message is the
        # same line for a terminal.
        log.info(
            "%s %s %s %s %s %s %.1f ms %d bytes id=%s",
            call.transport,
            call.method,
            code,
            fields["initializer"] or "-",
            fields["shape"],
            fields["dtype"] or "-",
            fields["duration_ms"],
            call.bytes_sent,
            call.request_id,
            extra=fields,
        )


_LOGGED_CHARS = 200  # of a caller's text in a log line (a name, a message)
_LOGGED_DIMS = 32


def _loggable(value: Any) -> Any:
    """A caller's value as a log field: short strings, ints and short lists of ints as they
    are; anything else as a bounded repr (a 1 MB name or 100,000 dims stay short)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value[:_LOGGED_CHARS]
    if isinstance(value, (list, tuple)) and len(value) <= _LOGGED_DIMS and all(type(v) is int for v in value):
        return list(value)
    return repr(value)[:_LOGGED_CHARS]


class _ResultsCollector(Collector):
    """The shared answers (core/results.py): how each answer was made, as counters, and
    what the cache holds, as gauges."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def collect(self) -> Any:
        state = self._state()
        answers = CounterMetricFamily(
            "jaxinit_result_cache_answers",
            "Tensor answers by how they were made: hit (memory cache), disk (disk cache), shared (joined an "
            "identical request's generation), miss (made and shared), none (made alone)",
            labels=["result"],
        )
        for result in ("hit", "disk", "shared", "miss", "none"):
            answers.add_metric([result], state[f"{result}_total"])
        yield answers
        yield CounterMetricFamily(
            "jaxinit_result_cache_evictions", "Cached tensors dropped for room", value=state["evicted_total"]
        )
        yield CounterMetricFamily(
            "jaxinit_result_cache_disk_rejected",
            "Disk cache entries deleted unread (digest, size or origin wrong)",
            value=state["disk_rejected_total"],
        )
        yield CounterMetricFamily(
            "jaxinit_result_cache_integrity_failures",
            "Stored tensors whose bytes no longer matched the digests fixed when they were made (never served)",
            value=state["integrity_failures_total"],
        )
        yield CounterMetricFamily(
            "jaxinit_result_cache_disk_dropped",
            "Tensors not written to the disk cache because its write queue was full",
            value=state.get("disk_dropped_total", 0),
        )
        yield GaugeMetricFamily("jaxinit_result_cache_bytes", "Bytes of cached tensors", value=state["cached_bytes"])
        yield GaugeMetricFamily(
            "jaxinit_result_cache_held_bytes",
            "Bytes the cache counts against --cache-bytes: cached, reserved, and evicted but still read",
            value=state["held_bytes"],
        )
        yield GaugeMetricFamily(
            "jaxinit_result_cache_tensors", "Tensors in the memory cache", value=state["cached_tensors"]
        )
        yield GaugeMetricFamily(
            "jaxinit_result_cache_reserved_bytes",
            "Bytes reserved by shared generations in flight",
            value=state["reserved_bytes"],
        )
