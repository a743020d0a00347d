"""The replica's state: its fields, the constructor that checks and sets them, and how
either thread reports an error (``_failed``) and its end (``_recovered``).

``_ReplicaState`` is the base of :class:`~relaypolicy.fleet.replica.ReplicaTable`; the
follower (:mod:`~relaypolicy.fleet.replica.follower`) and the writer
(:mod:`~relaypolicy.fleet.replica.writer`) build on it. The theory of operation is in
:mod:`relaypolicy.fleet.replica`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from relaypolicy.fleet.store import RECORD_SCRIPT, REMOVE_SCRIPT, Keys, StreamId
from relaypolicy.fleet.urls import StateUrl, connect, parse_state_url
from relaypolicy.fleet.writes import Writes
from relaypolicy.iptable.memory import ExpiringIpTable

if TYPE_CHECKING:
    import redis

log = logging.getLogger("relaypolicy.fleet")

_START = StreamId(0, 0)


class _ReplicaState:
    """The fields of a :class:`~relaypolicy.fleet.replica.ReplicaTable`."""

    __slots__ = (
        "_block",
        "_client",
        "_client_login",
        "_clock",
        "_closed",
        "_contact",
        "_counters",
        "_follower",
        "_fresh_until",
        "_has_client",
        "_last_error",
        "_last_id",
        "_last_seq",
        "_lock",
        "_max_staleness",
        "_names",
        "_need_load",
        "_need_server_check",
        "_offset",
        "_record_script",
        "_remove_script",
        "_run_id",
        "_state",
        "_stopping",
        "_stream_length",
        "_table",
        "_wake",
        "_writer",
        "_writes",
    )

    def __init__(
        self,
        state: StateUrl | str,
        ttl: float = 1800.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int | None = None,
        ipv6_prefix: int = 128,
        max_staleness: float = 10.0,
        key_prefix: str = "relaypolicy:pop",
        stream_length: int = 10_000,
        timeout: float = 2.0,
        max_pending: int = 100_000,
    ) -> None:
        self._table = ExpiringIpTable(
            ttl, clock=clock, max_entries=max_entries, ipv6_prefix=ipv6_prefix
        )
        self._clock = clock
        self._state = parse_state_url(state) if isinstance(state, str) else state
        if not self._state.shared:
            raise ValueError(f"state: a replica needs a Redis URL, not {self._state.url!r}")
        if not (0 < max_staleness < math.inf):
            raise ValueError(f"max_staleness: expected positive seconds, not {max_staleness!r}")
        if not isinstance(stream_length, int) or stream_length < 1:
            raise ValueError(f"stream_length: expected a positive integer, not {stream_length!r}")
        self._max_staleness = float(max_staleness)
        self._stream_length = str(stream_length)
        self._names = Keys.for_prefix(key_prefix)
        # XREAD blocks at most this long, so a quiet Redis is heard from well within
        # max_staleness; the socket timeout adds ``timeout`` on top.
        self._block = min(0.5, self._max_staleness / 4)
        self._client: redis.Redis = connect(self._state, timeout=self._block + timeout)
        self._record_script = self._client.register_script(RECORD_SCRIPT)
        self._remove_script = self._client.register_script(REMOVE_SCRIPT)
        # The decision path: the local table's bound readers, looked up once.
        self._has_client = self._table.has_client
        self._client_login = self._table.client_login
        self._contact = -math.inf  # local time of the last round that reached Redis
        self._fresh_until = -math.inf  # _contact + max_staleness, for the decision path
        self._offset = 0.0  # Redis time minus local time
        self._last_id = _START
        self._last_seq = 0
        self._run_id = ""
        self._need_load = True
        self._need_server_check = False
        # One lock orders local writes, the follower's changes and the writer's
        # bookkeeping; readers never take it. The writer waits on it for work.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writes = Writes(max_pending)
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._closed = False
        self._writer: threading.Thread | None = None
        self._last_error = ""
        self._counters = dict.fromkeys(
            ("loads", "events", "writes", "dropped-writes", "errors", "bad-events"), 0
        )

    # --- errors, heard by either thread ------------------------------------------------

    def _failed(self, where: str, exc: Exception) -> None:
        self._counters["errors"] += 1
        message = f"{where}: {exc.__class__.__name__}: {exc}"
        if message != self._last_error:
            log.error("shared table (%s) %s", self._state.redacted, message)
        self._last_error = message

    def _recovered(self) -> None:
        if self._last_error:
            log.info("shared table (%s): Redis reachable again", self._state.redacted)
            self._last_error = ""
