"""End to end: a real Sendmail asks `relaypolicy milter`, and real SMTP clients from
distinct loopback addresses get the replies. Both safe setups of docs/milter.md
("Sendmail"), each with ``INPUT_MAIL_FILTER(..., F=T, ...)`` and the macros of
``sendmail_instance.MILTER_MACROS``:

- ``gate="milter"``: ``FEATURE(promiscuous_relay)``, so Sendmail's own relay check is off
  and relaypolicy is the only relay gate;
- ``gate="sendmail"``: Sendmail's own relay check first (class ``w`` is local, the
  loopback client and, with ``TRUST_AUTH_MECH``, an authenticated one may relay,
  ``550 5.7.1 ... Relaying denied`` for the rest), relaypolicy after it on what Sendmail
  accepted.

relaypolicy runs as a separate process (``tests/milter_process.py``); `relaypolicy ctl`
talks to its control socket. SMTP AUTH is Cyrus SASL against a private sasldb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import test_postfix_differential as differential
from milter_process import start_milter
from realservers import audit_json, free_port, require_binary, require_loopback_address, tail
from sendmail_instance import Answer, SendmailConfig, SendmailInstance, ask, running_sendmail
from serve_process import Service

from relaypolicy import Verdict
from relaypolicy.testing.probes import relay_probes

pytestmark = pytest.mark.real

TRUSTED = "127.0.0.1"
OUTSIDER = "127.0.0.10"
USERS = {"taro": "secret"}

CONFIG = """\
[domains]
local = ["local.test"]

[networks]
trusted = ["127.0.0.1/32"]

[pop_before_smtp]
ttl = 1800

