"""The policy service's workload, which every front-end benchmark asks: Postfix requests
with the answers they must get, and ``relaypolicy serve`` configured to give them.

``bench_serve.py`` sends the requests to ``relaypolicy serve`` and postfwd;
``bench_milter.py`` and ``bench_exim.py`` translate their RCPT requests
(:meth:`Workload.rcpt_only`) into their front end's questions and measure
``relaypolicy serve`` beside it, with the same configuration (:data:`RELAYPOLICY_CONFIG`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from loadgen import Client, Server, free_port, log_note, start_relaypolicy

REJECT_ACTION = "554 5.7.1 Relay access denied"
METRICS_SUFFIX = " +metrics"  # the label of a server with [metrics]: "relaypolicy (info) +metrics"

RELAYPOLICY_CONFIG = """\
[domains]
local = ["example.org"]
relay = ["example.net"]

[networks]
trusted = ["127.0.0.0/8", "192.0.2.0/24"]

[chain]
steps = ["trusted_networks", "sasl_permit", "local_domains"]
otherwise = "reject"

[serve]
listen = ["127.0.0.1:{port}"]
accept_action = "OK"

[log]
level = "{level}"
format = "text"
"""

METRICS_SECTION = """
[metrics]
listen = "127.0.0.1:{port}"
"""

# --- the requests ----------------------------------------------------------------------


@dataclass
class Workload:
    """Encoded requests and, for each, the exact answer it must get."""

    requests: list[bytes]
    answers: list[bytes]
    verdicts: list[str]  # OK, REJECT or DUNNO

    def rcpt_only(self) -> Workload:
        """The RCPT-state requests (what a milter or Exim's ACL is asked), in order."""
        kept = Workload([], [], [])
        for request, answer, verdict in zip(
            self.requests, self.answers, self.verdicts, strict=True
        ):
            if verdict != "DUNNO":
                kept.requests.append(request)
                kept.answers.append(answer)
                kept.verdicts.append(verdict)
        return kept


def policy_client(workload: Workload, *, check: bool = True) -> Client:
    """The load run's client for the policy service: persistent connections, each answer
    compared byte for byte with the one its request must get (``check``)."""
    answers = workload.answers
    verdict_of = dict(zip(answers, workload.verdicts, strict=True))

    def judge(i: int, answer: bytes) -> str:
        return verdict_of[answer] if answer == answers[i] else "wrong"

    return Client(workload.requests, judge if check else None, expected=lambda i: repr(answers[i]))


def make_workload(count: int, seed: int) -> Workload:
    """``count`` distinct requests: Postfix's attribute set, a realistic mix.

    Clients: 10 % trusted (127/8, 192.0.2/24), the rest outside (some just outside:
    192.0.3.x, 128.0.0.1), 8 % of those authenticated. Recipients: 55 % local (some in
    upper case), 10 % relay domain or its subdomains, 25 % foreign (some near misses:
    mail.example.org, notexample.net), 10 % routing tricks in four spellings; 3 % of the
    requests come from the DATA state (answer DUNNO).
    """
    rng = random.Random(seed)
    users = ["taro", "hanako", "info", "sales", "saya.yomogi", "j.doe", "postmaster"]
    foreign = [f"{rng.choice(['mx', 'mail', ''])}{i}.example{i % 9}.com" for i in range(300)]
    foreign += ["mail.example.org", "notexample.net", "example.org.evil.test", "example.orgs"]
    trusted = [f"127.0.0.{rng.randrange(1, 255)}" for _ in range(20)]
    trusted += [f"192.0.2.{rng.randrange(1, 255)}" for _ in range(40)]
    outside = [f"203.0.113.{rng.randrange(1, 255)}" for _ in range(400)]
    outside += [f"198.51.100.{rng.randrange(1, 255)}" for _ in range(400)]
    outside += [f"192.0.3.{rng.randrange(1, 255)}" for _ in range(20)] + ["128.0.0.1"]
    workload = Workload([], [], [])
    for i in range(count):
        user = f"{rng.choice(users)}{i}"
        roll = rng.random()
        routed = False
        if roll < 0.55:
            recipient = f"{user}@{rng.choice(['example.org', 'example.org', 'Example.ORG'])}"
            ours = True
        elif roll < 0.65:
            recipient = (
                f"{user}@{rng.choice(['example.net', 'mx1.example.net', 'a.b.EXAMPLE.net'])}"
            )
            ours = True
        elif roll < 0.90:
            recipient, ours = f"{user}@{rng.choice(foreign)}", False
        else:
            other = rng.choice(foreign)
            recipient = rng.choice(
                [
                    f"{user}%{other}@example.org",
                    f"{other}!{user}@example.org",
                    f"{user}@{other}@example.org",  # Postfix's internal form of "u@o"@d
                    f'"{user}@{other}"@example.org',
                ]
            )
            ours, routed = False, True
        state = "DATA" if rng.random() < 0.03 else "RCPT"
        is_trusted = rng.random() < 0.10
        client = rng.choice(trusted if is_trusted else outside)
        sasl = not is_trusted and rng.random() < 0.08
        if state != "RCPT":
            verdict = "DUNNO"
        elif is_trusted or sasl or (ours and not routed):
            verdict = "OK"
        else:
            verdict = "REJECT"
        workload.requests.append(
            _encode(_attributes(rng, i, state=state, client=client, sasl=sasl, recipient=recipient))
        )
        workload.verdicts.append(verdict)
        action = REJECT_ACTION if verdict == "REJECT" else verdict
        workload.answers.append(f"action={action}\n\n".encode())
    return workload


def _attributes(
    rng: random.Random, i: int, *, state: str, client: str, sasl: bool, recipient: str
) -> dict[str, str]:
    host = f"host{i % 997}.example{i % 13}.net"
    tls = rng.random() < 0.7
    return {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": client,
        "client_name": host if i % 5 else "unknown",
        "client_port": str(rng.randrange(1024, 65536)),
        "reverse_client_name": host,
        "server_address": "198.51.100.25",
        "server_port": "25",
        "helo_name": host,
        "sender": f"sender{i % 501}@{host}" if i % 11 else "",
        "recipient": recipient,
        "recipient_count": "0" if state == "RCPT" else "1",
        "queue_id": "",
        "instance": f"{i:x}.{1_760_000_000 + i:x}.{i % 1000}.0",
        "size": str(rng.randrange(0, 200_000)),
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "PLAIN" if sasl else "",
        "sasl_username": f"user{i % 50}" if sasl else "",
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "TLSv1.3" if tls else "",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384" if tls else "",
        "encryption_keysize": "256" if tls else "0",
        "policy_context": "",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }


def _encode(attributes: dict[str, str]) -> bytes:
    return ("".join(f"{k}={v}\n" for k, v in attributes.items()) + "\n").encode()


def start_serve(tmp: Path, level: str, *, metrics: bool = False) -> Server:
    """``relaypolicy serve`` at log ``level``; with ``metrics``, plus a ``[metrics]`` section
    (the rest of the configuration is the same)."""
    port = free_port()
    text = RELAYPOLICY_CONFIG.format(port=port, level=level)
    label, note = f"relaypolicy ({level})", log_note(level)
    metrics_port = free_port() if metrics else None
    more_ports: list[tuple[int, str]] = []
    if metrics_port is not None:
        text += METRICS_SECTION.format(port=metrics_port)
        label += METRICS_SUFFIX
        note += f"; [metrics] on 127.0.0.1:{metrics_port}, scraped every second"
        more_ports.append((metrics_port, "relaypolicy serve's /metrics"))
    name = f"relaypolicy-{level}" + ("-metrics" if metrics else "")
    server = start_relaypolicy(
        tmp, "serve", name, text, port=port, label=label, note=note, more_ports=more_ports
    )
    server.metrics_port = metrics_port
    return server
