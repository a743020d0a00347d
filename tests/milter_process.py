"""`relaypolicy milter` as a subprocess for end-to-end tests (Postfix here, Sendmail in
the Sendmail tests), with a configuration of the test's choosing (the policy part; this
module adds the ``[milter]`` section).

Started the way an administrator would: ``python -m relaypolicy milter --config FILE``,
its log in a file; the returned :class:`serve_process.Service` gives `relaypolicy ctl`
on its control socket, the log and the port.
"""

from __future__ import annotations

from pathlib import Path

from realservers import free_port
from serve_process import Service, start_daemon

__all__ = ["MILTER_SECTION", "start_milter"]

MILTER_SECTION = """
[milter]
listen = ["127.0.0.1:{port}"]
control_socket = "{control}"
{extra}
"""


def start_milter(directory: Path, policy_config: str, *, extra: str = "") -> Service:
    """Start ``relaypolicy milter`` with ``policy_config`` (TOML without ``[milter]``) plus
    a ``[milter]`` section on a free loopback port with a control socket; ``extra`` adds
    lines to that section."""
    port = free_port()
    control = directory / "control.sock"
    text = policy_config + MILTER_SECTION.format(port=port, control=control, extra=extra)
    return start_daemon(
        "milter", directory, text, port=port, control=control, log_name="milter.log"
    )


def postfix_milter_settings(port: int) -> dict[str, str]:
    """main.cf settings that make the milter on ``port`` Postfix's only relay gate (see
    docs/milter.md): restrictions that permit everything (``reject`` is there, never
    reached, because Postfix refuses to run without one), the milter with tempfail as
    its default action, and the macros relaypolicy reads."""
    return {
        "smtpd_relay_restrictions": "check_client_access static:OK, reject",
        "smtpd_milters": f"inet:127.0.0.1:{port}",
        "milter_default_action": "tempfail",
        "milter_protocol": "6",
        "milter_connect_macros": "j {daemon_name} {daemon_addr} {daemon_port} {client_addr} v _",
        "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
        "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr}",
        "milter_rcpt_macros": "i {rcpt_addr}",
    }