[chain]
steps = ["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]

[log]
level = "info"
"""

# Sendmail's answer when the filter (F=T) cannot be asked.
TEMPFAIL = (451, "4.3.2 Please try again later")

Gate = Literal["milter", "sendmail"]
GATES: tuple[Gate, ...] = ("milter", "sendmail")


@dataclass
class Stack:
    gate: Gate
    sendmail: SendmailInstance
    milter: Service

    def ask(
        self,
        client: str,
        recipient: str,
        *,
        sender: str = "sender@aho.jp",
        login: tuple[str, str] | None = None,
    ) -> Answer:
        return ask(self.sendmail, client, recipient, sender=sender, login=login)

    def why(self) -> str:
        return f"{self.sendmail.diagnostics()}\n--- {self.milter.log} ---\n{tail(self.milter.log)}"


def sendmail_config(gate: Gate, milter_port: int) -> SendmailConfig:
    """The setup ``gate`` with the milter on ``milter_port``; SMTP AUTH for :data:`USERS`,
    trusted by Sendmail itself only where its own check runs (``gate="sendmail"``)."""
    return SendmailConfig(
        gate=gate,
        milter=f"inet:{milter_port}@127.0.0.1",
        sasl_users=USERS,
        trust_auth=gate == "sendmail",
    )


@contextlib.contextmanager
def sendmail_stack(gate: Gate, directory: Path, config: str = CONFIG) -> Iterator[Stack]:
    require_loopback_address(OUTSIDER)
    with contextlib.ExitStack() as cleanup:
        milter = start_milter(directory, config)
        cleanup.callback(milter.stop)
        sendmail = cleanup.enter_context(running_sendmail(sendmail_config(gate, milter.port)))
        yield Stack(gate, sendmail, milter)


@pytest.fixture(scope="module", params=GATES)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    gate: Gate = request.param
    with sendmail_stack(gate, tmp_path_factory.mktemp(f"milter-{gate}")) as built:
        yield built


def refused_by_relaypolicy(answer: Answer) -> bool:
    """relaypolicy's refusal to relay, as Sendmail passes it on."""
    return answer.stage == "RCPT" and answer.code == 554 and "Relay access denied" in answer.text


def refused_by_sendmail(answer: Answer) -> bool:
    return answer.stage == "RCPT" and answer.code == 550 and "Relaying denied" in answer.text


def test_local_recipient_is_accepted_from_everyone(stack: Stack) -> None:
    for client in (TRUSTED, OUTSIDER):
        answer = stack.ask(client, "user@local.test")
        assert answer[:2] == ("RCPT", 250), (client, answer, stack.why())


def test_foreign_recipient_is_relayed_only_for_the_trusted_client(stack: Stack) -> None:
    assert stack.ask(TRUSTED, "user@aho.jp")[:2] == ("RCPT", 250), stack.why()
    answer = stack.ask(OUTSIDER, "user@aho.jp")
    if stack.gate == "milter":
        assert refused_by_relaypolicy(answer), (answer, stack.why())
        # Our reply word for word (Sendmail adds "<rcpt>... " only to a text that does not
        # name the recipient already).
        assert answer.text == "5.7.1 <user@aho.jp>: Relay access denied", answer
    else:
        assert refused_by_sendmail(answer), (answer, stack.why())


def test_decisions_are_logged_and_counted_by_relaypolicy(stack: Stack) -> None:
    stack.ask(OUTSIDER, "counted@local.test")
    stack.ask(TRUSTED, "counted@aho.jp")
    log = stack.milter.log.read_text()
    assert "recipient=<counted@local.test> verdict=ACCEPT policy=local_domains" in log, log
    assert "recipient=<counted@aho.jp> verdict=ACCEPT policy=trusted_networks" in log, log
    stats = stack.milter.ctl("stats")["stats"]
    assert isinstance(stats, dict)
    assert stats["reason:trusted-network"] >= 1, stats


def test_routing_tricks_are_refused_to_a_stranger(stack: Stack) -> None:
    """The relay battery (nmap's probes, the routed forms, literals, look-alikes) from the
    untrusted client: nothing is accepted. SMTPUTF8 probes cannot be sent (Sendmail 8.17 as
    configured does not offer SMTPUTF8)."""
    probes = [p for p in relay_probes("local.test", server_ip="127.0.0.1") if not p.smtputf8]
    assert len(probes) > 40
    accepted = []
    by_relaypolicy = 0
    for probe in probes:
        answer = stack.ask(OUTSIDER, probe.recipient, sender=probe.sender)
        if 200 <= answer.code < 300:
            accepted.append((probe.name, probe.recipient, str(answer)))
        by_relaypolicy += refused_by_relaypolicy(answer)
    assert accepted == [], stack.why()
    if stack.gate == "milter":
        # Sendmail alone relays all of these (test_sendmail_instance): relaypolicy refused.
        assert by_relaypolicy >= len(probes) // 2, by_relaypolicy


def test_pop_before_smtp_login_relays_until_it_expires(stack: Stack) -> None:
    """A login recorded through the control socket lets the stranger relay where the
    milter is the gate, until its ttl runs out. Where Sendmail's own check runs first, it
    refuses the stranger before relaypolicy is asked: POP-before-SMTP cannot open it
    (docs/milter.md)."""
    milter = stack.milter
    refused = refused_by_relaypolicy if stack.gate == "milter" else refused_by_sendmail
    before = stack.ask(OUTSIDER, "user@aho.jp")
    assert refused(before), (before, stack.why())
    try:
        added = milter.ctl("add", OUTSIDER, "--ttl", "5", "--user", "taro")
        assert added["ok"] is True, added
        answer = stack.ask(OUTSIDER, "user@aho.jp")
        if stack.gate == "sendmail":
            assert refused_by_sendmail(answer), (answer, stack.why())
            return
        assert answer[:2] == ("RCPT", 250), (answer, stack.why())
        # real-time: a real process on a real clock; wait out the 5 s allowance (bounded).
        deadline = time.monotonic() + 30
        while answer.code == 250 and time.monotonic() < deadline:
            time.sleep(0.5)
            answer = stack.ask(OUTSIDER, "user@aho.jp")
        assert refused_by_relaypolicy(answer), (answer, stack.why())
        # The push feed, then an administrator withdrawing the address: both at once.
        assert milter.ctl("record", OUTSIDER, "--user", "taro")["ok"] is True
        assert stack.ask(OUTSIDER, "user@aho.jp")[:2] == ("RCPT", 250)
        assert milter.ctl("remove", OUTSIDER)["removed"] is True
        assert refused_by_relaypolicy(stack.ask(OUTSIDER, "user@aho.jp"))
    finally:
        milter.ctl("remove", OUTSIDER)


def test_smtp_auth_lets_the_stranger_relay(stack: Stack) -> None:
    """Sendmail authenticates (Cyrus SASL), passes ``{auth_authen}`` at MAIL FROM, and
    relaypolicy's ``sasl_permit`` relays; with ``gate="sendmail"`` Sendmail's own check
    lets the login through first (``TRUST_AUTH_MECH``) and relaypolicy agrees."""
    answer = stack.ask(OUTSIDER, "authenticated@aho.jp", login=("taro", "secret"))
    assert answer[:2] == ("RCPT", 250), (answer, stack.why())
    decision = (
        "recipient=<authenticated@aho.jp> verdict=ACCEPT policy=sasl_permit "
        "reason=sasl-authenticated"
    )
    assert decision in stack.milter.log.read_text(), stack.why()
    wrong = stack.ask(OUTSIDER, "user@aho.jp", login=("taro", "wrong"))
    assert wrong[:2] == ("AUTH", 535), wrong


def test_audit_from_the_stranger_finds_no_open_relay(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    sendmail = stack.sendmail
    report = audit_json(sendmail.host, sendmail.port, OUTSIDER, capsys)
    assert report["status"] == 0, report["summary"]
    assert report["summary"].startswith("not an open relay"), report["summary"]


def test_swaks_quit_after_rcpt(stack: Stack) -> None:
    """The same answers through swaks, as an administrator would check by hand."""
    swaks = require_binary("swaks")

    def swaks_to(recipient: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                swaks,
                "--server",
                f"{stack.sendmail.host}:{stack.sendmail.port}",
                "--local-interface",
                OUTSIDER,
                "--from",
                "sender@aho.jp",
                "--to",
                recipient,
                "--quit-after",
                "RCPT",
                "--timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    local = swaks_to("user@local.test")
    assert local.returncode == 0, local.stdout
    foreign = swaks_to("user@aho.jp")
    assert foreign.returncode == 24, foreign.stdout  # swaks: no recipient accepted
    assert "<** 5" in foreign.stdout, foreign.stdout


# --- relaypolicy down: Sendmail tempfails (F=T), it never accepts ------------------------


@pytest.mark.parametrize("gate", GATES)
def test_relaypolicy_stopped_means_temporary_failure(gate: Gate, tmp_path: Path) -> None:
    with sendmail_stack(gate, tmp_path) as stack:
        assert stack.ask(TRUSTED, "user@aho.jp")[:2] == ("RCPT", 250), stack.why()
        assert stack.milter.stop() == 0  # SIGTERM: a clean exit
        for client in (TRUSTED, OUTSIDER):
            for recipient in ("user@local.test", "user@aho.jp"):
                answer = stack.ask(client, recipient)
                assert answer == ("MAIL", *TEMPFAIL), (client, recipient, answer, stack.why())


@pytest.mark.parametrize("gate", GATES)
def test_relaypolicy_stopped_mid_session_means_temporary_failure(
    gate: Gate, tmp_path: Path
) -> None:
    """The milter connection was open (CONNECT, HELO and MAIL went through) when
    relaypolicy stopped: the RCPT after it is 4xx, for the trusted client too."""
    with sendmail_stack(gate, tmp_path) as stack:
        sendmail = stack.sendmail
        with smtplib.SMTP(sendmail.host, sendmail.port, timeout=30) as smtp:
            smtp.ehlo("client.relaypolicy.test")
            assert smtp.docmd("MAIL", "FROM:<sender@aho.jp>")[0] == 250
            assert smtp.docmd("RCPT", "TO:<first@aho.jp>")[0] == 250
            assert stack.milter.stop() == 0
            code, text = smtp.docmd("RCPT", "TO:<second@aho.jp>")
        assert (code, text.decode()) == TEMPFAIL, (code, text, stack.why())


@pytest.mark.parametrize("gate", GATES)
def test_relaypolicy_hung_means_temporary_failure(gate: Gate, tmp_path: Path) -> None:
    """relaypolicy stops answering (SIGSTOP) in the middle of a session: Sendmail waits
    the filter's read timeout (``T=...R:5s``) and answers the RCPT with a 4xx."""
    with sendmail_stack(gate, tmp_path) as stack:
        sendmail, process = stack.sendmail, stack.milter.process
        with smtplib.SMTP(sendmail.host, sendmail.port, timeout=60) as smtp:
            smtp.ehlo("client.relaypolicy.test")
            assert smtp.docmd("MAIL", "FROM:<sender@aho.jp>")[0] == 250
            process.send_signal(signal.SIGSTOP)
            try:
                code, text = smtp.docmd("RCPT", "TO:<user@local.test>")  # real-time: R:5s
            finally:
                process.send_signal(signal.SIGCONT)
        assert (code, text.decode()) == TEMPFAIL, (code, text, stack.why())


# --- the chain must decide where the milter is the only gate ------------------------------

PERMIT_ONLY = CONFIG.replace(
    'steps = ["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]',
    'steps = ["trusted_networks", "sasl_permit", "pop_before_smtp"]\notherwise = "next"',
)


@pytest.mark.parametrize("gate", GATES)
def test_no_opinion_is_continue_so_the_permit_only_chain_needs_sendmails_own_check(
    gate: Gate, tmp_path: Path
) -> None:
    """NEXT ("no opinion", ``[chain] otherwise = "next"``) is the milter's continue: the
    MTA's own rules decide. After Sendmail's own check that is a refusal for a stranger;
    with promiscuous_relay there is no rule left and Sendmail relays: docs/milter.md says
    never to pair the two."""
    assert PERMIT_ONLY != CONFIG
    with sendmail_stack(gate, tmp_path, PERMIT_ONLY) as stack:
        local = stack.ask(OUTSIDER, "next@local.test")
        assert local[:2] == ("RCPT", 250), (local, stack.why())
        foreign = stack.ask(OUTSIDER, "next@aho.jp")
        if gate == "sendmail":
            # Refused by Sendmail before relaypolicy was asked.
            assert refused_by_sendmail(foreign), (foreign, stack.why())
        else:
            assert foreign[:2] == ("RCPT", 250), (foreign, stack.why())  # an open relay
        log = stack.milter.log.read_text()
        assert "recipient=<next@local.test> verdict=NEXT" in log, stack.why()
        assert ("recipient=<next@aho.jp> verdict=NEXT" in log) == (gate == "milter"), log


# --- the other socket forms of docs/milter.md ----------------------------------------------


def start_milter_listening(directory: Path, listen: str) -> Service:
    """``relaypolicy milter --listen LISTEN`` (``milter_process`` binds 127.0.0.1 only);
    ready when it says it is listening."""
    control = directory / "control.sock"
    config = directory / "relaypolicy.toml"
    config.write_text(CONFIG + f'\n[milter]\ncontrol_socket = "{control}"\n')
    log = directory / "milter.log"
    command = [sys.executable, "-m", "relaypolicy", "milter", "--config", str(config)]
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [*command, "--listen", listen], stdout=stream, stderr=subprocess.STDOUT
        )
    service = Service(process, 0, control, log, config)
    try:
        service.wait_for_log(r"relaypolicy milter listening on", timeout=20)
    except AssertionError:
        service.stop()
        raise
    return service


@contextlib.contextmanager
def socket_directory() -> Iterator[Path]:
    """A directory for the filter's unix socket in /run. Sendmail refuses a socket below a
    world-writable directory ("unsafe: World writable directory", for /tmp), so the test
    does what docs/milter.md advises rather than relax the check (``TrustStickyBit``)."""
    run = Path("/run")
    if not run.is_dir() or run.stat().st_mode & 0o002:
        pytest.skip("no /run directory that is not world-writable")
    directory = Path(tempfile.mkdtemp(prefix="relaypolicy-milter-", dir=run))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize(
    ("listen", "socket"),
    [
        ("unix:{dir}/milter.sock", "local:{dir}/milter.sock"),
        ("[::1]:{port}", "inet6:{port}@::1"),
    ],
    ids=["unix", "ipv6"],
)
def test_unix_and_ipv6_filter_sockets(listen: str, socket: str, tmp_path: Path) -> None:
    require_loopback_address(OUTSIDER)
    if "::1" in listen:
        require_loopback_address("::1")
    port = free_port("::1") if "::1" in listen else 0
    with socket_directory() as run_dir:
        milter = start_milter_listening(tmp_path, listen.format(dir=run_dir, port=port))
        try:
            config = SendmailConfig(gate="milter", milter=socket.format(dir=run_dir, port=port))
            with running_sendmail(config) as sendmail:
                stack = Stack("milter", sendmail, milter)
                assert stack.ask(TRUSTED, "user@aho.jp")[:2] == ("RCPT", 250), stack.why()
                assert refused_by_relaypolicy(stack.ask(OUTSIDER, "user@aho.jp")), stack.why()
        finally:
            assert milter.stop() == 0


# --- TLS facts: {tls_version} after STARTTLS ------------------------------------------------


@pytest.mark.parametrize("gate", GATES)
def test_auth_is_taken_only_over_tls_when_the_policy_says_so(gate: Gate, tmp_path: Path) -> None:
    """``[smtp_auth] require_tls``: the same login is refused without TLS (relaypolicy's
    ``530 5.7.0``) and relays after STARTTLS, so Sendmail sent ``{tls_version}`` with the
    EHLO that followed STARTTLS."""
    config = CONFIG + "\n[smtp_auth]\nrequire_tls = true\n"
    require_loopback_address(OUTSIDER)
    with contextlib.ExitStack() as cleanup:
        milter = start_milter(tmp_path, config)
        cleanup.callback(milter.stop)
        tls_config = dataclasses.replace(sendmail_config(gate, milter.port), tls=True)
        sendmail = cleanup.enter_context(running_sendmail(tls_config))
        stack = Stack(gate, sendmail, milter)
        login = ("taro", "secret")
        clear = ask(sendmail, OUTSIDER, "clear@aho.jp", login=login)
        assert clear[:2] == ("RCPT", 530), (clear, stack.why())
        assert clear.text.startswith("5.7.0"), clear
        tls = ask(sendmail, OUTSIDER, "tls@aho.jp", login=login, starttls=True)
        assert tls[:2] == ("RCPT", 250), (tls, stack.why())
        log = milter.log.read_text()
        assert "recipient=<tls@aho.jp> verdict=ACCEPT policy=sasl_permit" in log, log


# --- which macros arrive: Sendmail's lists, relaypolicy's request, daemon_ports -------------


@pytest.mark.parametrize(
    ("milter_macros", "milter_extra", "port_known"),
    [
        (True, "", True),  # our lists and relaypolicy's request
        (False, "", True),  # Sendmail's default lists: relaypolicy's request brings it
        (True, "request_macros = false", True),  # our lists alone
        (False, "request_macros = false", False),  # neither: no server port
        (False, "request_macros = false\ndaemon_ports = {{ MTA = {port} }}", True),
    ],
    ids=["lists+request", "request", "lists", "neither", "daemon_ports"],
)
def test_the_server_port_reaches_relaypolicy(
    milter_macros: bool, milter_extra: str, port_known: bool, tmp_path: Path
) -> None:
    """``[chain.ports]`` gives Sendmail's port a chain without ``trusted_networks``: the
    trusted client's foreign recipient is refused exactly when relaypolicy learnt the
    server port. Sendmail 8.17 offers ``SMFIF_SETSYMLIST``, so relaypolicy's macro
    request brings ``{daemon_port}`` even where Sendmail's own lists lack it."""
    port = free_port()
    config = CONFIG + f'\n[chain.ports]\n{port} = ["local_domains"]\n'
    milter = start_milter(tmp_path, config, extra=milter_extra.format(port=port))
    try:
        settings = dataclasses.replace(
            sendmail_config("milter", milter.port), milter_macros=milter_macros
        )
        with running_sendmail(settings, port=port) as sendmail:
            stack = Stack("milter", sendmail, milter)
            answer = stack.ask(TRUSTED, "user@aho.jp")
            if port_known:
                assert refused_by_relaypolicy(answer), (answer, stack.why())
            else:
                assert answer[:2] == ("RCPT", 250), (answer, stack.why())
    finally:
        assert milter.stop() == 0


# --- the Postfix differential corpus through Sendmail ----------------------------------------


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


DIFFERENTIAL_CONFIG = f"""\
[domains]
local = {_toml_list(differential.MYDESTINATION)}
relay = {_toml_list(differential.RELAY_DOMAINS)}

[networks]
trusted = {_toml_list(differential.MYNETWORKS)}

[chain]
steps = ["trusted_networks", "local_domains"]

[log]
level = "warning"
"""

# relaypolicy would accept, Sendmail refuses first (its own reply): recipient -> why.
SENDMAIL_STRICTER: dict[str, str] = {
    "@:user@local.test": "553 5.1.3 Invalid route address (an empty source route)",
    '""@local.test': "553 5.1.3 User address required (an empty quoted local part)",
    '"a\\"b"@local.test': "550 5.1.1 User unknown (a backslash: Sendmail looks the user up)",
}


def relaypolicys_reply(answer: Answer) -> bool:
    """A reply in relaypolicy's words (Sendmail's own carry ``<rcpt>... ``)."""
    return answer.stage == "RCPT" and (
        "Relay access denied" in answer.text or answer.text == "5.1.3 Bad recipient address syntax"
    )


def test_the_postfix_differential_corpus_through_sendmail(tmp_path: Path) -> None:
    """Every recipient of tests/test_postfix_differential.py from the untrusted client,
    relaypolicy the only gate: Sendmail never accepts what relaypolicy refuses on the
    client's text (``decide``, in process); where relaypolicy answers, its code is the
    in-process one; Sendmail refuses first only the ASCII cases of
    :data:`SENDMAIL_STRICTER`, and a non-ASCII address (sent as UTF-8 without SMTPUTF8,
    which Sendmail does not offer) with its "8-bit character in mailbox address"."""
    require_loopback_address(OUTSIDER)
    local = [domain for domain in differential.MYDESTINATION if domain.isascii()]
    with contextlib.ExitStack() as cleanup:
        milter = start_milter(tmp_path, DIFFERENTIAL_CONFIG)
        cleanup.callback(milter.stop)
        config = dataclasses.replace(
            sendmail_config("milter", milter.port), local_domains=local, sasl_users={}
        )
        sendmail = cleanup.enter_context(running_sendmail(config))
        answers = [
            (
                case,
                differential.decide(case),
                ask(sendmail, OUTSIDER, case.recipient, sender=case.sender),
            )
            for case in differential.ALL_CASES
        ]
    assert len(answers) > 150
    relayed = [(c.recipient, str(a)) for c, d, a in answers if a.code < 300 and d.code >= 300]
    assert relayed == []
    differ = [
        (c.recipient, d.code, str(a))
        for c, d, a in answers
        if relaypolicys_reply(a) and a.code != d.code
    ]
    assert differ == []
    stricter = {
        c.recipient: a
        for c, d, a in answers
        if d.verdict is Verdict.ACCEPT and a.code >= 300 and c.recipient.isascii()
    }
    assert set(stricter) == set(SENDMAIL_STRICTER), stricter
    assert not any(relaypolicys_reply(answer) for answer in stricter.values()), stricter
    eight_bit = [(c.recipient, a) for c, _, a in answers if not c.recipient.isascii()]
    assert len(eight_bit) > 10
    for recipient, answer in eight_bit:
        if answer.code >= 300:
            assert relaypolicys_reply(answer) or "8-bit character" in answer.text, (
                recipient,
                answer,
            )
    # Some pass Sendmail's 8-bit check and reach relaypolicy, which decides as in process.
    assert any(relaypolicys_reply(answer) for _, answer in eight_bit)
