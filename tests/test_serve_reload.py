"""What a reload of `relaypolicy serve` applies, what waits for a restart, and that the
POP-before-SMTP table survives both (in-process; the SIGHUP path is in test_serve_postfix)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from realservers import free_port

from relaypolicy import Request, Verdict
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.daemon.serve import Service
from relaypolicy.iptable.base import ManagedTable


def table_of(service: Runtime) -> ManagedTable:
    """The service's POP-before-SMTP table (these configurations have one)."""
    assert service.table is not None
    return service.table


POLICY = """
[domains]
local = ["{local}"]

[pop_before_smtp]
ttl = {ttl}
{persist}

[chain]
steps = ["pop_before_smtp", "local_domains"]

[serve]
listen = ["127.0.0.1:{port}"]

[log]
level = "{level}"
"""


def write(
    path: Path,
    *,
    local: str = "example.org",
    ttl: int = 1800,
    port: int,
    persist: str = "",
    level: str = "INFO",
) -> None:
    path.write_text(
        POLICY.format(
            local=local,
            ttl=ttl,
            port=port,
            persist=f'persist = "{persist}"' if persist else "",
            level=level,
        )
    )


@contextlib.asynccontextmanager
async def running(config: Path, *, manages_logging: bool = False) -> AsyncIterator[Service]:
    """A started in-process service, closed (table saved) on the way out."""
    service = Service(config)
    service.manages_logging = manages_logging
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def verdict(service: Service, client: str, recipient: str) -> Verdict:
    request = Request(client_address=client, recipient=recipient)
    return service.server.policy.check(request).verdict


def test_reload_applies_the_policy_keeps_the_table_and_names_what_waits(tmp_path: Path) -> None:
    config = tmp_path / "relaypolicy.toml"
    port = free_port()
    write(config, port=port)

    async def scenario() -> None:
        async with running(config) as service:
            table_of(service).record("127.0.0.21", user="taro")
            assert verdict(service, "127.0.0.30", "u@example.net") is Verdict.REJECT
            write(config, local="example.net", port=port)
            assert service.reload() == "reloaded"
            assert verdict(service, "127.0.0.30", "u@example.net") is Verdict.ACCEPT
            assert verdict(service, "127.0.0.21", "u@aho.jp") is Verdict.ACCEPT  # table kept
            write(config, local="example.net", ttl=60, port=free_port())
            result = service.reload()
            assert result == ("reloaded; restart to apply: serve.listen, pop_before_smtp.ttl"), (
                result
            )
            assert table_of(service).ttl == 1800  # the running table keeps its ttl
            assert service.bound == [f"inet:127.0.0.1:{port}"]
            assert service.stats()["reloads"] == 2
            assert "127.0.0.21" in table_of(service)

    asyncio.run(scenario())


def test_adding_pop_before_smtp_needs_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "relaypolicy.toml"
    port = free_port()
    config.write_text(
        f'[domains]\nlocal = ["example.org"]\n[serve]\nlisten = ["127.0.0.1:{port}"]\n'
    )

    async def scenario() -> None:
        async with running(config) as service:
            write(config, port=port)
            result = service.reload()
            assert result.startswith("reload failed, keeping the running configuration")
            assert "[pop_before_smtp] was added" in result and "restart" in result
            assert verdict(service, "127.0.0.30", "u@example.org") is Verdict.ACCEPT
            assert service.stats()["reload-failures"] == 1

    asyncio.run(scenario())


def test_reload_applies_the_log_level_when_serve_manages_logging(tmp_path: Path) -> None:
    config = tmp_path / "relaypolicy.toml"
    port = free_port()
    write(config, port=port)
    logger = logging.getLogger("relaypolicy")
    saved = (logger.level, list(logger.handlers), logger.propagate)

    async def scenario() -> None:
        async with running(config, manages_logging=True) as service:
            write(config, port=port, level="WARNING")
            assert service.reload() == "reloaded"
            assert logger.level == logging.WARNING

    try:
        asyncio.run(scenario())
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


def test_table_survives_a_restart_with_persist(tmp_path: Path) -> None:
    config = tmp_path / "relaypolicy.toml"
    saved = tmp_path / "table.json"
    port = free_port()
    write(config, port=port, persist=str(saved))

    async def run_once(record: bool) -> bool:
        async with running(config) as service:
            if record:
                table_of(service).record("127.0.0.22", user="hanako")
            return verdict(service, "127.0.0.22", "u@aho.jp") is Verdict.ACCEPT

    assert asyncio.run(run_once(True))
    assert saved.exists()
    assert asyncio.run(run_once(False))  # a new process reads what the old one saved
    entry = table_of(Service(config)).lookup("127.0.0.22")
    assert entry is not None and entry.user == "hanako"
