"""``examples/grafana-dashboard.json``: every metric its queries use is one relaypolicy
really exposes (:mod:`relaypolicy.daemon.metrics`) and documents (docs/operations.md,
"## Metrics"), so renaming a metric breaks this test instead of a dashboard."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaypolicy.daemon.metrics import LABELLED, PREFIX, SIMPLE

# The histogram's series, and the name the docs give them.
HISTOGRAM = PREFIX + "decision_duration_seconds"
HISTOGRAM_SERIES = {HISTOGRAM + suffix: HISTOGRAM for suffix in ("_bucket", "_count", "_sum")}

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\b((?:relaypolicy|process)_[a-z_]+)\b")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# What the dashboard is for: the signals an operator watches (issue 17).
REQUIRED = {
    "relaypolicy_decisions_total",
    "relaypolicy_decision_duration_seconds_bucket",
    "relaypolicy_policy_requests_total",
    "relaypolicy_connections_open",
    "relaypolicy_connections_total",
    "relaypolicy_table_entries",
    "relaypolicy_table_checkpoints_total",
    "relaypolicy_fleet_stale",
    "relaypolicy_watch_lines_total",
    "relaypolicy_watch_logins_total",
    "relaypolicy_watch_malformed_lines_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
}


def dashboard() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(container: dict[str, object]) -> Iterator[dict[str, object]]:
    """Every panel, those inside rows included."""
    for panel in container.get("panels", []):  # type: ignore[attr-defined]
        yield panel
        yield from panels(panel)


def expressions() -> list[str]:
    """The PromQL of every panel's queries."""
    found = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):  # type: ignore[attr-defined]
            found.append(target["expr"])
    return found


def used_metrics() -> set[str]:
    return {name for expr in expressions() for name in METRIC.findall(expr)}


def exposed_metrics() -> dict[str, str]:
    """Every ``relaypolicy_…`` sample name the collector can yield, and its type."""
    exposed = {
        PREFIX + simple.metric + ("_total" if simple.kind == "counter" else ""): simple.kind
        for simple in SIMPLE.values()
    }
    exposed.update({PREFIX + metric + "_total": "counter" for metric, _, _ in LABELLED.values()})
    exposed.update(dict.fromkeys(HISTOGRAM_SERIES, "counter"))  # read with rate()
    return exposed


def metrics_chapter() -> str:
    text = OPERATIONS.read_text(encoding="utf-8")
    start = text.index("## Metrics\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_dashboard_uses_the_metrics_an_operator_watches() -> None:
    assert len(expressions()) >= len(REQUIRED)
    missing = REQUIRED - used_metrics()
    assert not missing, f"the dashboard does not show {sorted(missing)}"


def test_every_relaypolicy_metric_used_is_exposed_and_documented() -> None:
    exposed, chapter = exposed_metrics(), metrics_chapter()
    ours = sorted(name for name in used_metrics() if name.startswith(PREFIX))
    assert ours
    not_exposed = [name for name in ours if name not in exposed]
    assert not not_exposed, f"not in relaypolicy/daemon/metrics.py: {not_exposed}"
    documented_as = {name: HISTOGRAM_SERIES.get(name, name) for name in ours}
    undocumented = [name for name, doc in documented_as.items() if f"| `{doc}` |" not in chapter]
    assert not undocumented, f"not in docs/operations.md's metric tables: {undocumented}"


def test_every_process_metric_used_is_documented() -> None:
    process_section = metrics_chapter().split("### The process", 1)[1]
    process = sorted(name for name in used_metrics() if name.startswith("process_"))
    assert process
    undocumented = [name for name in process if f"`{name}`" not in process_section]
    assert not undocumented, f"not in docs/operations.md's process metrics: {undocumented}"


def test_counters_are_read_as_rates_and_gauges_as_values() -> None:
    """A counter restarts at zero with its process: only rate() or increase() reads it
    right; a rate of a gauge means nothing."""
    kinds = exposed_metrics() | {"process_cpu_seconds_total": "counter"}
    wrong = []
    for expr in expressions():
        for match in METRIC.finditer(expr):
            name = match.group(1)
            in_rate = re.search(r"\b(?:rate|increase)\(\s*$", expr[: match.start()]) is not None
            if kinds.get(name, "gauge") == "counter" and not in_rate:
                wrong.append(f"counter {name} outside rate(): {expr}")
            if kinds.get(name, "gauge") == "gauge" and in_rate:
                wrong.append(f"gauge {name} inside rate(): {expr}")
    assert not wrong


def test_the_dashboard_imports_with_a_prometheus_data_source() -> None:
    loaded = dashboard()
    assert loaded["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes relaypolicy's /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    assert isinstance(loaded["schemaVersion"], int)
    assert 36 <= loaded["schemaVersion"] <= 39
    shown = [panel for panel in panels(loaded) if panel["type"] != "row"]
    assert shown
    for panel in shown:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:  # type: ignore[attr-defined]
            assert target["datasource"] == DATASOURCE, panel["title"]
    ids = [panel["id"] for panel in panels(loaded)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("name", ["relaypolicy_table_entries", "relaypolicy_decisions_total"])
def test_a_renamed_metric_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is against the module's tables: rename one there and it fails."""
    renamed = {
        key: simple._replace(metric=simple.metric + "_renamed") for key, simple in SIMPLE.items()
    }
    monkeypatch.setattr(f"{__name__}.SIMPLE", renamed)
    monkeypatch.setattr(
        f"{__name__}.LABELLED",
        {k: (m + "_renamed", label, h) for k, (m, label, h) in LABELLED.items()},
    )
    with pytest.raises(AssertionError, match=name):
        test_every_relaypolicy_metric_used_is_exposed_and_documented()
