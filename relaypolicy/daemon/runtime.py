"""The runtime every long-running command shares: one configuration, one table, one front end.

Theory of operation
-------------------
A :class:`Runtime` owns, for one configuration: the POP-before-SMTP table (through a
:class:`~relaypolicy.daemon.table.TableHost`), the watcher of ``[watch]`` (a
:class:`~relaypolicy.daemon.watch.WatchTask`), the control socket, the signals and the
stats. What speaks to the MTA is its :class:`FrontEnd`: the Postfix policy server for
``serve``, the SMTP server for ``smtpd``, none for a watcher alone. A front end only
listens, answers with the policy it is given, and reports its counters; adding one for
another MTA is a module with a front end class and a small :class:`Runtime` subclass.

Start, in order: the table (a replica connects), the front end (it binds its sockets:
``OSError`` when it cannot), the control socket, the watcher, the ``/metrics`` listener of
``[metrics]`` (:mod:`relaypolicy.daemon.metrics`, serving :meth:`Runtime.stats`). Stop, in
reverse: the metrics listener, the control socket, the front end (requests in hand are
answered), the watcher (its position saved, its maps emptied), the table (a last snapshot;
a replica sends what is queued).
:meth:`Runtime.run` returns the exit status: 0, or 74 (``EX_IOERR``) when the table's
state could not be saved.

Signals: SIGTERM and SIGINT stop; SIGHUP reloads the configuration when the runtime has a
file to reload (``serve``), and is logged and ignored otherwise (dying on it would lose the
table and leave exported maps full).

A reload (SIGHUP, or ``reload`` on the control socket) reads the file, builds the new policy
on the same table and only then swaps it in; a broken file is logged and the old policy
keeps answering. ``[log]`` and ``[watch]`` apply at once; the front end applies its own
section (:meth:`FrontEnd.update`) and names the keys that wait for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from relaypolicy.config import Config, load_config
from relaypolicy.daemon.control import TABLE_COMMANDS, read_command, start_control, table_command
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.daemon.metrics import MetricsServer, start_metrics
from relaypolicy.daemon.table import TableHost
from relaypolicy.daemon.watch import WatchTask
from relaypolicy.errors import ConfigError
from relaypolicy.iptable.base import ManagedTable
from relaypolicy.policies import Policy

__all__ = ["FrontEnd", "Runtime", "restart_only_changes"]


# The table is made once, at start: a reload cannot change how it is made.
_RESTART_ONLY_POP = (
    "ttl",
    "max_entries",
    "ipv6_prefix",
    "persist",
    "state",
    "max_staleness",
    "key_prefix",
)


class FrontEnd(Protocol):
    """What speaks to the MTA: a listener that answers with the policy it is given."""

    async def start(self) -> list[str]:
        """Listen; the bound addresses, for the log. Raises :class:`OSError`."""
        ...

    async def close(self) -> None:
        """Stop listening; answer the requests in hand."""
        ...

    def update(self, config: Config, policy: Policy) -> list[str]:
        """Apply a reloaded configuration and its policy; the keys of the front end's own
        section that changed and wait for a restart (sockets already bound)."""
        ...

    def stats(self) -> dict[str, object]:
        """The front end's counters, for ``relaypolicy ctl stats``."""
        ...


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The ``[pop_before_smtp]`` keys that differ and take effect only on restart."""
    if old.pop is None or new.pop is None:
        return []
    return [
        f"pop_before_smtp.{key}"
        for key in _RESTART_ONLY_POP
        if getattr(old.pop, key) != getattr(new.pop, key)
    ]


class Runtime:
    """One configuration's table, watcher, control socket, signals and front end.

    ``config_path``: the file a reload reads (``None``: no reload; SIGHUP is logged and
    ignored). ``control_socket``: where the control socket listens (empty: none).
    ``manages_logging``: a reload applies ``[log]`` (set by the command, which configured
    logging from the file in the first place).
    """

    name = "relaypolicy"
    log = logging.getLogger("relaypolicy.daemon")  # a command logs under its own name

    def __init__(
        self,
        config: Config,
        table: ManagedTable | None,
        front: FrontEnd | None,
        *,
        config_path: str | None = None,
        control_socket: str | Path | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self.front = front
        self.config_path = config_path
        self.control_socket = str(control_socket) if control_socket else ""
        self.host = TableHost(table)
        self.watch = WatchTask()
        self.counters: Counter[str] = Counter()
        if config_path is not None:
            self.counters["reloads"] = 0
        self.manages_logging = False
        self.started = time.time()
        self.bound: list[str] = []
        self._control: asyncio.Server | None = None
        self.metrics: MetricsServer | None = None
        self._stop = asyncio.Event()
        self._closed = False

    # --- start and stop ---------------------------------------------------------------

    async def start(self) -> list[str]:
        """Start the table, the front end, the control socket and the watcher."""
        await self.host.start()
        if self.front is not None:
            self.bound = await self.front.start()
        if self.control_socket:
            self._control = await start_control(
                self.control_socket, self.control, durable=self.host.sync
            )
        self.watch.start(self.config.watch, self.table)
        if self.config.metrics is not None:
            self.metrics = start_metrics(
                self.config.metrics, self.stats, asyncio.get_running_loop()
            )
        return self.bound

    def stop(self) -> None:
        """Ask :meth:`run` to stop (SIGTERM, SIGINT)."""
        self._stop.set()

    def hangup(self) -> None:
        """SIGHUP: reload when there is a file to reload; otherwise log it and go on."""
        if self.config_path is not None:
            self.reload()
            return
        self.log.warning("SIGHUP: %s does not reload; restart it to apply changes", self.name)

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status (0, or 74 when the table's state
        could not be saved). Raises :class:`OSError` when the front end cannot listen."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        try:
            bound = await self.start()
        except OSError:
            await self.close()
            raise
        self.started_log(bound)
        if self.metrics is not None:
            self.log.info("metrics on %s", self.metrics.where)
        await self._stop.wait()
        self.log.info("stopping: finishing requests in hand")
        await self.close()
        return self.host.exit_status

    def started_log(self, bound: list[str]) -> None:
        """What the start-up log says (a subclass adds its own lines)."""
        if bound:
            self.log.info("%s listening on %s", self.name, ", ".join(bound))

    async def close(self) -> None:
        """Stop everything :meth:`start` started, in reverse order; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)  # waits for the listener's thread
            self.metrics = None
        if self._control is not None:
            self._control.close()
            self._control = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_socket)
        if self.front is not None:
            await self.front.close()
        await self.watch.stop()
        await self.host.close()

    # --- reload -----------------------------------------------------------------------

    def reload(self) -> str:
        """Swap in the policy of the file as it is now; on any error keep the old one."""
        if self.config_path is None:
            return "reload failed: this command has no reload; restart it"
        try:
            config = load_config(self.config_path)
            if config.pop is not None and self.table is None:
                raise ConfigError(
                    f"{self.config_path}: [pop_before_smtp] was added; its table is made at "
                    "start: restart relaypolicy"
                )
            policy = config.build_policy(self.table)
        except (OSError, ValueError, TypeError) as exc:
            self.counters["reload-failures"] += 1
            self.log.error("reload failed, keeping the running configuration: %s", exc)
            return f"reload failed, keeping the running configuration: {exc}"
        old = self.config
        waiting = restart_only_changes(old, config)
        if config.metrics != old.metrics:  # the listener is bound once
            waiting.append("metrics.listen")
        if self.manages_logging and config.log != old.log:
            configure_logging(config.log)
        self.config = config
        if self.front is not None:
            waiting = self.front.update(config, policy) + waiting
        if config.watch != old.watch:
            asyncio.get_running_loop().create_task(self.watch.restart(config.watch, self.table))
        self.counters["reloads"] += 1
        if waiting:
            self.log.warning(
                "reloaded %s; changed settings that take effect only after a restart: %s",
                self.config_path,
                ", ".join(waiting),
            )
            return f"reloaded; restart to apply: {', '.join(waiting)}"
        self.log.info("reloaded %s", self.config_path)
        return "reloaded"

    # --- the control socket and stats -------------------------------------------------

    def control(self, line: bytes) -> dict[str, Any]:
        """Answer one control command (a JSON object with ``command``): ``stats``,
        ``reload`` (when there is a file to reload) and the table commands."""
        parsed = read_command(line)
        if isinstance(parsed, dict):
            return parsed
        command, message = parsed
        try:
            if command == "stats":
                return {"ok": True, "stats": self.stats()}
            if command == "reload" and self.config_path is not None:
                result = self.reload()
                return {"ok": result.startswith("reloaded"), "result": result}
            if command in TABLE_COMMANDS:
                return table_command(self.table, command, message)
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def stats(self) -> dict[str, Any]:
        """The front end's counters, the runtime's, the table's and the watcher's."""
        stats: dict[str, Any] = {} if self.front is None else dict(self.front.stats())
        stats.update(self.counters)
        stats["uptime-seconds"] = round(time.time() - self.started, 1)
        stats.update(self.host.stats())
        stats.update(self.watch.counters())
        return stats
