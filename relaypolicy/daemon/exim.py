"""``relaypolicy exim``: Exim's socket (:class:`~relaypolicy.exim.server.EximServer`) as a
front end of the daemon runtime.

:class:`EximFrontEnd` is the runtime's front end; :class:`EximService` the runtime for one
configuration file, as :class:`relaypolicy.daemon.serve.Service` is for ``serve``: the
table, the watcher, the control socket (``[exim] control_socket``), SIGHUP reload and the
stats come from :class:`~relaypolicy.daemon.runtime.Runtime`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from relaypolicy.config import Config, load_config
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.errors import ConfigError
from relaypolicy.exim.server import EximServer
from relaypolicy.exim.settings import EximSettings
from relaypolicy.listeners import parse_listener
from relaypolicy.policies import Policy

__all__ = ["EximFrontEnd", "EximServer", "EximService"]

# [exim] keys a reload cannot apply: the sockets are bound once.
_RESTART_ONLY = ("listen", "socket_mode", "control_socket")


def _settings(config: Config) -> EximSettings:
    if config.exim is None:
        raise ConfigError(f"{config.source}: no [exim] section: add one with a listen address")
    return config.exim


class EximFrontEnd:
    """The Exim socket as a front end of the runtime."""

    def __init__(self, config: Config, policy: Policy, *, listen: list[str] | None = None):
        self.config = config
        settings = _settings(config)
        mode = settings.socket_mode
        # Parsed now: a bad --listen is a usage error before anything starts.
        self.listeners = [parse_listener(spec, mode=mode) for spec in listen or settings.listen]
        self.server = EximServer(policy, settings, log_format=config.log.format)

    async def start(self) -> list[str]:
        return await self.server.start(self.listeners)

    async def close(self) -> None:
        await self.server.close()

    def update(self, config: Config, policy: Policy) -> list[str]:
        old = _settings(self.config)
        new = config.exim or old  # a reload never leaves the running socket without settings
        waiting = [f"exim.{key}" for key in _RESTART_ONLY if getattr(old, key) != getattr(new, key)]
        self.server.decider.policy = policy
        self.server.decider.log_format = config.log.format
        self.server.settings = new
        self.config = config
        return waiting

    def stats(self) -> dict[str, object]:
        return self.server.stats()


class EximService(Runtime):
    """``relaypolicy exim`` for one configuration file (its ``[exim]`` section).

    The table, the watcher, the control socket (``[exim] control_socket``), SIGHUP reload
    and the stats come from :class:`~relaypolicy.daemon.runtime.Runtime`. Raises
    :class:`~relaypolicy.errors.ConfigError` for a file without ``[exim]`` or one that
    cannot be used.
    """

    name = "relaypolicy exim"
    log = logging.getLogger("relaypolicy.exim")

    def __init__(self, config_path: str | Path, *, listen: list[str] | None = None) -> None:
        config = load_config(config_path)
        settings = _settings(config)
        table = config.make_pop_table(durable=True)
        self.front_end = EximFrontEnd(config, config.build_policy(table), listen=listen)
        super().__init__(
            config,
            table,
            self.front_end,
            config_path=str(config_path),
            control_socket=settings.control_socket,
        )
