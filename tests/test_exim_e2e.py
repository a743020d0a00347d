"""End to end: a real Exim 4 asks a running ``relaypolicy exim`` at ``acl_smtp_rcpt``.

The ACL is ``contrib/exim/relaypolicy-rcpt.acl`` as shipped (see ``exim_instance``). Two
ways in: Exim's host-checking mode (``exim -bh IP``: the real ACLs of a real Exim, SMTP on
stdin) carries the big matrix -- the recipient corpus of the Postfix differential test,
asked of Exim+relaypolicy from the untrusted 127.0.0.10 and compared with relaypolicy in
process -- and the hostile user names; the listening daemon, over TCP, carries trusted and
untrusted clients, a POP-before-SMTP login recorded and then expiring, relaypolicy
stopped or silent (Exim defers), and ``relaypolicy audit --smtp`` from 127.0.0.10.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from exim_instance import EximInstance, debian_config, exim_instance, start_relaypolicy_exim
from postfix_instance import RcptSession, Reply
from realservers import require_loopback_address, wait_until
from serve_process import Service
from test_postfix_differential import (
    ALL_CASES,
    LONG_LABEL,
    MYDESTINATION,
    RELAY_DOMAINS,
    TRUSTED,
    UNTRUSTED,
    Case,
    decide,
)

from relaypolicy.exim.codec import MAX_TEXT
from relaypolicy.model import Decision, Verdict
from relaypolicy.text import reply_safe


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


POLICY_TOML = f"""
[domains]
local = {_toml_list(MYDESTINATION)}
relay = {_toml_list(RELAY_DOMAINS)}

[networks]
trusted = ["{TRUSTED}/32"]

[pop_before_smtp]
ttl = {{ttl}}

