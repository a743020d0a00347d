"""`relaypolicy audit`: in process against a configuration, and over SMTP against a live
`relaypolicy smtpd` (configured open, and configured safely) on loopback addresses."""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from realservers import free_port, require_loopback_address, tail, wait_for_port

from relaypolicy import OpenRelay
from relaypolicy.cli import main
from relaypolicy.cli._common import client_tls
from relaypolicy.errors import AuditError
from relaypolicy.testing import relay_probes
from relaypolicy.testing.audit import SmtpSession, audit_smtp
from relaypolicy.testing.probes import NMAP_PROBES

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
OUTSIDER = "127.0.0.10"  # not in the servers' trusted networks

OPEN_CONFIG = """
[domains]
local = ["example.org"]

[chain]
steps = ["open_relay"]
"""

SAFE_CONFIG = """
[domains]
local = ["example.org"]
relay = ["example.net"]

[networks]
trusted = ["127.0.0.1/32"]

[chain]
steps = ["trusted_networks", "sasl_permit", "local_domains"]
"""

SMTPD_SECTION = """
[smtpd]
listen = ["{host}:{port}"]
hostname = "mx.example.org"
maildir = "{directory}/maildirs"
catch_all = "{directory}/catch-all"
outgoing = "{directory}/outgoing"
{tls}
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["audit", *args])
    out, err = capsys.readouterr()
    return status, out, err


# --- in process -----------------------------------------------------------------------------


def test_example_configuration_is_not_an_open_relay(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--config", str(ROOT / "examples" / "mx.toml"))
    assert status == 0
    lines = out.splitlines()
    assert (
        lines[0] == f"relay audit of the policy of {ROOT}/examples/mx.toml, from client 203.0.113.7"
    )
    assert lines[1].split() == ["probe", "mail", "from", "rcpt", "to", "reply", "result"]
    assert lines[3].split()[:3] == ["example.org:nmap-01", "<>", "<relaytest@nmap.scanme.org>"]
    assert "554 5.7.1 <relaytest@nmap.scanme.org>: Relay access denied" in lines[3]
    assert any(line.startswith("example.net:relay-percent ") for line in lines)
    total = len(lines) - 4
    assert total >= 2 * 50
    assert lines[-1] == f"not an open relay: 0/{total} probes accepted"


def test_open_configuration_fails_with_json_and_junit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "open.toml"
    config.write_text(OPEN_CONFIG)
    junit = tmp_path / "audit.xml"
    status, out, _ = run(capsys, "--config", str(config), "--json", "--junit-xml", str(junit))
    assert status == 1
    report = json.loads(out)
    total = len(relay_probes("example.org"))
    accepted = report["accepted"]
    assert (report["open_relay"], report["total"]) == (True, total)
    assert accepted >= 50
    assert report["summary"] == f"OPEN RELAY: {accepted}/{total} probes accepted"
    # Even an open chain refuses what it cannot parse (501 before any policy is asked).
    refused = [probe for probe in report["probes"] if not probe["accepted"]]
    assert len(refused) == total - accepted
    assert {probe["reply"] for probe in refused} == {"501 5.1.3 Bad recipient address syntax"}
    first = report["probes"][0]
    assert first == {
        "name": "nmap-01",
        "why": first["why"],
        "sender": "",
        "recipient": "relaytest@nmap.scanme.org",
        "stage": "RCPT",
        "code": 250,
        "reply": "250 2.1.5 Ok",
        "result": "ACCEPTED",
        "accepted": True,
        "policy": "open_relay",  # the step name
        "reason": "open-relay",
    }
    root = ElementTree.parse(junit).getroot()  # noqa: S314 - our own file
    assert (root.get("tests"), root.get("failures")) == (str(total), str(accepted))
    case = root.find("testsuite/testcase")
    assert case is not None and case.get("name") == "nmap-01"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "accepted: 250 2.1.5 Ok"


def test_ports_and_trusted_clients(capsys: pytest.CaptureFixture[str]) -> None:
    smtpd = str(ROOT / "examples" / "smtpd.toml")
    status, out, _ = run(capsys, "--config", smtpd, "--local-domain", "example.org")
    assert status == 0
    assert "default chain:example.org:nmap-01" not in out  # one local domain: no prefix
    assert "\ndefault chain:nmap-01 " in out
    assert "\nport 5870:nmap-01 " in out
    # The submission port wants STARTTLS, then AUTH.
    assert "530 5.7.0 Must issue a STARTTLS command first" in out
    # From a trusted network the server relays: the audit says so.
    status, out, _ = run(
        capsys, "--config", smtpd, "--client-address", "127.0.0.1", "--server-port", "2525"
    )
    assert status == 1
    last = out.splitlines()[-1]
    assert last.startswith("OPEN RELAY: ")
    # ... and says why outright: the client is one the configuration trusts.
    assert "client 127.0.0.1 is in the configuration's trusted networks" in last
    assert "--client-address outside them" in last


def test_a_policy_that_falls_for_one_trick_does_not_look_like_a_trusted_client() -> None:
    """The trusted-client hint needs the plain foreign probes accepted, not a few tricks."""
    from relaypolicy import Decision, Request, Verdict
    from relaypolicy.testing.audit import audit_policy, looks_trusted, summary

    class PercentHole:
        name = "PercentHole"

        def check(self, request: Request) -> Decision:
            if "%" in request.recipient:
                return Decision(Verdict.ACCEPT, 250, "2.1.5", "Ok", self.name, "hole")
            return Decision(Verdict.REJECT, 554, "5.7.1", "Relay access denied", self.name, "no")

    probes = relay_probes("example.org")
    holed = audit_policy(PercentHole(), probes)
    assert 0 < sum(r.accepted for r in holed) < len(holed) // 2
    assert not looks_trusted(holed)
    opened = audit_policy(OpenRelay(), probes)
    assert looks_trusted(opened)
    assert summary(opened, "a hint").endswith(" probes accepted; a hint")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smtp", "127.0.0.1"], "--smtp needs --local-domain"),
        (["--smtp", "127.0.0.1:x", "--local-domain", "a.test"], "expected HOST[:PORT]"),
        (["--config", "examples/mx.toml", "--source-address", "127.0.0.1"], "goes with --smtp"),
        (["--config", "examples/mx.toml", "--foreign-domain", "example.org"], "local domain"),
        (["--smtp", "h", "--local-domain", "a.test", "--server-port", "25"], "go with --config"),
        (["--config", "examples/mx.toml", "--tls"], "--starttls, --tls and --insecure go with"),
        (["--smtp", "h", "--local-domain", "a.test", "--insecure"], "go with --starttls or --tls"),
        (["--smtp", "h", "--local-domain", "a.test", "--cafile", "ca.pem"], "or --tls"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    status, _, err = run(capsys, *args)
    assert status == 64
    assert message in err


def test_starttls_and_tls_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", "--smtp", "h", "--local-domain", "a.test", "--starttls", "--tls"])
    assert exited.value.code == 64
    assert "argument --tls: not allowed with argument --starttls" in capsys.readouterr().err


def test_client_tls_options() -> None:
    """One function reads --starttls, --tls, --cafile and --insecure for audit and compare."""

    def options(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"starttls": False, "tls": False, "cafile": None,
                                     "insecure": False, **given})  # fmt: skip

    assert client_tls(options()) == ("none", None)
    mode, context = client_tls(options(tls=True))
    assert mode == "implicit" and context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    mode, context = client_tls(options(starttls=True, insecure=True))
    assert mode == "starttls" and context is not None
    assert context.verify_mode is ssl.CERT_NONE and not context.check_hostname
    with pytest.raises(ValueError, match="--starttls and --tls exclude each other"):
        client_tls(options(starttls=True, tls=True))
    with pytest.raises(ValueError, match="--cafile and --insecure go with --starttls or --tls"):
        client_tls(options(insecure=True))
    with pytest.raises(ValueError, match="tls: expected one of none, starttls, implicit"):
        SmtpSession(HOST, 465, source_address=None, helo=None, tls="tls",  # type: ignore[arg-type]
                    tls_context=None, timeout=1.0)  # fmt: skip


def test_a_server_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    status, out, err = run(capsys, "--smtp", f"{HOST}:{port}", "--local-domain", "a.test")
    assert status == 69
    assert out == ""
    assert f"{HOST}:{port}: cannot connect" in err


# --- over SMTP, against relaypolicy smtpd ----------------------------------------------------


class Smtpd:
    def __init__(self, directory: Path, config: str, tls: str = "") -> None:
        self.port = free_port()
        path = directory / "smtpd.toml"
        path.write_text(
            config + SMTPD_SECTION.format(host=HOST, port=self.port, directory=directory, tls=tls)
        )
        self.log = directory / "smtpd.log"
        self.directory = directory
        with self.log.open("wb") as stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relaypolicy", "smtpd", "--config", str(path)],
                stdout=stream,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(HOST, self.port, timeout=20)
        except TimeoutError:
            self.stop()
            pytest.fail(f"relaypolicy smtpd did not start:\n{tail(self.log)}")

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def delivered(self) -> list[Path]:
        return [
            path for path in self.directory.rglob("*") if path.is_file() and "new" in path.parts
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def ca() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture(scope="module")
def open_smtpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smtpd]:
    pytest.importorskip("aiosmtpd")
    server = Smtpd(tmp_path_factory.mktemp("open"), OPEN_CONFIG)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def safe_smtpd(tmp_path_factory: pytest.TempPathFactory, ca: Any) -> Iterator[Smtpd]:
    pytest.importorskip("aiosmtpd")
    directory = tmp_path_factory.mktemp("safe")
    leaf = ca.issue_cert(HOST, "mx.example.org")
    leaf.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    tls = f'tls_certificate = "{directory}/cert.pem"\ntls_key = "{directory}/key.pem"'
    server = Smtpd(directory, SAFE_CONFIG, tls)
    yield server
    server.stop()


def test_open_smtpd_is_found_out(open_smtpd: Smtpd, capsys: pytest.CaptureFixture[str]) -> None:
    require_loopback_address(OUTSIDER)
    status, out, _ = run(
        capsys,
        "--smtp",
        open_smtpd.target,
        "--local-domain",
        "example.org",
        "--source-address",
        OUTSIDER,
        "--json",
    )
    assert status == 1
    report = json.loads(out)
    by_name = {probe["name"]: probe for probe in report["probes"]}
    nmap = [by_name[f"nmap-{n:02d}"] for n in range(1, NMAP_PROBES + 1)]
    # aiosmtpd's own address parser refuses a second "@" before any policy is asked
    # (553 5.1.3 malformed address); every other nmap probe gets through.
    refused_by_parser = {"nmap-09", "nmap-11"}
    for probe in nmap:
        if probe["name"] in refused_by_parser:
            assert probe["reply"] == "553 5.1.3 Error: malformed address", probe
        else:
            assert (probe["stage"], probe["code"], probe["result"]) == ("RCPT", 250, "ACCEPTED")
    assert report["accepted"] >= 2 * NMAP_PROBES
    assert report["summary"].startswith(f"OPEN RELAY: {report['accepted']}/{report['total']} ")
    assert by_name["lookalike-utf8"]["result"] == "ACCEPTED"  # sent with SMTPUTF8
    assert open_smtpd.delivered() == []  # never DATA: nothing was delivered or queued


def test_safe_smtpd_refuses_every_probe_from_outside(
    safe_smtpd: Smtpd, capsys: pytest.CaptureFixture[str]
) -> None:
    require_loopback_address(OUTSIDER)
    args = ["--smtp", safe_smtpd.target, "--local-domain", "example.org"]
    status, out, _ = run(
        capsys, *args, "--relay-domain", "example.net", "--source-address", OUTSIDER
    )
    lines = out.splitlines()
    assert status == 0, out
    assert lines[0] == f"relay audit of SMTP server {safe_smtpd.target}, from {OUTSIDER}"
    total = len(relay_probes("example.org", relay_domain="example.net"))
    assert lines[-1] == f"not an open relay: 0/{total} probes accepted"
    nmap_06 = next(line for line in lines if line.startswith("nmap-06 "))
    assert "554 5.7.1 <relaytest%nmap.scanme.org@example.org>: Relay access denied" in nmap_06
    assert nmap_06.endswith("refused")
    # The same server, audited from the network it trusts, relays: --source-address matters.
    status, out, _ = run(capsys, *args, "--source-address", HOST)
    assert status == 1
    last = out.splitlines()[-1]
    assert last.startswith("OPEN RELAY: ")
    # ... and the summary says the server may simply trust that address.
    assert f"the server may trust the source address {HOST}" in last
    assert "--source-address 127.0.0.10" in last
    assert safe_smtpd.delivered() == []


def test_starttls(safe_smtpd: Smtpd, capsys: pytest.CaptureFixture[str]) -> None:
    require_loopback_address(OUTSIDER)
    ca_file = str(safe_smtpd.directory / "ca.pem")
    base = ["--smtp", safe_smtpd.target, "--local-domain", "example.org"]
    status, out, _ = run(
        capsys, *base, "--source-address", OUTSIDER, "--starttls", "--cafile", ca_file
    )
    assert status == 0
    assert out.splitlines()[0].endswith(" with STARTTLS, from 127.0.0.10")
    # Without the CA the certificate cannot be verified: the audit cannot run.
    status, _, err = run(capsys, *base, "--starttls")
    assert status == 69
    assert "certificate verify failed" in err


class RefuseRelay:
    """An aiosmtpd handler that refuses every recipient (the battery has no local one)."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return f"554 5.7.1 <{address}>: Relay access denied"


