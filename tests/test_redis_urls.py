"""State URLs and the [pop_before_smtp] keys of a shared table (no Redis needed)."""

from __future__ import annotations

from typing import Any

import pytest

from relaypolicy.config import ConfigError, parse_config
from relaypolicy.fleet import ReplicaTable, parse_state_url
from relaypolicy.iptable import ExpiringIpTable


@pytest.mark.parametrize(
    ("url", "kind", "redacted", "db"),
    [
        ("memory", "memory", "memory", 0),
        ("memory://", "memory", "memory", 0),
        ("redis://127.0.0.1:6379/2", "redis", "redis://127.0.0.1:6379/2", 2),
        ("redis://localhost", "redis", "redis://localhost", 0),
        ("rediss://:s3cret@redis.example:6380/0", "redis", "rediss://***@redis.example:6380/0", 0),
        ("redis+unix:///run/redis/redis.sock", "redis", "redis+unix:///run/redis/redis.sock", 0),
        ("redis+unix:///run/redis.sock?db=3", "redis", "redis+unix:///run/redis.sock?db=3", 3),
    ],
)
def test_state_urls(url: str, kind: str, redacted: str, db: int) -> None:
    state = parse_state_url(url)
    assert (state.kind, state.redacted, state.db) == (kind, redacted, db)
    assert state.shared is (kind != "memory")


def test_sentinel_url() -> None:
    state = parse_state_url("redis+sentinel://:pw@10.0.0.1:26379,[2001:db8::1]:26380/mail/1")
    assert state.kind == "sentinel"
    assert state.sentinels == (("10.0.0.1", 26379), ("2001:db8::1", 26380))
    assert (state.service, state.db, state.password) == ("mail", 1, "pw")
    assert "pw" not in state.redacted
    assert parse_state_url("redis+sentinel://s1/mail").sentinels == (("s1", 26379),)
    assert (state.username, parse_state_url("redis+sentinel://s1/mail").password) == (None, None)


@pytest.mark.parametrize(
    ("credentials", "username", "password"),
    [
        ("relaypolicy:s%40cret@", "relaypolicy", "s@cret"),  # an ACL user
        (":pw@", None, "pw"),
        ("pw@", None, "pw"),
        ("relaypolicy:@", "relaypolicy", ""),
    ],
)
def test_sentinel_url_credentials(credentials: str, username: str | None, password: str) -> None:
    state = parse_state_url(f"redis+sentinel://{credentials}s1:26379/mail")
    assert (state.username, state.password) == (username, password)
    assert state.redacted == "redis+sentinel://***@s1:26379/mail"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis:/x", "expected"),
        ("mysql://db/x", "expected"),
        ("redis://", "no host"),
        ("redis://h/zero", "database must be a number"),
        ("redis://h:99999999", "bad port"),
        ("redis+unix://host/path", "absolute"),
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:x/mail", "host:port"),
        ("redis://:hunter2@h/x", "***@h"),
    ],
)
def test_bad_state_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")) as caught:
        parse_state_url(url)
    assert "hunter2" not in str(caught.value)


def _config(**pop: Any) -> dict[str, Any]:
    return {"domains": {"local": ["example.org"]}, "pop_before_smtp": pop}


def test_config_memory_is_the_default() -> None:
    config = parse_config(_config())
    assert config.pop is not None and config.pop.state == "memory"
    assert type(config.make_pop_table()) is ExpiringIpTable


def test_config_redis_state_makes_an_unstarted_replica() -> None:
    config = parse_config(
        _config(state="redis://127.0.0.1:1/0", max_staleness=3, key_prefix="mx", ttl=600)
    )
    assert config.pop is not None
    assert (config.pop.max_staleness, config.pop.key_prefix) == (3.0, "mx")
    # Validation builds with a memory stand-in: nothing is connected.
    assert type(config.make_pop_table(load=False)) is ExpiringIpTable
    table = config.make_pop_table()
    assert isinstance(table, ReplicaTable)
    assert (table.ttl, table.max_staleness) == (600.0, 3.0)
    assert table.stale  # never heard from Redis: unknown clients are deferred
    table.close()


@pytest.mark.parametrize(
    ("pop", "message"),
    [
        ({"state": "redis:/x"}, "pop_before_smtp.state: "),
        ({"state": "redis://h", "persist": "t.json"}, "pop_before_smtp.persist: Redis keeps"),
        ({"max_staleness": 0}, "pop_before_smtp.max_staleness: expected seconds from 1"),
        ({"max_staleness": "10"}, "pop_before_smtp.max_staleness: expected seconds"),
        ({"key_prefix": "a{b}"}, "pop_before_smtp.key_prefix: "),
        ({"key_prefix": ""}, "pop_before_smtp.key_prefix: "),
    ],
)
def test_config_errors_name_the_key(pop: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{")):
        parse_config(_config(**pop))


def test_a_memory_table_never_imports_redis(tmp_path: Any) -> None:
    """redis-py is an extra: a service without a Redis state must run without it."""
    import subprocess
    import sys

    from realservers import free_port

    config = tmp_path / "relaypolicy.toml"
    config.write_text(
        '[domains]\nlocal = ["example.org"]\n[pop_before_smtp]\nttl = 60\n'
        f'[serve]\nlisten = ["127.0.0.1:{free_port()}"]\n'
    )
    code = (
        "import asyncio, sys\n"
        "from relaypolicy.daemon.serve import Service\n"
        f"service = Service({str(config)!r})\n"
        "async def main():\n"
        "    await service.start()\n"
        "    await service.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