[chain]
steps = {{steps}}
"""
FULL_CHAIN = '["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]'
NO_AUTH_CHAIN = '["trusted_networks", "local_domains"]'

# Recipients Exim refuses itself, with its own 501, before the RCPT ACL runs (RFC 5321
# path syntax it does not take: quoted or domainless local parts, source routes with junk,
# two @, a trailing dot, brackets, unqualified addresses): relaypolicy is never asked.
# Exim is stricter here, never looser: no more, no fewer.
EXIM_REFUSES_FIRST: set[str] = {
    "",
    '"postmaster"',
    '"relaytest%nmap.scanme.org"',
    '"relaytest@nmap.scanme.org"',
    '"unterminated@local.test',
    '"us"er@local.test',
    '"user"@aho.jp@local.test',
    '"user%aho.jp"',
    '"user@local.test"',
    "-user",
    "<-user@local.test>",
    "<<user@aho.jp>>",
    "<<user@local.test>>",
    "<@aho.jp:<user@local.test>>",
    "<postmaster>",
    "<user@local.test",
    "<user@local.test>",
    "@",
    '@"a":user@local.test',
    '@"a:b":user@local.test',
    "@:user@local.test",
    "@a b:user@local.test",
    '@a,@"b":user@local.test',
    "@a,b:user@aho.jp",
    "@a,b:user@local.test",
    "@a:<@b:<user@local.test>>",
    "@a:<@b:user@local.test>",
    "@a:b:user@local.test",
    "@aho.jp",
    '@aho.jp:"postmaster"',
    '@aho.jp:"user@local.test"',
    "@aho.jp:<user@aho.jp>",
    "@aho.jp:<user@local.test>",
    "@aho.jp:postmaster",
    "@aho.jp:user",
    "@local.test",
    "@local.test:",
    "abuse",
    "aho.jp!user",
    "local.test!user",
    "nmap.scanme.org!relaytest",
    "p\\ostmaster",
    'post"master"',
    "postmaster.",
    "relaytest@nmap.scanme.org@[127.0.0.1]",
    "relaytest@nmap.scanme.org@local.test",
    'us"er"@local.test',
    "user",
    "user%aho.jp",
    "user%local.test",
    "user@",
    'user@"local.test"',
    "user@-local.test",
    "user@.local.test",
    "user@@local.test",
    "user@Local.Test.",
    "user@RELAY.TEST.",
    "user@[local.test]",
    "user@[x-tag:whatever]",
    f"user@{LONG_LABEL}.{LONG_LABEL}.{LONG_LABEL}.{LONG_LABEL}.relay.test",
    "user@aho.jp@local.test",
    "user@aho.jp@relay.test",
    "user@local..test",
    "user@local.test ",
    "user@local.test,user@aho.jp",
    "user@local.test..",
    "user@local.test;",
    "user@local.test>",
    "user@local.test@local.test",
    "user@local_test.example",
    "user@local_test.relay.test",
    "user@other-local.test%local.test",
    "user@other-local.test@local.test",
    "user@例え.JP.",
}


def policy(*, ttl: float = 1800, steps: str = FULL_CHAIN) -> str:
    return POLICY_TOML.format(ttl=ttl, steps=steps)


def expected_reply(decision: Decision) -> Reply:
    """What Exim says for relaypolicy's refusal: our code, status and (made safe) text."""
    return Reply(decision.code, f"{decision.status} {reply_safe(decision.text, MAX_TEXT)}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = start_relaypolicy_exim(tmp_path_factory.mktemp("exim-front"), policy())
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture(scope="module")
def exim(service: Service) -> Iterator[EximInstance]:
    with exim_instance(service.port) as instance:
        yield instance


def envelope(cases: list[Case]) -> list[str]:
    commands = ["EHLO client.relaypolicy.test"]
    for case in cases:
        utf8 = " SMTPUTF8" if not (case.recipient + case.sender).isascii() else ""
        commands += [f"MAIL FROM:<{case.sender}>{utf8}", f"RCPT TO:<{case.recipient}>", "RSET"]
    return commands


def rcpt_replies(exim: EximInstance, client: str, cases: list[Case]) -> list[Reply]:
    """Exim's reply to each case's RCPT in one ``-bh`` session from ``client``."""
    replies = exim.bh(client, envelope(cases))
    assert replies[0].code == 220 and replies[1].code == 250, replies[:2]
    mails = replies[2::3]
    assert all(reply.code == 250 for reply in mails), [
        (case, reply) for case, reply in zip(cases, mails, strict=True) if reply.code != 250
    ]
    return replies[3::3]


# --- host-checking mode: the big matrix ---------------------------------------------------


def test_the_differential_corpus_gets_relaypolicys_in_process_verdicts(
    exim: EximInstance, service: Service
) -> None:
    before = int(service.ctl("stats")["stats"]["requests"])  # type: ignore[index]
    replies = rcpt_replies(exim, UNTRUSTED, ALL_CASES)
    asked = 0
    mismatches = []
    exim_first = set()
    for case, reply in zip(ALL_CASES, replies, strict=True):
        decision = decide(case)
        accepted = 200 <= reply.code < 300
        if accepted != (decision.verdict is Verdict.ACCEPT):
            if not accepted and reply.code == 501 and decision.verdict is Verdict.ACCEPT:
                exim_first.add(case.recipient)
                continue
            mismatches.append((case, reply, decision))
            continue
        if accepted or reply == expected_reply(decision):
            asked += 1
        elif reply.code == 501:  # Exim's own syntax refusal: relaypolicy not asked
            exim_first.add(case.recipient)
        else:
            mismatches.append((case, reply, decision))
    assert not mismatches, "\n".join(f"{c} Exim: {r} in process: {d}" for c, r, d in mismatches)
    assert not [r for r in replies if 400 <= r.code < 500], "a deferral: relaypolicy not answering?"
    # Every case Exim did not refuse itself went to relaypolicy, once.
    after = int(service.ctl("stats")["stats"]["requests"])  # type: ignore[index]
    assert after - before == asked
    assert asked >= len(ALL_CASES) // 2
    # The routing tricks reach relaypolicy as sent and are refused as relaying.
    for trick in ("user%aho.jp@local.test", '"user@aho.jp"@local.test', "aho.jp!user@local.test"):
        assert trick not in exim_first
    assert exim_first == EXIM_REFUSES_FIRST


ROUTING_TRICKS = [
    "user%aho.jp@local.test",
    '"user@aho.jp"@local.test',
    "aho.jp!user@local.test",
    '"user%aho.jp"@local.test',
    "@local.test:user@aho.jp",
]


@pytest.mark.parametrize(("client", "relays"), [(TRUSTED, True), (UNTRUSTED, False)])
def test_trusted_and_untrusted_clients_in_host_checking_mode(
    exim: EximInstance, client: str, relays: bool
) -> None:
    cases = [Case("user@local.test"), Case("user@aho.jp"), *map(Case, ROUTING_TRICKS)]
    replies = rcpt_replies(exim, client, cases)
    assert replies[0].code == 250  # local: always
    for case, reply in zip(cases[1:], replies[1:], strict=True):
        if relays:
            assert reply.code == 250, (case, reply)
        else:
            assert reply == expected_reply(decide(case, client)), (case, reply)
            assert reply.code == 554


@pytest.mark.parametrize("kind", ["unsplit", "split"])
def test_the_recipe_in_debians_own_configuration(exim: EximInstance, kind: str) -> None:
    """docs/exim.md's Debian recipe, applied to Debian's exim4-config as shipped (the
    template, and conf.d concatenated as update-exim4.conf does): relaypolicy decides."""
    debian = exim.with_config(debian_config(exim, kind))
    cases = [Case("user@local.test"), Case("user@aho.jp"), *map(Case, ROUTING_TRICKS)]
    untrusted = rcpt_replies(debian, UNTRUSTED, cases)
    assert untrusted[0].code == 250
    for case, reply in zip(cases[1:], untrusted[1:], strict=True):
        assert reply == expected_reply(decide(case)), (case, reply)
    trusted = rcpt_replies(debian, TRUSTED, cases[:2])
    assert [reply.code for reply in trusted] == [250, 250]


def test_no_opinion_lets_the_rest_of_the_acl_decide(tmp_path: Path) -> None:
    """``next`` (a chain ending in ``otherwise = "next"``) falls through to the statements
    after the recipe: the test configuration's own final deny."""
    front = start_relaypolicy_exim(
        tmp_path, policy(steps='["trusted_networks"]') + 'otherwise = "next"\n'
    )
    try:
        with exim_instance(front.port) as exim:
            untrusted = rcpt_replies(exim, UNTRUSTED, [Case("user@local.test")])
            trusted = rcpt_replies(exim, TRUSTED, [Case("user@aho.jp")])
        assert untrusted == [Reply(550, "5.7.1 relaypolicy had no opinion (test configuration)")], (
            untrusted
        )
        assert trusted[0].code == 250
    finally:
        assert front.stop() == 0


def auth_plain(user: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0secret".encode()).decode()


def authenticated_envelope(user: str) -> list[str]:
    return ["EHLO client.test", auth_plain(user), "MAIL FROM:<a@aho.jp>", "RCPT TO:<b@aho.jp>"]


HOSTILE_USERS = [
    "alice\nclient_address=127.0.0.1",
    "v1 client_address=MTI3LjAuMC4x rcpt=PGE+",
    "a=b=c",
    "{${run{/bin/false}}}",
    "back\\slash\\",
    "x\rsasl_username=",
]


@pytest.mark.parametrize("user", HOSTILE_USERS)
def test_a_hostile_user_name_cannot_inject_a_field(tmp_path: Path, user: str) -> None:
    """Without sasl_permit in the chain, an AUTH'd user whose name carries another field
    ("client_address" of the trusted network) must still be refused relaying: the name
    stays a name."""
    front = start_relaypolicy_exim(tmp_path, policy(steps=NO_AUTH_CHAIN))
    try:
        with exim_instance(front.port) as exim:
            replies = exim.bh(
                UNTRUSTED,
                [
                    "EHLO client.test",
                    auth_plain(user),
                    "MAIL FROM:<a@aho.jp>",
                    "RCPT TO:<b@aho.jp>",
                ],
            )
        assert replies[2].code == 235, replies  # Exim took the name
        assert replies[4].code == 554, replies
        front.wait_for_log(r"client=127\.0\.0\.10 .*recipient=<b@aho\.jp> verdict=REJECT")
    finally:
        assert front.stop() == 0


@pytest.mark.parametrize("user", HOSTILE_USERS)
def test_a_hostile_user_name_still_authenticates(exim: EximInstance, user: str) -> None:
    """With sasl_permit, the same names arrive as a (non-empty) login: relaying allowed."""
    replies = exim.bh(UNTRUSTED, authenticated_envelope(user))
    assert replies[2].code == 235 and replies[4].code == 250, replies


def test_a_hostile_recipient_is_sent_whole(exim: EximInstance) -> None:
    cases = [
        Case('"a\\\\b{}${x}=y"@local.test'),
        Case('"a\\\\b{}${x}=y"@aho.jp'),
        Case('"x\\"y=z"@aho.jp'),
    ]
    replies = rcpt_replies(exim, UNTRUSTED, cases)
    for case, reply in zip(cases, replies, strict=True):
        decision = decide(case)
        if decision.verdict is Verdict.ACCEPT:
            assert reply.code == 250, (case, reply)
        else:
            assert reply == expected_reply(decision), (case, reply)


# --- the listening daemon over TCP ----------------------------------------------------------


@pytest.fixture
def untrusted() -> str:
    require_loopback_address(UNTRUSTED)
    return UNTRUSTED


def test_the_daemon_over_tcp_trusted_and_untrusted(exim: EximInstance, untrusted: str) -> None:
    with exim.daemon():
        with RcptSession("127.0.0.1", exim.port, TRUSTED) as session:
            assert session.ask("user@aho.jp").code == 250
            assert session.ask("user@local.test").code == 250
        with RcptSession("127.0.0.1", exim.port, untrusted) as session:
            assert session.ask("user@local.test").code == 250
            for trick in ["user@aho.jp", *ROUTING_TRICKS]:
                reply = session.ask(trick)
                assert reply == expected_reply(decide(Case(trick))), (trick, reply)


def test_a_pop_login_lets_the_client_relay_until_it_expires(tmp_path: Path, untrusted: str) -> None:
    front = start_relaypolicy_exim(tmp_path, policy(ttl=2))
    try:
        with exim_instance(front.port) as exim, exim.daemon():
            with RcptSession("127.0.0.1", exim.port, untrusted) as session:
                assert session.ask("user@aho.jp").code == 554
            assert front.ctl("add", untrusted)["ok"] is True
            with RcptSession("127.0.0.1", exim.port, untrusted) as session:
                assert session.ask("user@aho.jp").code == 250

            # real-time: the login's ttl is 2 s; wait (bounded) until it has expired.
            def refused() -> bool:
                with RcptSession("127.0.0.1", exim.port, untrusted) as session:
                    return session.ask("user@aho.jp").code == 554

            wait_until(refused, "the POP-before-SMTP login to expire", timeout=30)
    finally:
        assert front.stop() == 0


def test_relaypolicy_stopped_means_exim_defers(tmp_path: Path, untrusted: str) -> None:
    front = start_relaypolicy_exim(tmp_path, policy())
    with exim_instance(front.port) as exim, exim.daemon():
        with RcptSession("127.0.0.1", exim.port, untrusted) as session:
            assert session.ask("user@local.test").code == 250
        assert front.stop() == 0
        with RcptSession("127.0.0.1", exim.port, untrusted) as session:
            for recipient in ("user@local.test", "user@aho.jp"):
                assert session.ask(recipient) == Reply(451, "4.3.0 relaypolicy did not answer")
        with RcptSession("127.0.0.1", exim.port, TRUSTED) as session:
            assert session.ask("user@aho.jp").code == 451


class _Silent:
    """A listener that accepts and reads but never answers (a hung relaypolicy), or
    answers ``garbage``."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)
            if self.answer is not None:
                connection.recv(65536)
                connection.sendall(self.answer)
                connection.close()

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.mark.parametrize(
    "answer",
    [None, b"", b"accept", b"accepted\n", b"ACCEPT\n", b"accept\nx", b"deny 250 2.0.0 ok\n",
     b"defer 250 2.0.0 ok\n", b"deny 554 5.7.1 x\naccept\n", b"\n"],
    ids=["silent", "closed", "no-newline", "accepted", "upper", "trailing", "deny-2xx",
         "defer-2xx", "two-lines", "empty-line"],
)  # fmt: skip
def test_anything_but_a_well_formed_answer_is_a_deferral(answer: bytes | None) -> None:
    """A silent relaypolicy (past the ACL's timeout) and answers that are not one of the
    four forms: Exim defers, from the trusted network too."""
    silent = _Silent(answer)
    try:
        with exim_instance(silent.port, timeout="2s") as exim:
            replies = rcpt_replies(exim, TRUSTED, [Case("user@aho.jp")])
        assert replies[0].code == 451, replies
    finally:
        silent.close()


def test_tls_and_a_client_certificate_reach_relaypolicy(tmp_path: Path, untrusted: str) -> None:
    """STARTTLS with a client certificate: Exim sends $tls_in_ver, $tls_in_cipher,
    $tls_in_peerdn and the certificate's SHA-256; a chain of client_certificate then
    local_domains lets the listed certificate relay and nobody else."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("mx.exim.test", "127.0.0.1")
    client = ca.issue_cert("client@relaypolicy.test", common_name="relaypolicy test client")
    other = ca.issue_cert("other@relaypolicy.test")
    # Exim's children run as Debian-exim: the files go where it can read them.
    files = Path(tempfile.mkdtemp(prefix="relaypolicy-exim-tls-"))
    os.chmod(files, 0o755)  # noqa: S103
    server.cert_chain_pems[0].write_to_path(files / "server.pem")
    server.private_key_pem.write_to_path(files / "server.key")
    ca.cert_pem.write_to_path(files / "ca.pem")
    for name in ("server.pem", "server.key", "ca.pem"):
        os.chmod(files / name, 0o644)
    der = ssl.PEM_cert_to_DER_cert(client.cert_chain_pems[0].bytes().decode())
    fingerprint = hashlib.sha256(der).hexdigest()
    front = start_relaypolicy_exim(
        tmp_path,
        policy(steps='["client_certificate", "local_domains"]')
        + f'\n[client_certificates]\nfingerprints = ["{fingerprint}"]\n',
    )
    tls = (
        f"tls_advertise_hosts = *\ntls_certificate = {files}/server.pem\n"
        f"tls_privatekey = {files}/server.key\ntls_verify_certificates = {files}/ca.pem\n"
        "tls_try_verify_hosts = *\n"
    )

    def ask(port: int, leaf: object | None) -> int:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        if leaf is not None:
            leaf.configure_cert(context)  # type: ignore[attr-defined]
        with smtplib.SMTP("127.0.0.1", port, source_address=(untrusted, 0)) as smtp:
            smtp.ehlo("client.relaypolicy.test")
            smtp.starttls(context=context)
            smtp.ehlo("client.relaypolicy.test")
            smtp.mail("a@aho.jp")
            code, _ = smtp.rcpt("b@aho.jp")
            return code

    try:
        with exim_instance(front.port, extra=tls) as instance, instance.daemon():
            assert ask(instance.port, client) == 250
            assert ask(instance.port, other) == 554
            assert ask(instance.port, None) == 554
        assert front.wait_for_log(r"verdict=ACCEPT policy=client_certificate")
    finally:
        shutil.rmtree(files, ignore_errors=True)
        assert front.stop() == 0


def test_audit_from_the_untrusted_address_finds_no_open_relay(
    exim: EximInstance, untrusted: str
) -> None:
    with exim.daemon():
        done = subprocess.run(
            [
                sys.executable, "-m", "relaypolicy", "audit",
                "--smtp", f"127.0.0.1:{exim.port}",
                "--source-address", untrusted,
                "--local-domain", "local.test",
                "--relay-domain", "relay.test",
                "--server-ip", "127.0.0.1",
            ],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not an open relay" in done.stdout
