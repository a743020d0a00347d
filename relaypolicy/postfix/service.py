"""``relaypolicy serve``: the policy server, its configuration, signals and control socket.

- SIGTERM / SIGINT: stop listening, answer the requests in hand, save the POP-before-SMTP
  table (when ``persist`` is set), exit 0 (74, EX_IOERR, when it could not be saved).
- SIGHUP: reload the configuration. The new file is validated and its policy built before
  anything changes; a broken file is logged and the old policy keeps serving. The table
  survives a reload (its ttl and limits are not changed by one: restart for that).
- The control socket (``serve.control_socket``, unix, JSON lines) answers ``table``,
  ``add``, ``remove``, ``stats`` and ``reload``; ``relaypolicy ctl`` is its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import attrs

from relaypolicy.config import Config, ConfigError, load_config
from relaypolicy.control import TABLE_COMMANDS, read_command, start_control, table_command
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.iptable.host import TableHost
from relaypolicy.postfix.server import PolicyServer, ServerSettings, parse_listener
from relaypolicy.watch.runner import WatchTask

__all__ = ["Service", "configure_logging"]

log = logging.getLogger("relaypolicy.serve")


def _server_settings(config: Config) -> ServerSettings:
    return attrs.evolve(config.serve, log_format=config.log.format)


# Settings a reload cannot apply: the sockets are bound and the table is built once.
_RESTART_ONLY_SERVE = ("listen", "socket_mode", "control_socket")
_RESTART_ONLY_POP = (
    "ttl",
    "max_entries",
    "ipv6_prefix",
    "persist",
    "state",
    "max_staleness",
    "key_prefix",
)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys that differ between ``old`` and ``new`` and take effect only on restart."""
    changed = [
        f"serve.{key}"
        for key in _RESTART_ONLY_SERVE
        if getattr(old.serve, key) != getattr(new.serve, key)
    ]
    if old.pop is not None and new.pop is not None:
        changed += [
            f"pop_before_smtp.{key}"
            for key in _RESTART_ONLY_POP
            if getattr(old.pop, key) != getattr(new.pop, key)
        ]
    return changed


class Service:
    """A running policy service built from a configuration file.

    :meth:`reload` applies the policy (domains, networks, chain, ``bind_sender``…), the
    ``[serve]`` limits and actions, ``[watch]`` and, when :attr:`manages_logging` is set
    (``relaypolicy serve`` sets it), ``[log]``. The listening sockets, the control socket
    and the POP-before-SMTP table's own settings (``ttl``, ``state``, ``persist``…) are
    fixed at start: a reload that changes them logs which ones wait for a restart.
    """

    def __init__(self, config_path: str | Path, *, listen: list[str] | None = None) -> None:
        self.config_path = str(config_path)
        self.config = load_config(self.config_path)
        self.listen_override = listen
        self.host = TableHost(
            self.config.make_pop_table(),
            persist=self.config.pop.persist if self.config.pop is not None else "",
        )
        self.table: Any = self.host.table  # with persist: the journalled table
        self.server = PolicyServer(
            self.config.build_policy(self.table), _server_settings(self.config)
        )
        self.server.counters["reloads"] = 0
        self.manages_logging = False
        self.started = time.time()
        self.bound: list[str] = []
        self._control: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self.watch = WatchTask()

    async def start(self) -> list[str]:
        await self.host.start()
        specs = self.listen_override or list(self.config.serve.listen)
        listeners = [parse_listener(spec, mode=self.config.serve.socket_mode) for spec in specs]
        self.bound = await self.server.start(listeners)
        if self.config.serve.control_socket:
            self._control = await start_control(
                self.config.serve.control_socket, self.control, durable=self.host.sync
            )
        self.watch.start(self.config.watch, self.table)
        return self.bound

    def reload(self) -> str:
        """Swap in the policy of the file as it is now; on any error keep the old one."""
        try:
            config = load_config(self.config_path)
            if config.pop is not None and self.table is None:
                raise ConfigError(
                    f"{self.config_path}: [pop_before_smtp] was added; its table is made at "
                    "start: restart relaypolicy"
                )
            policy = config.build_policy(self.table)
        except (OSError, ValueError, TypeError) as exc:
            self.server.counters["reload-failures"] += 1
            log.error("reload failed, keeping the running configuration: %s", exc)
            return f"reload failed, keeping the running configuration: {exc}"
        restart_watch = config.watch != self.config.watch
        waiting = restart_only_changes(self.config, config)
        if self.manages_logging and config.log != self.config.log:
            configure_logging(config.log.level, config.log.format)
        self.config = config
        self.server.policy = policy
        if restart_watch:
            asyncio.get_running_loop().create_task(self.watch.restart(config.watch, self.table))
        self.server.settings = _server_settings(config)
        self.server.counters["reloads"] += 1
        if waiting:
            log.warning(
                "reloaded %s; changed settings that take effect only after a restart: %s",
                self.config_path,
                ", ".join(waiting),
            )
            return f"reloaded; restart to apply: {', '.join(waiting)}"
        log.info("reloaded %s", self.config_path)
        return "reloaded"

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        bound = await self.start()
        log.info("relaypolicy serving on %s", ", ".join(bound))
        await self._stop.wait()
        log.info("stopping: finishing requests in hand")
        await self.close()
        return self.host.exit_status

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.serve.control_socket)
        await self.server.close()
        await self.watch.stop()
        await self.host.close()

    # --- control socket ---------------------------------------------------------------

    def control(self, line: bytes) -> dict[str, Any]:
        """Answer one control command (a JSON object with ``command``)."""
        parsed = read_command(line)
        if isinstance(parsed, dict):
            return parsed
        command, message = parsed
        try:
            if command == "stats":
                return {"ok": True, "stats": self.stats()}
            if command == "reload":
                result = self.reload()
                return {"ok": result.startswith("reloaded"), "result": result}
            if command in TABLE_COMMANDS:
                return table_command(self.table, command, message)
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def stats(self) -> dict[str, Any]:
        counters: dict[str, Any] = dict(self.server.counters)
        counters["connections-open"] = self.server.connections
        counters["uptime-seconds"] = round(time.time() - self.started, 1)
        counters.update(self.host.stats())
        counters.update(self.watch.counters())
        return counters