@pytest.fixture(scope="module")
def implicit_tls_server(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An aiosmtpd that speaks TLS from the first byte (RFC 8314 section 3), like a
    ``submissions`` port on 465; its port."""
    controller_module = pytest.importorskip("aiosmtpd.controller")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    controller = controller_module.Controller(
        RefuseRelay(), hostname=HOST, port=free_port(), ssl_context=context
    )
    controller.start()
    yield int(controller.port)
    controller.stop()


def test_implicit_tls(implicit_tls_server: int, ca: Any) -> None:
    """``tls="implicit"`` connects with TLS first: every probe is asked, over TLS."""
    client = ssl.create_default_context()
    ca.configure_trust(client)
    probes = relay_probes("example.org")
    results = audit_smtp(HOST, implicit_tls_server, probes, tls="implicit", tls_context=client)
    assert len(results) == len(probes)
    assert not any(result.accepted for result in results)
    refused = [r for r in results if r.stage == "RCPT" and r.code == 554]
    assert len(refused) > len(probes) // 2
    # Certificates are verified: without the CA the handshake fails, the audit cannot run.
    with pytest.raises(AuditError, match="certificate verify failed"):
        audit_smtp(HOST, implicit_tls_server, probes[:1], tls="implicit")


def test_implicit_tls_against_a_plain_server(
    safe_smtpd: Smtpd, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--tls`` on a port that greets in plain text fails cleanly (exit 69), sends nothing."""
    status, out, err = run(
        capsys, "--smtp", safe_smtpd.target, "--local-domain", "example.org", "--tls", "--insecure"
    )
    assert status == 69
    assert out == ""
    assert f"{safe_smtpd.target}: cannot connect" in err


def test_the_library_call_stops_at_rcpt(open_smtpd: Smtpd) -> None:
    probes = relay_probes("example.org")[:3]
    results = audit_smtp(HOST, open_smtpd.port, probes, helo="audit.example")
    assert [result.reply for result in results] == ["250 2.1.5 Ok"] * 3
    assert all(result.accepted for result in results)
    assert open_smtpd.delivered() == []
