"""State URLs: where the POP-before-SMTP table lives, the ``limits`` way.

===============================================  ==========================================
``memory``                                       this process only (the default)
``redis://[:password@]host[:port][/db]``         Redis over TCP
``rediss://[:password@]host[:port][/db]``        Redis over TLS
``redis+unix:///path/redis.sock[?db=N]``         Redis over a unix socket
``redis+sentinel://[:password@]h1:p1[,h2:p2]/service[/db]``
                                                 the primary that Sentinel names ``service``
===============================================  ==========================================

Parsing needs nothing but the standard library, so a configuration is checked without
redis-py; :func:`connect` imports it, only when a Redis URL is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

if TYPE_CHECKING:
    import redis

__all__ = ["StateUrl", "connect", "parse_state_url"]

_SCHEMES = {
    "redis": "redis",
    "rediss": "redis",
    "redis+unix": "redis",
    "redis+sentinel": "sentinel",
}


@attrs.frozen
class StateUrl:
    """A parsed ``pop_before_smtp.state``. ``redacted`` is safe to log (no password)."""

    kind: Literal["memory", "redis", "sentinel"]
    url: str = ""
    redacted: str = "memory"
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None  # an ACL user (Redis 6+); None: the default user
    password: str | None = None

    @property
    def shared(self) -> bool:
        """Whether the table is shared through Redis (not this process's memory)."""
        return self.kind != "memory"


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{url}: the database must be a number, not {text!r}")
    return int(text)


def parse_state_url(text: str) -> StateUrl:
    """Validate a state URL; :class:`ValueError` says what is wrong with it."""
    if not isinstance(text, str):
        raise TypeError(f"expected a state URL, got {text!r}")
    if text in ("memory", "memory://"):
        return StateUrl("memory")
    scheme, sep, _ = text.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            f'{text!r}: expected "memory", redis://, rediss://, redis+unix:// or redis+sentinel://'
        )
    parts = urlsplit(text)
    credentials, at, hosts = parts.netloc.rpartition("@")
    # user:password@, :password@ or password@ (a lone word is a password, as in Redis's
    # own "requirepass" setups); only the Sentinel form needs them parsed here.
    user, colon, secret = credentials.partition(":")
    username = unquote(user) if at and colon and user else None
    password = unquote(secret if colon else credentials) if at else None
    redacted = text.replace(parts.netloc, f"***@{hosts}") if at else text
    if scheme == "redis+unix":
        if hosts or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"{redacted}: expected redis+unix:///absolute/path/to/redis.sock")
        db_values = parse_qs(parts.query).get("db", ["0"])
        return StateUrl("redis", text, redacted, db=_db(db_values[0], redacted))
    if not hosts:
        raise ValueError(f"{redacted}: no host")
    if scheme != "redis+sentinel":
        try:
            parts.port  # noqa: B018 -- validates the port
        except ValueError:
            raise ValueError(f"{redacted}: bad port") from None
        path = parts.path.strip("/")
        return StateUrl("redis", text, redacted, db=_db(path, redacted) if path else 0)
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "26379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{redacted}: expected host:port of each sentinel, got {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    pieces = [piece for piece in parts.path.split("/") if piece]
    if not 1 <= len(pieces) <= 2:
        raise ValueError(f"{redacted}: expected /service_name or /service_name/db")
    db = _db(pieces[1], redacted) if len(pieces) == 2 else 0
    return StateUrl(
        "sentinel",
        text,
        redacted,
        sentinels=tuple(sentinels),
        service=pieces[0],
        db=db,
        username=username,
        password=password,
    )


def connect(state: StateUrl, *, timeout: float) -> redis.Redis:
    """A redis-py client for ``state`` (which must be shared), strings decoded.

    ``timeout`` bounds connecting and every reply: a Redis that stops answering is
    noticed, not waited for.
    """
    import redis
    import redis.sentinel

    options = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
        "protocol": 2,  # the reply shapes the replica parses
    }
    if state.kind == "redis":
        url = state.url
        if url.startswith("redis+unix://"):
            url = "unix://" + url.removeprefix("redis+unix://")
        return redis.Redis.from_url(url, **options)
    if state.kind == "sentinel":
        # redis.sentinel is not annotated: name what it returns.
        make_sentinel = cast("Callable[..., Any]", redis.sentinel.Sentinel)
        sentinel = make_sentinel(
            list(state.sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cast(
            "redis.Redis",
            sentinel.master_for(
                state.service,
                db=state.db,
                username=state.username,
                password=state.password,
                **options,
            ),
        )
    raise ValueError(f"{state.redacted}: not a Redis URL")
