"""`relaypolicy serve` as a subprocess for end-to-end tests, with a configuration of the
test's choosing (the policy part; this module adds the ``[serve]`` section).

Started the way an administrator would: ``python -m relaypolicy serve --config FILE``, its
log (stdout and stderr) in a file, `relaypolicy ctl` for its control socket.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from realservers import free_port, tail, wait_for_port

__all__ = ["Service", "start_daemon", "start_service"]

_SERVE_SECTION = """
[serve]
listen = ["127.0.0.1:{port}"]
control_socket = "{control}"
"""


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    control: Path
    log: Path
    config: Path

    @property
    def policy_service(self) -> str:
        """The ``check_policy_service`` target for Postfix."""
        return f"inet:127.0.0.1:{self.port}"

    def ask(self, recipient: str, *, client: str, sender: str, state: str = "RCPT") -> str:
        """The action the service gives for one policy request, ``action=`` taken off."""
        request = (
            f"request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n"
            f"client_address={client}\nsender={sender}\nrecipient={recipient}\n\n"
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request.encode())
            answer = b""
            while not answer.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                assert chunk, f"connection closed after {answer!r}"
                answer += chunk
        return answer.decode().removeprefix("action=").strip()

    def ctl(self, *args: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "relaypolicy", "ctl", "--socket", str(self.control), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode in (0, 1), done.stderr
        reply: dict[str, object] = json.loads(done.stdout)
        return reply

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """The first match of ``pattern`` (a regular expression) in the service's log."""
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (found := compiled.search(self.log.read_text(errors="replace"))) is None:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no line matching {pattern!r} in {self.log}:\n{tail(self.log)}"
                )
            time.sleep(0.05)
        return found

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def start_daemon(
    command: str, directory: Path, config_text: str, *, port: int, control: Path, log_name: str
) -> Service:
    """Start ``python -m relaypolicy <command> --config FILE`` (FILE: ``config_text`` as
    ``directory/relaypolicy.toml``), its stdout and stderr in ``directory/log_name``, and
    wait until it listens on ``port``; the test fails with the log's tail if it does not.
    What every front end's harness (serve, milter, exim) shares."""
    config = directory / "relaypolicy.toml"
    config.write_text(config_text)
    log = directory / log_name
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", command, "--config", str(config)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    service = Service(process, port, control, log, config)
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
    except TimeoutError:
        service.stop()
        pytest.fail(f"relaypolicy {command} did not start:\n{tail(log)}")
    return service


def start_service(directory: Path, policy_config: str) -> Service:
    """Start ``relaypolicy serve`` with ``policy_config`` (TOML without ``[serve]``) plus a
    ``[serve]`` section listening on a free loopback port, with a control socket."""
    port = free_port()
    control = directory / "control.sock"
    text = policy_config + _SERVE_SECTION.format(port=port, control=control)
    return start_daemon("serve", directory, text, port=port, control=control, log_name="serve.log")
