"""The private Dovecot instance works, and logs the login lines a log watcher will read."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from dovecot_instance import DovecotInstance, running_dovecot
from realservers import require_loopback_address

pytestmark = pytest.mark.real

CLIENT = "127.0.0.10"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotInstance]:
    require_loopback_address(CLIENT)
    with running_dovecot(users={"taro": "secret"}) as instance:
        yield instance


def test_pop3_login_with_the_right_password_is_logged_with_the_client_address(
    dovecot: DovecotInstance,
) -> None:
    assert dovecot.pop3_login("taro", "secret", source_address=CLIENT) is True
    line = dovecot.wait_for_log(
        r"^.*pop3-login: Info: Login: user=<taro>, method=PLAIN, "
        rf"rip={re.escape(CLIENT)}, lip=127\.0\.0\.1, mpid=\d+, session=<[^>]+>$"
    )
    assert line.group(0).startswith(tuple("JFMASOND"))  # "Nov 28 13:34:15 " (log_timestamp)


def test_pop3_login_with_a_wrong_password_fails_and_is_logged_as_a_failure(
    dovecot: DovecotInstance,
) -> None:
    assert dovecot.pop3_login("taro", "wrong", source_address=CLIENT) is False
    dovecot.wait_for_log(
        rf"auth: Info: passwd-file\(taro,{re.escape(CLIENT)},<[^>]+>\): Password mismatch"
    )
    failed = dovecot.wait_for_log(
        r"pop3-login: Info: Disconnected: .*\(auth failed, 1 attempts in \d+ secs\): "
        rf"user=<taro>, method=PLAIN, rip={re.escape(CLIENT)}, "
    )
    assert "Login:" not in failed.group(0)


def test_unknown_user_fails(dovecot: DovecotInstance) -> None:
    assert dovecot.pop3_login("nosuch", "secret", source_address=CLIENT) is False
    dovecot.wait_for_log(r"passwd-file\(nosuch,127\.0\.0\.10,<[^>]+>\): unknown user")
    log = dovecot.log_text()
    assert "Login: user=<nosuch>" not in log
    assert "secret" not in log  # auth_verbose_passwords stays off


def test_auth_socket_is_open_to_postfix(dovecot: DovecotInstance) -> None:
    assert dovecot.auth_socket.is_socket()
    assert dovecot.auth_socket.stat().st_mode & 0o777 == 0o666
