"""A private Redis for tests: loopback TCP on a free port, a unix socket, its own directory
and append-only file.

:func:`running_redis` starts ``redis-server`` in the foreground with a config file of its
own (nothing from ``/etc/redis``), listening on 127.0.0.1 only, with ``appendonly yes``
and ``appendfsync always`` so a restart from the file loses nothing the tests wrote.
:class:`RedisInstance` stops, kills, pauses (SIGSTOP) and restarts *its own* process only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from realservers import free_port, require_binary, tail, terminate, unavailable

if TYPE_CHECKING:
    import redis

__all__ = ["RedisInstance", "running_redis"]

START_TIMEOUT = 10.0

_CONF = """\
bind 127.0.0.1
port {port}
unixsocket {socket}
unixsocketperm 700
protected-mode yes
dir {dir}
appendonly yes
appendfsync always
save ""
daemonize no
logfile {log}
"""


@dataclass
class RedisInstance:
    binary: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    extra: str = ""
    paused: bool = field(default=False)
    sentinel: bool = False  # run as a Sentinel (redis-server --sentinel), not a data server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def unix_url(self) -> str:
        return f"redis+unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        config = self.directory / "redis.conf"
        if self.sentinel:  # Sentinel rewrites its file: only what it needs, and ours
            text = f"bind 127.0.0.1\nport {self.port}\ndir {self.directory}\nlogfile {self.log}\n"
        else:
            text = _CONF.format(
                port=self.port, socket=self.socket, dir=self.directory, log=self.log
            )
        config.write_text(text + self.extra)
        command = [self.binary, str(config), *(["--sentinel"] if self.sentinel else [])]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server did not start:\n{tail(self.log)}")
            time.sleep(0.02)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def pause(self) -> None:
        """SIGSTOP: Redis stops answering, connections stay open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, as a crash: only the append-only file survives."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.paused:
            self.resume()
        terminate(self.process, 10)
        self.process = None

    def restart(self) -> None:
        """Start again on the same port and directory: it reloads the append-only file."""
        self.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.start()


@contextlib.contextmanager
def running_redis(
    extra: str = "", port: int | None = None, *, sentinel: bool = False
) -> Iterator[RedisInstance]:
    """A started private Redis (or Sentinel); skips (or fails, in CI) when redis-server is
    missing. ``extra`` is appended to its configuration file."""
    binary = require_binary("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("redis-py is not installed (pip install 'relaypolicy[redis]')")
    with tempfile.TemporaryDirectory(prefix="relaypolicy-redis-") as directory:
        instance = RedisInstance(
            binary, Path(directory), port or free_port(), extra=extra, sentinel=sentinel
        )
        instance.start()
        try:
            yield instance
        finally:
            instance.kill()
