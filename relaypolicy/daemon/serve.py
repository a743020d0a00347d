"""``relaypolicy serve``: the Postfix policy service on the daemon runtime.

- SIGTERM / SIGINT: stop listening, answer the requests in hand, save the POP-before-SMTP
  table (when ``persist`` is set), exit 0 (74, EX_IOERR, when it could not be saved).
- SIGHUP: reload the configuration. The new file is validated and its policy built before
  anything changes; a broken file is logged and the old policy keeps serving. The table
  survives a reload (its ttl and limits are not changed by one: restart for that).
- The control socket (``serve.control_socket``, unix, JSON lines) answers ``table``,
  ``add``, ``remove``, ``stats`` and ``reload``; ``relaypolicy ctl`` is its client.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs

from relaypolicy.config import Config, load_config
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.policies import Policy
from relaypolicy.postfix.server import PolicyServer, ServerSettings, parse_listener

__all__ = ["PostfixFrontEnd", "Service"]

# [serve] keys a reload cannot apply: the sockets are bound once.
_RESTART_ONLY_SERVE = ("listen", "socket_mode", "control_socket")


def _server_settings(config: Config) -> ServerSettings:
    return attrs.evolve(config.serve, log_format=config.log.format)


class PostfixFrontEnd:
    """The Postfix policy delegation server as a front end of the runtime."""

    def __init__(self, config: Config, policy: Policy, *, listen: list[str] | None = None):
        self.config = config
        mode = config.serve.socket_mode
        # Parsed now: a bad --listen is a usage error before anything starts.
        self.listeners = [parse_listener(spec, mode=mode) for spec in listen or config.serve.listen]
        self.server = PolicyServer(policy, _server_settings(config))

    async def start(self) -> list[str]:
        return await self.server.start(self.listeners)

    async def close(self) -> None:
        await self.server.close()

    def update(self, config: Config, policy: Policy) -> list[str]:
        waiting = [
            f"serve.{key}"
            for key in _RESTART_ONLY_SERVE
            if getattr(self.config.serve, key) != getattr(config.serve, key)
        ]
        self.server.policy = policy
        self.server.settings = _server_settings(config)
        self.config = config
        return waiting

    def stats(self) -> dict[str, object]:
        return {**self.server.stats(), "connections-open": self.server.connections}


class Service(Runtime):
    """A running policy service built from a configuration file.

    :meth:`reload` applies the policy (domains, networks, chain, ``bind_sender``…), the
    ``[serve]`` limits and actions, ``[watch]`` and, when :attr:`manages_logging` is set
    (``relaypolicy serve`` sets it), ``[log]``. The listening sockets, the control socket
    and the POP-before-SMTP table's own settings (``ttl``, ``state``, ``persist``…) are
    fixed at start: a reload that changes them logs which ones wait for a restart.
    Raises :class:`~relaypolicy.errors.ConfigError` for a file that cannot be used, and
    :class:`OSError` or :class:`~relaypolicy.errors.TableFileError` for a ``persist``
    that cannot be.
    """

    name = "relaypolicy serve"
    log = logging.getLogger("relaypolicy.serve")

    def started_log(self, bound: list[str]) -> None:
        self.log.info("relaypolicy serving on %s", ", ".join(bound))

    def __init__(self, config_path: str | Path, *, listen: list[str] | None = None) -> None:
        config = load_config(config_path)
        table = config.make_pop_table(durable=True)
        self.front_end = PostfixFrontEnd(config, config.build_policy(table), listen=listen)
        super().__init__(
            config,
            table,
            self.front_end,
            config_path=str(config_path),
            control_socket=config.serve.control_socket,
        )

    @property
    def server(self) -> PolicyServer:
        """The policy server (its ``policy``, ``settings`` and ``counters``)."""
        return self.front_end.server
