"""Prometheus metrics (``[metrics]``): the section's errors, and ``/metrics`` served by a
running ``relaypolicy serve`` and ``relaypolicy watch``, scraped over HTTP after real
policy requests and real log lines."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from realservers import free_port, wait_until
from serve_process import Service

from relaypolicy.config import ConfigError, parse_config
from relaypolicy.config.metrics import MetricsSettings
from relaypolicy.daemon.metrics import LABELLED, SIMPLE

prometheus_parser = pytest.importorskip("prometheus_client.parser")

SLOW = 20.0  # seconds: room for a process's start-up and its first scrape

POLICY = """
[domains]
local = ["example.org"]

[pop_before_smtp]
ttl = 1800

[chain]
steps = ["pop_before_smtp", "local_domains"]
"""

LOGIN = (
    "{stamp} pop3-login: Info: Login: user=<{user}>, method=PLAIN, rip={ip}, "
    "lip=127.0.0.1, mpid=3710, session=<PW95RVZh39h/AAAK>\n"
)
FAILED = (
    "{stamp} pop3-login: Info: Disconnected (auth failed, 1 attempts in 2 secs): "
    "user=<{user}>, method=PLAIN, rip={ip}, lip=127.0.0.1, session=<RUJ6RVZhs9l/AAAK>\n"
)

CTL = [sys.executable, "-m", "relaypolicy", "ctl"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_section(port: int) -> str:
    return f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, read with prometheus_client's own parser (so the
    text must be valid exposition format), keyed by name and sorted labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_metrics(port: int, what: str) -> None:
    def answers() -> bool:
        try:
            scrape(port)
        except OSError:
            return False
        return True

    wait_until(answers, what, timeout=SLOW)


def ask(service: Service, recipient: str, *, state: str = "RCPT") -> str:
    """The action ``relaypolicy serve`` gives for ``recipient`` from 127.0.0.20."""
    return service.ask(recipient, client="127.0.0.20", sender="someone@example.org", state=state)


# --- the [metrics] section ---------------------------------------------------------------


def test_metrics_section_is_read() -> None:
    config = parse_config(tomllib.loads(POLICY + '[metrics]\nlisten = "[::1]:9100"\n'))
    assert config.metrics == MetricsSettings("::1", 9100)
    assert parse_config(tomllib.loads(POLICY + "[metrics]\n")).metrics == MetricsSettings(
        "127.0.0.1", 9464
    )
    assert parse_config(tomllib.loads(POLICY)).metrics is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("listen = 9464", "metrics.listen: expected HOST:PORT, got 9464"),
        ('listen = "9464"', "metrics.listen: expected HOST:PORT or [IPv6]:PORT"),
        ('listen = "127.0.0.1:0"', "metrics.listen: port out of range"),
        ('listen = "127.0.0.1:70000"', "metrics.listen: port out of range"),
        ('listen = ""', "metrics.listen: expected HOST:PORT, got an empty string"),
        ('port = "9464"', "metrics.port: unknown key (expected one of listen)"),
    ],
)
def test_bad_metrics_settings_name_the_key(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(POLICY + "[metrics]\n" + section + "\n"))
    assert message in str(caught.value)


# --- relaypolicy serve ---------------------------------------------------------------------


def test_serve_metrics_count_the_decisions(serve: Callable[[str], Service]) -> None:
    port = free_port()
    service = serve(POLICY + metrics_section(port))
    wait_for_metrics(port, "the metrics listener")
    before = scrape(port)
    assert value(before, "relaypolicy_table_entries") == 0
    assert value(before, "relaypolicy_table_ttl_seconds") == 1800
    assert ("relaypolicy_decisions_total", (("verdict", "accept"),)) not in before

    assert ask(service, "taro@example.org") == "OK"
    assert ask(service, "hanako@example.org") == "OK"
    assert ask(service, "friend@elsewhere.test").startswith("554 5.7.1")
    assert ask(service, "taro@example.org", state="DATA") == "DUNNO"
    assert service.ctl("add", "127.0.0.21")["ok"] is True

    after = scrape(port)
    decisions = {
        labels: sample
        for (name, labels), sample in after.items()
        if name == "relaypolicy_decisions_total"
    }
    # By verdict, deciding policy (the configuration's step name) and reason, together.
    assert decisions == {
        (("policy", "local_domains"), ("reason", "local"), ("verdict", "accept")): 2,
        (("policy", "local_domains"), ("reason", "not-local"), ("verdict", "reject")): 1,
    }
    # Each decision timed once; the buckets are cumulative and end in the count.
    assert value(after, "relaypolicy_decision_duration_seconds_count") == 3
    assert value(after, "relaypolicy_decision_duration_seconds_bucket", le="+Inf") == 3
    assert 0 < value(after, "relaypolicy_decision_duration_seconds_sum") < 3
    buckets = sorted(
        (float(dict(labels)["le"]), sample)
        for (name, labels), sample in after.items()
        if name == "relaypolicy_decision_duration_seconds_bucket"
    )
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert value(after, "relaypolicy_policy_requests_total") == 4
    assert value(after, "relaypolicy_policy_other_states_total") == 1
    connections = value(after, "relaypolicy_connections_total")  # the start-up probe too
    assert connections - value(before, "relaypolicy_connections_total") == 4
    assert value(after, "relaypolicy_table_entries") == 1
    assert value(after, "relaypolicy_reloads_total") == 0
    assert value(after, "process_start_time_seconds") > 0
    service.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: value(scrape(port), "relaypolicy_reloads_total") == 1,
        "the reload counted",
        timeout=SLOW,
    )
    assert service.stop() == 0
    service.wait_for_log(r"metrics on http://127\.0\.0\.1:\d+/metrics")
    with pytest.raises(OSError):  # the listener is closed with the service
        scrape(port)


def test_serve_cannot_bind_the_metrics_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "relaypolicy.toml"
        config.write_text(
            POLICY + metrics_section(port) + f'\n[serve]\nlisten = ["127.0.0.1:{free_port()}"]\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "relaypolicy", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 71, done.stderr
    assert f"metrics.listen 127.0.0.1:{port}" in done.stderr


# --- relaypolicy watch ---------------------------------------------------------------------


def test_watch_metrics_count_the_logins(tmp_path: Path) -> None:
    log = tmp_path / "dovecot.log"
    log.write_text("")
    port = free_port()
    config = tmp_path / "relaypolicy.toml"
    config.write_text(
        POLICY + f'\n[watch]\nlog = "{log}"\nformat = "dovecot"\n' + metrics_section(port)
    )
    output = tmp_path / "watch.out"
    with output.open("wb") as stream:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", "watch", "--config", str(config)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_metrics(port, "the watcher's metrics listener")
        assert value(scrape(port), "relaypolicy_watch_logins_total") == 0
        stamp = time.strftime("%b %d %H:%M:%S")
        with log.open("a") as stream_log:
            stream_log.write(LOGIN.format(stamp=stamp, ip="127.0.0.11", user="taro"))
            stream_log.write(FAILED.format(stamp=stamp, ip="127.0.0.12", user="jiro"))
            stream_log.write(LOGIN.format(stamp=stamp, ip="127.0.0.13", user="hanako"))
        wait_until(
            lambda: value(scrape(port), "relaypolicy_watch_lines_total") == 3,
            "the three lines counted",
            timeout=SLOW,
        )
        samples = scrape(port)
        assert value(samples, "relaypolicy_watch_logins_total") == 2
        assert value(samples, "relaypolicy_table_entries") == 2
        assert value(samples, "relaypolicy_watch_malformed_lines_total") == 0
        assert not any(name.startswith("relaypolicy_decisions") for name, _ in samples)
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=20) == 0, output.read_text()
    assert "metrics on http://127.0.0.1:" in output.read_text()


# --- docs/operations.md ------------------------------------------------------------------


OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def metrics_chapter() -> str:
    text = OPERATIONS.read_text(encoding="utf-8")
    start = text.index("## Metrics\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_documented_example_configuration_works() -> None:
    example = metrics_chapter().split("```toml\n", 1)[1].split("```", 1)[0]
    assert parse_config(tomllib.loads(example)).metrics == MetricsSettings("127.0.0.1", 9464)


def test_every_metric_is_documented() -> None:
    chapter = metrics_chapter()
    names = [
        f"relaypolicy_{simple.metric}" + ("_total" if simple.kind == "counter" else "")
        for simple in SIMPLE.values()
    ] + [f"relaypolicy_{metric}_total" for metric, _, _ in LABELLED.values()]
    names.append("relaypolicy_decision_duration_seconds")
    missing = [name for name in names if f"| `{name}` |" not in chapter]
    assert not missing, f"not in docs/operations.md: {missing}"


# --- relaypolicy smtpd ---------------------------------------------------------------------


def test_smtpd_serves_the_table_and_decision_metrics(tmp_path: Path) -> None:
    pytest.importorskip("aiosmtpd")
    smtp_port, port = free_port(), free_port()
    config = tmp_path / "smtpd.toml"
    config.write_text(
        POLICY
        + f'\n[smtpd]\nlisten = ["127.0.0.1:{smtp_port}"]\nhostname = "localhost"\n'
        + f'maildir = "{tmp_path / "maildirs"}"\noutgoing = "{tmp_path / "outgoing"}"\n'
        + f'mailboxes = ["taro@example.org"]\ncontrol_socket = "{tmp_path / "control"}"\n'
        + metrics_section(port)
    )
    output = tmp_path / "smtpd.out"
    with output.open("wb") as stream:
        smtpd = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", "smtpd", "--config", str(config)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_metrics(port, "smtpd's metrics listener")
        assert value(scrape(port), "relaypolicy_table_entries") == 0
        added = subprocess.run(
            [*CTL, "--socket", str(tmp_path / "control"), "add", "127.0.0.31"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        assert value(scrape(port), "relaypolicy_table_entries") == 1
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=SLOW) as client:
            client.ehlo("client.example")
            client.mail("sender@elsewhere.test")
            assert client.rcpt("taro@example.org")[0] == 250
            assert client.rcpt("friend@elsewhere.test")[0] == 554
        after = scrape(port)
        assert (
            value(
                after,
                "relaypolicy_decisions_total",
                verdict="accept",
                policy="local_domains",
                reason="local",
            )
            == 1
        )
        assert (
            value(
                after,
                "relaypolicy_decisions_total",
                verdict="reject",
                policy="local_domains",
                reason="not-local",
            )
            == 1
        )
        assert value(after, "relaypolicy_decision_duration_seconds_count") == 2
    finally:
        smtpd.send_signal(signal.SIGTERM)
        assert smtpd.wait(timeout=20) == 0, output.read_text()
