"""A real OpenSMTPD with relaypolicy as its filter, when the filter cannot decide or is gone.

Each test starts its own instance (:mod:`opensmtpd_instance`; one runs at a time, so these
live apart from ``test_opensmtpd_e2e``'s module-wide instance).
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket

import pytest
from opensmtpd_instance import running_opensmtpd
from realservers import require_loopback_address, wait_gone
from test_opensmtpd_e2e import TRUSTED, UNTRUSTED, Client

pytestmark = pytest.mark.real

SMALL = """
[domains]
local = ["local.test"]

[networks]
trusted = ["127.0.0.1/32"]

[chain]
steps = ["trusted_networks", "local_domains"]
"""


def test_what_the_filter_cannot_decide_is_a_4xx() -> None:
    """With room for one session, a second connection makes the filter forget the first;
    the first session's next recipient cannot be decided: 451, not an accept."""
    require_loopback_address(UNTRUSTED)
    with running_opensmtpd(SMALL, opensmtpd="max_sessions = 1") as instance:
        first = Client(instance, TRUSTED)
        second = Client(instance, UNTRUSTED)
        try:
            relayed = first.ask("user@foreign.example")
            if str(relayed) == "451 4.3.5 Cannot determine the client address":
                # With room for one session, a report smtpd sent late about an earlier
                # connection (the harness's port probe) can take the room first: that too
                # is a forgotten session answered 451. Start the first session again.
                first.close()
                relayed = first.ask("user@foreign.example")
            assert relayed.code == 250, instance.log_tail()  # trusted: relays
            assert second.ask("user@local.test").code == 250
            reply = first.ask("user@foreign.example")
            assert str(reply) == "451 4.3.5 Cannot determine the client address", (
                instance.log_tail()
            )
        finally:
            first.close()
            second.close()


def test_filter_stopped_means_smtpd_stops_accepting() -> None:
    """relaypolicy stopped: smtpd shuts down ("lost processor"), so a session in progress
    gets no 250 and a new connection is refused; the sender's MTA keeps the mail."""
    require_loopback_address(UNTRUSTED)
    with running_opensmtpd(SMALL) as instance:
        client = Client(instance, TRUSTED)
        smtp = client._connect()
        assert smtp.docmd("MAIL", "FROM:<a@local.test>")[0] == 250
        [pid] = instance.filter_pids()
        os.kill(pid, signal.SIGTERM)
        assert wait_gone([pid], timeout=30)
        try:
            code, _text = smtp.docmd("RCPT", "TO:<user@foreign.example>")
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            code = 0
        assert code != 250 and (code == 0 or code // 100 == 4), (code, instance.log_tail())
        assert instance.process.wait(timeout=60) is not None
        assert "lost processor" in instance.log.read_text()
        with pytest.raises(OSError):
            socket.create_connection((instance.host, instance.port), timeout=10).close()
        client.close()
