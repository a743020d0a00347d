"""A login watch: the follower, parser, watcher and exporters of one ``[watch]`` section.

The daemon runs one as a task of a long-running command, on the table its policy reads
(:class:`relaypolicy.daemon.watch.WatchTask`), or alone (``relaypolicy watch``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from relaypolicy.watch.follow import LogFollower
from relaypolicy.watch.parsers import DovecotParser, DovecotSessions
from relaypolicy.watch.settings import ExportSettings, WatchSettings, parse_watch
from relaypolicy.watch.watcher import LoginTable, Watcher

if TYPE_CHECKING:
    pass

__all__ = ["ExportSettings", "LoginWatch", "WatchSettings", "parse_watch"]

log = logging.getLogger("relaypolicy.watch")


class LoginWatch:
    """A follower, a parser, a watcher and its exporters, built from :class:`WatchSettings`."""

    def __init__(self, settings: WatchSettings, table: LoginTable) -> None:
        self.settings = settings
        self.table = table
        self.parser = settings.parser()
        sessions = None
        if settings.sessions and isinstance(self.parser, DovecotParser):
            sessions = DovecotSessions(programs=self.parser.programs, framing=self.parser.framing)
        self.watcher = Watcher(
            table, self.parser, sessions=sessions, max_sessions=settings.max_sessions
        )
        self.follower = self._new_follower()
        self.exporters = [export.exporter() for export in settings.exports]

    def _new_follower(self) -> LogFollower:
        settings = self.settings
        follower = LogFollower(
            settings.log, state_path=settings.position or None, start_at_end=settings.start_at_end
        )
        self.watcher.follower = follower
        return follower

    def counters(self) -> dict[str, int]:
        """What the control socket's ``stats`` shows under ``watch-…``."""
        counters = dict(self.watcher.counters)
        follower = self.follower.counters
        for key in ("rotations", "truncations", "undecodable"):
            counters[key] = follower.get(key, 0)
        counters["export-writes"] = sum(exporter.writes for exporter in self.exporters)
        counters["export-errors"] = sum(exporter.errors for exporter in self.exporters)
        return counters

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop`` is set; the follower is closed and the exported
        maps emptied when it returns. The position was saved after each round whose
        logins were durable; a run after a failed one starts a new follower from it, so
        lines read but not made durable are read again."""
        log.info("watch: following %s (%s)", self.settings.log, self.settings.format)
        if self.follower.closed:
            self.follower = self._new_follower()
        try:
            await self.watcher.run(
                self.follower,
                stop=stop,
                interval=self.settings.interval,
                exporters=self.exporters,
            )
        finally:
            self.follower.close()
