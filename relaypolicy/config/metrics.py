"""The ``[metrics]`` section: where a long-running command serves Prometheus metrics.

::

    [metrics]
    listen = "127.0.0.1:9464"     # HOST:PORT or [IPv6]:PORT; 9464 is the port
                                  # Prometheus's registry assigns to client exporters

Without the section nothing listens and ``prometheus_client`` (the ``metrics`` extra) is
never imported. The endpoint has no authentication: keep it on loopback or a management
network.
"""

from __future__ import annotations

import importlib.util

import attrs

from relaypolicy.settings import Section

__all__ = ["METRICS_KEYS", "MetricsSettings", "parse_metrics"]

METRICS_KEYS = ("listen",)
DEFAULT_LISTEN = "127.0.0.1:9464"


@attrs.frozen
class MetricsSettings:
    """``[metrics]``: the address of the HTTP listener serving ``/metrics``."""

    host: str = "127.0.0.1"
    port: int = 9464


def parse_metrics(table: object) -> MetricsSettings:
    """Validate a ``[metrics]`` table; :class:`~relaypolicy.errors.ConfigError` names the
    key."""
    section = Section(table, "metrics", METRICS_KEYS)
    listen = section.host_port("listen", DEFAULT_LISTEN)
    if listen is None:
        raise section.error("listen", "expected HOST:PORT, got an empty string")
    if importlib.util.find_spec("prometheus_client") is None:
        raise section.error(
            "listen", "metrics need prometheus-client: pip install 'relaypolicy[metrics]'"
        )
    host, port = listen
    return MetricsSettings(host, port)
