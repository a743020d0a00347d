"""Fixtures shared by the test modules: the real servers they start, always stopped.

The harnesses themselves are modules beside this file (``realservers`` for the common
checks, ``postfix_instance``, ``dovecot_instance``, ``redis_instance``,
``serve_process``): a test that needs a server configured its own way uses their context
managers; the fixtures here are the configurations several modules share, and they stop
what they started whether the test passed or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_instance import RedisInstance, running_redis
from serve_process import Service, start_service


@pytest.fixture
def redis_server() -> Iterator[RedisInstance]:
    """A private Redis on a free loopback port (append-only file on), for one test."""
    with running_redis() as instance:
        yield instance


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], Service]]:
    """Start ``relaypolicy serve`` processes: ``serve(policy_config)`` (TOML without
    ``[serve]``; see :func:`serve_process.start_service`). Each is stopped at teardown,
    also when the test failed half-way."""
    started: list[Service] = []

    def start(policy_config: str) -> Service:
        directory = tmp_path / f"serve{len(started)}"
        directory.mkdir()
        service = start_service(directory, policy_config)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
