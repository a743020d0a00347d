"""Prometheus metrics for the long-running commands (``serve``, ``smtpd``, ``watch``).

Theory of operation
-------------------
Nothing is counted here: the counters already exist, for ``relaypolicy ctl stats``
(the front end's, the runtime's, the table's, the watcher's, flattened into one mapping
of ``name -> value``). :class:`StatsCollector` reads that mapping at scrape time and
turns each known name into a metric (:data:`SIMPLE`, the labelled families of
:data:`LABELLED`, and the decision-latency histogram); a name it does not know is left
out, so a label set is always bounded by the code (verdicts, reasons: policy constants)
or the configuration (policies: its step names).

The stats are read where they are written: the HTTP listener of ``prometheus_client``
runs in its own thread, and the collector hands the read to the event loop
(``call_soon_threadsafe``) and waits for it, as the watcher's ``LoopTable`` does for its
writes. The decision path is untouched, metrics on or off.

``prometheus_client`` is the ``metrics`` extra; it is imported only when a ``[metrics]``
section asks for the listener (:func:`start_metrics`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

from relaypolicy.config.metrics import MetricsSettings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["LABELLED", "SIMPLE", "MetricsServer", "StatsCollector", "start_metrics"]

log = logging.getLogger("relaypolicy.metrics")

PREFIX = "relaypolicy_"
SCRAPE_TIMEOUT = 5.0  # seconds the loop has to hand over its stats


class Simple(NamedTuple):
    """One stats key exposed as one metric without labels."""

    metric: str  # without the prefix; a counter's without its ``_total``
    kind: str  # "counter" or "gauge"
    help: str


# stats key -> metric. The keys are those of `relaypolicy ctl stats` (docs/operations.md).
SIMPLE: dict[str, Simple] = {
    # The Postfix policy service (relaypolicy.postfix.server.PolicyServer.counters), and
    # every front end's decider (relaypolicy.decisions.DecisionStats: policy-errors).
    "requests": Simple("policy_requests", "counter", "Policy delegation requests read."),
    "other-states": Simple(
        "policy_other_states", "counter", "Requests for a protocol state other than RCPT."
    ),
    "unusable": Simple("policy_unusable_requests", "counter", "Requests that made no request."),
    "policy-errors": Simple("policy_errors", "counter", "Decisions where the policy raised."),
    "connections": Simple("connections", "counter", "Connections accepted from the MTA."),
    "connections-refused": Simple(
        "connections_refused", "counter", "Connections refused at serve.max_connections."
    ),
    "connections-evicted": Simple(
        "connections_evicted", "counter", "Idle connections closed to make room for new ones."
    ),
    "protocol-errors": Simple("protocol_errors", "counter", "Malformed policy requests."),
    "request-timeouts": Simple(
        "request_timeouts", "counter", "Requests not completed within serve.request_timeout."
    ),
    "connections-open": Simple("connections_open", "gauge", "Connections open now."),
    # The runtime.
    "reloads": Simple("reloads", "counter", "Configuration reloads applied."),
    "reload-failures": Simple(
        "reload_failures", "counter", "Reloads refused (the old configuration kept)."
    ),
    # The POP-before-SMTP table.
    "table-entries": Simple("table_entries", "gauge", "Addresses in the table now."),
    "pop-ttl": Simple("table_ttl_seconds", "gauge", "Allowance of one login (ttl)."),
    "table-checkpoints": Simple(
        "table_checkpoints", "counter", "Snapshots written by a persisted table."
    ),
    "fleet-stale": Simple("fleet_stale", "gauge", "1 while Redis has not been heard from."),
    "fleet-seconds-since-redis": Simple(
        "fleet_seconds_since_redis", "gauge", "Seconds since Redis last answered."
    ),
    "fleet-pending-writes": Simple("fleet_pending_writes", "gauge", "Writes queued for Redis."),
    "fleet-writes": Simple("fleet_writes", "counter", "Writes sent to Redis."),
    "fleet-dropped-writes": Simple(
        "fleet_dropped_writes", "counter", "Writes dropped from a full queue."
    ),
    "fleet-events": Simple("fleet_events", "counter", "Changes read from the Redis stream."),
    "fleet-bad-events": Simple("fleet_bad_events", "counter", "Stream entries refused."),
    "fleet-loads": Simple("fleet_loads", "counter", "Full loads of the table from Redis."),
    "fleet-errors": Simple("fleet_errors", "counter", "Redis errors."),
    # The watcher (relaypolicy.watch.runner.LoginWatch.counters, named watch-...).
    "watch-lines": Simple("watch_lines", "counter", "Log lines read."),
    "watch-logins": Simple("watch_logins", "counter", "Logins recorded in the table."),
    "watch-stale": Simple("watch_stale_logins", "counter", "Logins older than the ttl."),
    "watch-future": Simple(
        "watch_future_logins", "counter", "Logins dated in the future (a clock is wrong)."
    ),
    "watch-expired": Simple("watch_expired", "counter", "Entries removed by sweeps."),
    "watch-malformed": Simple("watch_malformed_lines", "counter", "Lines refused."),
    "watch-sessions": Simple("watch_sessions", "gauge", "IMAP/POP3 sessions open now."),
    "watch-sessions_dropped": Simple(
        "watch_sessions_dropped", "counter", "Sessions dropped at watch.max_sessions."
    ),
    "watch-rotations": Simple("watch_rotations", "counter", "Log rotations followed."),
    "watch-truncations": Simple("watch_truncations", "counter", "Log truncations followed."),
    "watch-undecodable": Simple(
        "watch_undecodable_lines", "counter", "Lines that were not valid UTF-8."
    ),
    "watch-export-writes": Simple("watch_export_writes", "counter", "Exported maps written."),
    "watch-export-errors": Simple(
        "watch_export_errors", "counter", "Exported maps that could not be written."
    ),
}

# stats key prefix -> (metric, labels, help): `decision:reject:local_domains:not-local` is
# relaypolicy_decisions_total{verdict="reject",policy="local_domains",reason="not-local"}.
# Policy names are the configuration's step names and reasons the policies' constants:
# bounded label sets. (The keys `verdict:...` and `reason:...` of `ctl stats` are the same
# counts summed; Prometheus sums by label, so they are not exposed twice.)
LABELLED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "decision:": (
        "decisions",
        ("verdict", "policy", "reason"),
        "RCPT decisions, by verdict, deciding policy and reason.",
    ),
}

# The decision latency histogram (relaypolicy.decisions.DecisionStats): its stats keys.
HISTOGRAM_BUCKET = "decision-seconds-le:"
HISTOGRAM_COUNT = "decision-seconds-count"
HISTOGRAM_SUM = "decision-seconds-sum"


class Stats(Protocol):
    """What the collector reads: the flat stats of ``relaypolicy ctl stats``."""

    def __call__(self) -> Mapping[str, object]: ...


def _number(value: object) -> float | None:
    """A stats value as a sample value; ``None`` for one that is not a number."""
    if isinstance(value, bool | int | float):
        return float(value)
    return None


class StatsCollector:
    """A ``prometheus_client`` collector reading ``stats`` on ``loop`` at each scrape."""

    def __init__(self, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = stats
        self.loop = loop

    def snapshot(self) -> dict[str, object]:
        """The stats, read on the loop (from the listener's thread)."""
        future: concurrent.futures.Future[dict[str, object]] = concurrent.futures.Future()

        def read() -> None:
            try:
                future.set_result(dict(self.stats()))
            except BaseException as exc:  # handed back to the scraping thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(read)
        return future.result(timeout=SCRAPE_TIMEOUT)

    def collect(self) -> Iterator[Metric]:
        # Imported here: prometheus_client is the optional `metrics` extra.
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.snapshot()
        for key, simple in SIMPLE.items():
            value = _number(stats.get(key))
            if value is None:
                continue
            name = PREFIX + simple.metric
            if simple.kind == "counter":
                yield CounterMetricFamily(name, simple.help, value=value)
            else:
                yield GaugeMetricFamily(name, simple.help, value=value)
        for prefix, (metric, labels, text) in LABELLED.items():
            family = CounterMetricFamily(PREFIX + metric, text, labels=list(labels))
            for key, raw in sorted(stats.items()):
                value = _number(raw)
                if not key.startswith(prefix) or value is None:
                    continue
                values = key[len(prefix) :].split(":", len(labels) - 1)
                if len(values) == len(labels):
                    family.add_metric(values, value)
            yield family
        histogram = _histogram(stats)
        if histogram is not None:
            yield histogram


def _histogram(stats: Mapping[str, object]) -> Metric | None:
    """``relaypolicy_decision_duration_seconds`` from the stats' histogram keys, if any."""
    from prometheus_client.core import HistogramMetricFamily

    count = _number(stats.get(HISTOGRAM_COUNT))
    total = _number(stats.get(HISTOGRAM_SUM))
    if count is None or total is None:
        return None
    buckets: list[tuple[str, float]] = []
    for key, raw in stats.items():
        value = _number(raw)
        if key.startswith(HISTOGRAM_BUCKET) and value is not None:
            buckets.append((key[len(HISTOGRAM_BUCKET) :], value))
    buckets.sort(key=lambda bucket: float(bucket[0]))
    buckets.append(("+Inf", count))
    return HistogramMetricFamily(
        PREFIX + "decision_duration_seconds",
        "Time the policy took to decide one RCPT, in seconds.",
        buckets=buckets,
        sum_value=total,
    )


class MetricsServer:
    """The HTTP listener serving ``/metrics``, in a thread of ``prometheus_client``."""

    def __init__(self, stop: Callable[[], None], thread: threading.Thread, where: str) -> None:
        self._stop = stop
        self._thread = thread
        self.where = where

    def close(self) -> None:
        """Stop listening and wait for the listener's thread."""
        self._stop()
        self._thread.join()


def start_metrics(
    settings: MetricsSettings, stats: Stats, loop: asyncio.AbstractEventLoop
) -> MetricsServer:
    """Listen on ``settings`` and serve ``stats`` (plus the ``process_…`` metrics) as
    ``/metrics``. Raises :class:`OSError` when the address cannot be bound, and
    :class:`ModuleNotFoundError` when the ``metrics`` extra is not installed."""
    # Imported here: prometheus_client is the optional `metrics` extra.
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(StatsCollector(stats, loop))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        httpd, thread = start_http_server(settings.port, addr=settings.host, registry=registry)
    except OSError as exc:
        raise OSError(exc.errno, f"metrics.listen {host}:{settings.port}: {exc.strerror}") from None
    port = httpd.server_address[1]

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    return MetricsServer(stop, thread, f"http://{host}:{port}/metrics")
