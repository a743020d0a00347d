"""``relaypolicy milter``: the milter front end (Sendmail, Postfix) on the daemon runtime.

The same runtime as ``relaypolicy serve``: the table, the watcher, the control socket
(``milter.control_socket``), SIGHUP reload, ``[metrics]`` and the stats; only what speaks
to the MTA differs (:class:`~relaypolicy.milter.server.MilterServer`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs

from relaypolicy.config import Config, load_config
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.listeners import parse_listener
from relaypolicy.milter.server import MilterServer
from relaypolicy.milter.settings import MilterSettings
from relaypolicy.policies import Policy

__all__ = ["MilterFrontEnd", "MilterService"]

# [milter] keys a reload cannot apply: the sockets are bound once.
_RESTART_ONLY = ("listen", "socket_mode", "control_socket")


def _settings(config: Config) -> MilterSettings:
    return attrs.evolve(config.milter or MilterSettings(), log_format=config.log.format)


class MilterFrontEnd:
    """The milter server as a front end of the runtime."""

    def __init__(self, config: Config, policy: Policy, *, listen: list[str] | None = None):
        self.config = config
        settings = _settings(config)
        # Parsed now: a bad --listen is a usage error before anything starts.
        self.listeners = [
            parse_listener(spec, mode=settings.socket_mode) for spec in listen or settings.listen
        ]
        self.server = MilterServer(policy, settings)

    async def start(self) -> list[str]:
        return await self.server.start(self.listeners)

    async def close(self) -> None:
        await self.server.close()

    def update(self, config: Config, policy: Policy) -> list[str]:
        old, new = _settings(self.config), _settings(config)
        waiting = [
            f"milter.{key}" for key in _RESTART_ONLY if getattr(old, key) != getattr(new, key)
        ]
        self.server.policy = policy
        self.server.settings = new
        self.config = config
        return waiting

    def stats(self) -> dict[str, object]:
        return {**self.server.stats(), "connections-open": self.server.connections}


class MilterService(Runtime):
    """A running milter built from a configuration file (see ``daemon/serve.py``'s
    ``Service`` for what a reload applies and what waits for a restart)."""

    name = "relaypolicy milter"
    log = logging.getLogger("relaypolicy.milter")

    def __init__(self, config_path: str | Path, *, listen: list[str] | None = None) -> None:
        config = load_config(config_path)
        table = config.make_pop_table(durable=True)
        self.front_end = MilterFrontEnd(config, config.build_policy(table), listen=listen)
        super().__init__(
            config,
            table,
            self.front_end,
            config_path=str(config_path),
            control_socket=_settings(config).control_socket,
        )

    @property
    def server(self) -> MilterServer:
        """The milter server (its ``policy``, ``settings`` and ``counters``)."""
        return self.front_end.server
