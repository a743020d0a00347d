"""End to end: import five real Postfix configurations, compare, serve, compare again.

For each pair under ``tests/postfix_configs`` a private Postfix runs that ``main.cf`` and
``master.cf`` (:class:`FixtureInstance`: the smtpd listeners moved to free loopback ports,
the queue and logs in a temporary directory, every transport ``discard``, no DNS, and the
local recipient table switched off, none of which is a relay decision). Then:

1. ``relaypolicy postfix import --config-directory`` on that instance's directory (the real
   ``postconf`` expands the defaults, ``$names`` and ``mynetworks_style``);
2. ``relaypolicy postfix compare`` against it, from 127.0.0.10 and from the trusted
   127.0.0.1, on port 25 and on the submission ports (587 with STARTTLS; 465 with implicit
   TLS, ``smtpd_tls_wrappermode = yes``, in ``submission-sasl``; unauthenticated and
   logged in through Dovecot SASL): no looser answer, and every stricter one listed, by
   the name of its question, in ``docs/postfix-differences.md``; ``relaypolicy audit
   --smtp`` finds no open relay on the implicit-TLS port;
3. ``relaypolicy serve`` with the imported file, and the same Postfix with
   ``check_policy_service`` as its only relay gate: compare again -- still no looser answer,
   and nothing stricter that was not stricter before.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dovecot_instance import running_dovecot
from postfix_instance import INTERNAL_SERVICES, PostfixConfig, PostfixInstance, running_postfix
from realservers import free_port, require_loopback_address, wait_for_port
from serve_process import start_service

from relaypolicy.cli import main
from relaypolicy.config import load_config
from relaypolicy.model import Decision, Verdict
from relaypolicy.testing.audit import AuditResult, TlsMode
from relaypolicy.testing.compare import Login, Row, classify, compare, recipient_corpus
from relaypolicy.testing.probes import Probe

CONFIGS = Path(__file__).resolve().parent / "postfix_configs"
FIXTURES = sorted(path.name for path in CONFIGS.iterdir() if path.is_dir())
DOC = Path(__file__).resolve().parent.parent / "docs" / "postfix-differences.md"
OUTSIDER = "127.0.0.10"
TRUSTED = "127.0.0.1"
USER, PASSWORD = "taro", "secret"
LISTS = ("client", "helo", "sender", "relay", "recipient")
IMPLICIT_TLS = ("submissions", "smtps")  # master.cf services with smtpd_tls_wrappermode

trustme = pytest.importorskip("trustme")  # the submission port's certificate

# Logged in as taro: his own sender relays anywhere; hanako's too (the map gives it to
# both); another's is refused by both (553, not owned).
OWNED = [
    Probe("owned-sender", "taro's own sender", "friend@nmap.scanme.org", "taro@example.org"),
    Probe("shared-sender", "a sender taro shares", "friend@nmap.scanme.org", "hanako@example.org"),
    Probe("other-sender", "a sender of the domain's owner", "friend@nmap.scanme.org",
          "jiro@example.org"),
]  # fmt: skip


@dataclass
class FixtureInstance(PostfixInstance):
    """A private Postfix running one of the realistic configurations."""

    fixture: Path = Path()
    harness: dict[str, str] = field(default_factory=dict)
    gate: str = ""  # when set: the only relay gate, every restriction list replaced
    ports: dict[str, int] = field(default_factory=dict)  # master.cf service -> port

    def main_cf(self) -> str:
        overrides = {
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "default_transport": "discard",
            "relay_transport": "discard",
            "local_transport": "discard",
            "virtual_transport": "discard",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "10000",
            "smtpd_hard_error_limit": "10000",
            "smtpd_junk_command_limit": "10000",
            "smtputf8_enable": "yes",
            # Every accepted RCPT opens a queue file that RSET throws away; without this,
            # cleanup's flow control waits 1 s per message once its tokens are spent.
            "in_flow_delay": "0s",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtp_tls_session_cache_database": "",
            **self.harness,
        }
        if self.gate:
            overrides["smtpd_relay_restrictions"] = self.gate
            overrides.update({f"smtpd_{name}_restrictions": "" for name in LISTS[:3] + LISTS[4:]})
        kept: list[str] = []
        dropped = False  # the fixture's own line for a parameter the harness sets
        for line in (self.fixture / "main.cf").read_text(encoding="utf-8").splitlines():
            if line[:1].isspace() and line.strip() and not line.lstrip().startswith("#"):
                if not dropped:
                    kept.append(line)
                continue
            name = line.split("=", 1)[0].strip()
            dropped = "=" in line and not line.startswith("#") and name in overrides
            if not dropped:
                kept.append(line)
        harness = "".join(f"{name} = {value}\n" for name, value in overrides.items())
        return "\n".join(kept) + f"\n\n# --- the test harness ---\n{harness}"

    def master_cf(self) -> str:
        entries: list[list[str]] = []
        for line in (self.fixture / "master.cf").read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and entries:
                entries[-1].append(line)
            else:
                entries.append([line])
        out = []
        for entry in entries:
            words = entry[0].split()
            if words[1] != "inet" or words[7] != "smtpd":
                continue
            if words[0] in self.ports:  # the same port as before (a restart)
                port = self.ports[words[0]]
            elif self.port not in self.ports.values():
                port = self.port
            else:
                port = free_port(self.host)
            self.ports[words[0]] = port
            words[0], words[4] = f"{self.host}:{port}", "n"
            options = entry[1:]
            if self.gate:  # the service's own lists give way to the gate
                options = [o for o in options if not re.search(r"smtpd_\w+_restrictions=", o)]
            out.append("  ".join(words) + "\n" + "".join(f"{o}\n" for o in options))
        tlsmgr = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
        return "".join(out) + INTERNAL_SERVICES + tlsmgr

    def write_config(self) -> None:
        super().write_config()
        for path in self.fixture.iterdir():
            if path.name not in ("main.cf", "master.cf"):
                (self.config_dir / path.name).write_bytes(path.read_bytes())

    def start(self) -> None:
        super().start()
        for port in self.ports.values():
            wait_for_port(self.host, port, timeout=30)


@dataclass
class Setup:
    name: str
    root: Path
    harness: dict[str, str]
    cafile: Path


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[Path, Path, Path]]:
    """A CA file, a certificate and a key for 127.0.0.1, where smtpd (the postfix user)
    can read them: pytest's own temporary directories are private to root."""
    directory = Path(tempfile.mkdtemp(prefix="relaypolicy-tls-"))
    directory.chmod(0o755)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cafile, cert, key = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(cafile))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    for path in (cafile, cert, key):
        path.chmod(0o644)
    yield cafile, cert, key
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def postfix_for(
    name: str, harness: dict[str, str], gate: str = "", ports: dict[str, int] | None = None
) -> Iterator[FixtureInstance]:
    make = functools.partial(
        FixtureInstance,
        fixture=CONFIGS / name,
        harness=harness,
        gate=gate,
        ports=dict(ports or {}),
    )
    with running_postfix(PostfixConfig(mydestination=()), make) as instance:
        assert isinstance(instance, FixtureInstance)
        yield instance


def run_import(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaypolicy", "postfix", "import", "--config-directory",
         str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def ask_everything(
    config_path: Path, instance: FixtureInstance, cafile: Path, *, sasl: bool
) -> list[Row]:
    """Every question, from both clients on port 25, and on the submission ports (over
    STARTTLS, or implicit TLS for ``submissions``) both without and with a login."""
    config = load_config(config_path)
    rows: list[Row] = []
    for service, port in instance.ports.items():
        if service == "smtp":
            rows += compare(config, instance.host, port, [OUTSIDER, TRUSTED])
            continue
        context = ssl.create_default_context(cafile=str(cafile))
        tls: TlsMode = "implicit" if service in IMPLICIT_TLS else "starttls"
        rows += compare(config, instance.host, port, [OUTSIDER, TRUSTED], tls=tls,
                        tls_context=context)  # fmt: skip
        if sasl:
            rows += compare(config, instance.host, port, [OUTSIDER], tls=tls,
                            tls_context=context, login=Login(USER, PASSWORD),
                            extra=OWNED)  # fmt: skip
    return rows


def doc_key(row: Row) -> str:
    """The name a difference is documented under: the question's name without the domain
    prefix of the battery (``example.org:nmap-06``) or the ``corpus:`` one."""
    parts = row.probe.name.split(":")
    return parts[1] if parts[0] == "corpus" else parts[-1]


def report(rows: list[Row], kind: str) -> str:
    return "\n".join(
        f"{r.client} {r.probe.name} <{r.probe.recipient}> from <{r.probe.sender}>: postfix "
        f"{r.postfix.reply!r} relaypolicy {str(r.decision)!r} [{r.decision.reason}]"
        for r in rows
        if r.kind == kind
    )


@pytest.mark.real
@pytest.mark.parametrize("name", FIXTURES)
def test_import_compare_serve_compare(
    name: str, tmp_path: Path, tls: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    require_loopback_address(OUTSIDER)
    cafile, cert, key = tls
    sasl = name == "submission-sasl"
    with contextlib.ExitStack() as stack:
        harness = {
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
        }
        if sasl:
            dovecot = stack.enter_context(running_dovecot(users={USER: PASSWORD}))
            harness["smtpd_sasl_path"] = str(dovecot.auth_socket)
        # 1. import from the running Postfix's own configuration directory.
        instance = stack.enter_context(postfix_for(name, harness))
        done = run_import(instance.config_dir)
        if name == "untranslatable":
            assert done.returncode == 1
            for what in ("regexp:", "from_partners", "= permit:", "cidr:"):
                assert what in done.stderr, done.stderr
            done = run_import(instance.config_dir, "--allow-partial")
        assert done.returncode == 0, done.stderr
        imported = tmp_path / "imported.toml"
        imported.write_text(done.stdout, encoding="utf-8")
        # 2. compare, through the command once (its exit status and JSON), then in full.
        smtp_port = instance.ports["smtp"]
        status = main(["postfix", "compare", "--config", str(imported), "--smtp",
                       f"{instance.host}:{smtp_port}", "--source-address", OUTSIDER])  # fmt: skip
        assert status == 0
        if name == "backup-mx":  # a widened file is caught: trusting the outsider too
            widened = tmp_path / "widened.toml"
            widened.write_text(done.stdout.replace('"127.0.0.1/32",', '"127.0.0.0/24",'))
            capsys.readouterr()
            status = main(["postfix", "compare", "--config", str(widened), "--smtp",
                           f"{instance.host}:{smtp_port}", "--source-address", OUTSIDER,
                           "--json"])  # fmt: skip
            answer = json.loads(capsys.readouterr().out)
            assert status == 1
            assert answer["looser"] > 0 and answer["summary"].startswith("relaypolicy is LOOSER")
            nmap02 = next(d for d in answer["differences"] if d["name"] == "nmap-02")
            assert nmap02["kind"] == "looser"
            assert nmap02["postfix_code"] == 554 and nmap02["relaypolicy_code"] == 250
        direct = ask_everything(imported, instance, cafile, sasl=sasl)
        assert not report(direct, "looser"), report(direct, "looser")
        stricter = {doc_key(r) for r in direct if r.kind == "stricter"}
        documented = DOC.read_text(encoding="utf-8")
        missing = sorted(key for key in stricter if f"`{key}`" not in documented)
        details = report([r for r in direct if doc_key(r) in missing], "stricter")
        assert not missing, f"stricter, not in {DOC.name}: {missing}\n{details}"
        if sasl:  # the implicit-TLS port through the commands: compare, then audit
            check_implicit_tls_commands(instance, imported, cafile, tmp_path, capsys)
        ports = {service: port for service, port in instance.ports.items() if service != "smtp"}
    # 3. the same Postfix (its submission port unchanged: the file's chain.ports name it),
    # relaypolicy serve as its only relay gate.
    with contextlib.ExitStack() as stack:
        serve_dir = tmp_path / "serve"
        serve_dir.mkdir()
        service = start_service(serve_dir, done.stdout)
        stack.callback(service.stop)
        if sasl:
            dovecot = stack.enter_context(running_dovecot(users={USER: PASSWORD}))
            harness["smtpd_sasl_path"] = str(dovecot.auth_socket)
        gate = f"check_policy_service {{ {service.policy_service}, default_action=DEFER }}, reject"
        gated = stack.enter_context(postfix_for(name, harness, gate, ports))
        via_policy = ask_everything(imported, gated, cafile, sasl=sasl)
        # Postfix did ask relaypolicy: a decision line for a probe of the battery.
        service.wait_for_log(r"recipient=<relaytest@nmap\.scanme\.org> verdict=")
    assert not report(via_policy, "looser"), report(via_policy, "looser")
    before = {
        (r.client, r.probe.name, r.postfix.code // 100) for r in direct if r.kind == "stricter"
    }
    new = [
        r
        for r in via_policy
        if r.kind == "stricter" and (r.client, r.probe.name, r.postfix.code // 100) not in before
    ]
    assert not new, "\n".join(f"{r.client} {r.probe.name}" for r in new)
    if sasl:  # the submission ports: sender ownership, the same through the policy service
        submission_ports = len(instance.ports) - 1  # 587 (STARTTLS) and 465 (implicit TLS)
        assert submission_ports == 2, instance.ports
        for rows in (direct, via_policy):
            answers: dict[str, list[tuple[int, str]]] = {}
            for r in rows:
                if r.probe in OWNED:
                    answers.setdefault(r.probe.name, []).append((r.postfix.code, r.kind))
            assert answers == {
                "owned-sender": [(250, "same")] * submission_ports,
                "shared-sender": [(250, "same")] * submission_ports,
                "other-sender": [(553, "same")] * submission_ports,
            }


def check_implicit_tls_commands(
    instance: FixtureInstance,
    imported: Path,
    cafile: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``postfix compare --tls`` on the ``submissions`` port (``smtpd_tls_wrappermode``),
    unauthenticated and logged in: nowhere looser; ``audit --smtp --tls``: no open relay."""
    implicit = f"{instance.host}:{instance.ports['submissions']}"
    password_file = tmp_path / "password"
    password_file.write_text(f"{PASSWORD}\n", encoding="utf-8")
    for login in ([], ["--login", USER, "--password-file", str(password_file)]):
        capsys.readouterr()
        status = main(["postfix", "compare", "--config", str(imported), "--smtp", implicit,
                       "--source-address", OUTSIDER, "--tls", "--cafile", str(cafile),
                       *login, "--json"])  # fmt: skip
        answer = json.loads(capsys.readouterr().out)
        assert (status, answer["looser"]) == (0, 0), answer["summary"]
        assert answer["asked"] > 0
    status = main(["audit", "--smtp", implicit, "--tls", "--insecure", "--local-domain",
                   "example.org", "--source-address", OUTSIDER])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert status == 0, "\n".join(lines)
    assert lines[0] == f"relay audit of SMTP server {implicit} over implicit TLS, from {OUTSIDER}"
    assert lines[-1].startswith("not an open relay: 0/"), lines[-1]


# --- the comparison's parts, without servers --------------------------------------------

OK = AuditResult(Probe("p", "", "user@example.org", ""), "RCPT", 250, "250 2.1.5 Ok")


def answer(code: int, text: str, stage: str = "RCPT") -> AuditResult:
    return OK._replace(stage=stage, code=code, reply=f"{code} {text}")


ACCEPT = Decision(Verdict.ACCEPT, 250, "2.1.5", "Ok", "local_domains", "local")
RELAYED = ACCEPT._replace(reason="trusted-network", policy="trusted_networks")
DENIED = Decision(Verdict.REJECT, 554, "5.7.1", "Relay access denied", "local_domains", "routing")


@pytest.mark.parametrize(
    ("postfix", "ours", "kind"),
    [
        (OK, ACCEPT, "same"),
        (OK, DENIED, "stricter"),
        (answer(554, "5.7.1 <x>: Relay access denied"), DENIED, "same"),
        (answer(454, "4.7.1 <x>: Relay access denied"), DENIED, "code"),
        (answer(554, "5.7.1 <x>: Relay access denied"), RELAYED, "looser"),
        (answer(454, "4.7.1 <x>: Relay access denied"), RELAYED, "looser"),
        (answer(553, "5.7.1 <s>: Sender address rejected", "MAIL"), RELAYED, "looser"),
        (answer(501, "5.1.3 Bad recipient address syntax"), RELAYED, "postfix-only"),
        (
            answer(501, "5.1.3 <x>: Recipient address rejected: Bad recipient address syntax"),
            RELAYED,
            "postfix-only",
        ),
        (
            answer(
                550, "5.1.1 <x>: Recipient address rejected: User unknown in local recipient table"
            ),
            ACCEPT,
            "postfix-only",
        ),
        # An unknown user of a foreign domain is no recipient check of ours: looser.
        (
            answer(
                550, "5.1.1 <x>: Recipient address rejected: User unknown in local recipient table"
            ),
            RELAYED,
            "looser",
        ),
        (OK._replace(stage="not sent", code=0, reply="no SMTPUTF8"), ACCEPT, "not sent"),
    ],
)
def test_classify(postfix: AuditResult, ours: Decision, kind: str) -> None:
    assert classify(postfix, ours) == kind


def test_recipient_corpus() -> None:
    corpus = recipient_corpus(["example.org", "例え.jp"], ["relay.test"], "192.0.2.1")
    by_name = {probe.name: probe.recipient for probe in corpus}
    assert len(by_name) == len(corpus)
    assert by_name["corpus:routing-percent-ours"] == "user%例え.jp@example.org"
    assert by_name["corpus:literal-server"] == "user@[192.0.2.1]"
    assert by_name["corpus:relay-subdomain"] == "user@mx.relay.test"
    assert by_name["corpus:idn-a-label:xn--r8jz45g.jp"] == "user@xn--r8jz45g.jp"
    assert by_name["corpus:idn-u-label:xn--r8jz45g.jp"] == "user@例え.jp"
    assert all(probe.sender == "" for probe in corpus)
    ipv6 = recipient_corpus(["example.org"], [], "2001:db8::25")
    assert "user@[IPv6:2001:db8::25]" in {probe.recipient for probe in ipv6}


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[domains]\nlocal = ["example.org"]\n')
    base = ["postfix", "compare", "--config", str(config), "--source-address", OUTSIDER]
    with pytest.raises(SystemExit) as exited:
        main(["postfix"])
    assert exited.value.code == 64
    assert main([*base, "--smtp", "127.0.0.1:25", "--login", "taro"]) == 64
    assert main([*base, "--smtp", "nonsense"]) == 64
    assert main([*base, "--smtp", "127.0.0.1:25", "--cafile", "x.pem"]) == 64
    assert main([*base, "--smtp", "127.0.0.1:465", "--insecure"]) == 64
    assert "--cafile and --insecure go with --starttls or --tls" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*base, "--smtp", "127.0.0.1:465", "--tls", "--starttls"])
    assert exited.value.code == 64
    assert "argument --starttls: not allowed with argument --tls" in capsys.readouterr().err
    missing = ["postfix", "compare", "--config", str(tmp_path / "none.toml")]
    assert main([*missing, "--smtp", "127.0.0.1:25", "--source-address", OUTSIDER]) == 66
    permit_only = tmp_path / "next.toml"
    permit_only.write_text('[domains]\nlocal = ["example.org"]\n[chain]\notherwise = "next"\n')
    next_args = ["postfix", "compare", "--config", str(permit_only), "--source-address", OUTSIDER]
    assert main([*next_args, "--smtp", "127.0.0.1:25"]) == 64
    assert 'otherwise = "next"' in capsys.readouterr().err
    port = free_port()  # nothing listens there
    assert main([*base, "--smtp", f"127.0.0.1:{port}"]) == 69
    assert "relaypolicy postfix compare: error: 127.0.0.1:" in capsys.readouterr().err
