"""``relaypolicy serve``: the policy server, its configuration, signals and control socket.

- SIGTERM / SIGINT: stop listening, answer the requests in hand, save the POP-before-SMTP
  table (when ``persist`` is set), exit 0.
- SIGHUP: reload the configuration. The new file is validated and its policy built before
  anything changes; a broken file is logged and the old policy keeps serving. The table
  survives a reload (its ttl and limits are not changed by one: restart for that).
- The control socket (``serve.control_socket``, unix, JSON lines) answers ``table``,
  ``add``, ``remove``, ``stats`` and ``reload``; ``relaypolicy ctl`` is its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaypolicy.config import Config, ConfigError, load_config
from relaypolicy.postfix.server import PolicyServer, ServerSettings, parse_listener

if TYPE_CHECKING:
    from relaypolicy.watch.runner import LoginWatch

__all__ = ["Service", "configure_logging"]

log = logging.getLogger("relaypolicy.serve")
MAX_CONTROL_LINE = 64 * 1024


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "relaypolicy.decisions" and message.startswith("{"):
            payload = json.loads(message)
        else:
            payload = {"message": message}
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **payload,
        }
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Log to stderr, plain text or JSON lines (one object per line)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("relaypolicy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _server_settings(config: Config) -> ServerSettings:
    return ServerSettings(
        accept_action=config.serve.accept_action,
        other_states_action=config.serve.other_states_action,
        idle_timeout=config.serve.idle_timeout,
        max_connections=config.serve.max_connections,
        log_format=config.log.format,
    )


class Service:
    """A running policy service built from a configuration file."""

    def __init__(self, config_path: str | Path, *, listen: list[str] | None = None) -> None:
        self.config_path = str(config_path)
        self.config = load_config(self.config_path)
        self.listen_override = listen
        self.table: Any = self.config.make_pop_table()
        self.server = PolicyServer(
            self.config.build_policy(self.table), _server_settings(self.config)
        )
        self.server.counters["reloads"] = 0
        self.started = time.time()
        self.bound: list[str] = []
        self._control: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self.watch: LoginWatch | None = None
        self._watch_stop = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self) -> list[str]:
        specs = self.listen_override or list(self.config.serve.listen)
        listeners = [parse_listener(spec, mode=self.config.serve.socket_mode) for spec in specs]
        self.bound = await self.server.start(listeners)
        if self.config.serve.control_socket:
            path = Path(self.config.serve.control_socket)
            if path.exists() or path.is_symlink():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise OSError(f"{path} exists and is not a socket; not replacing it")
                path.unlink()
            self._control = await asyncio.start_unix_server(self._control_client, path=str(path))
            os.chmod(path, 0o600)  # the control socket can open the relay: owner only
        self._start_watch()
        return self.bound

    # --- the login watcher (``[watch]``) ---------------------------------------------

    def _start_watch(self) -> None:
        if self.config.watch is None or self.table is None:
            return
        from relaypolicy.watch.runner import LoginWatch, LoopTable

        table = LoopTable(self.table, asyncio.get_running_loop())
        self.watch = LoginWatch(self.config.watch, table)
        self._watch_stop = asyncio.Event()
        self._watch_task = asyncio.create_task(self._run_watch(self.watch, self._watch_stop))

    async def _run_watch(self, watch: LoginWatch, stop: asyncio.Event) -> None:
        # A failing watcher must not take the policy service down: log, wait, retry.
        while not stop.is_set():
            try:
                await watch.run(stop)
            except Exception:
                log.exception("watch: the watcher failed; retrying in 5 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)

    async def _stop_watch(self) -> None:
        self._watch_stop.set()
        if self._watch_task is not None:
            await self._watch_task
            self._watch_task = None

    def reload(self) -> str:
        """Swap in the policy of the file as it is now; on any error keep the old one."""
        try:
            config = load_config(self.config_path)
            policy = config.build_policy(self.table)
        except (ConfigError, OSError, ValueError, TypeError) as exc:
            self.server.counters["reload-failures"] += 1
            log.error("reload failed, keeping the running configuration: %s", exc)
            return f"reload failed, keeping the running configuration: {exc}"
        restart_watch = config.watch != self.config.watch
        self.config = config
        self.server.policy = policy
        if restart_watch:
            asyncio.get_running_loop().create_task(self._restart_watch())
        self.server.settings = _server_settings(config)
        self.server.counters["reloads"] += 1
        log.info("reloaded %s", self.config_path)
        return "reloaded"

    async def _restart_watch(self) -> None:
        await self._stop_watch()
        self.watch = None
        try:
            self._start_watch()
        except (OSError, ValueError) as exc:
            log.error("watch: cannot start with the reloaded configuration: %s", exc)
        else:
            log.info("watch: restarted with the reloaded configuration")

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        bound = await self.start()
        log.info("relaypolicy serving on %s", ", ".join(bound))
        expire_task = asyncio.create_task(self._expire_loop())
        await self._stop.wait()
        log.info("stopping: finishing requests in hand")
        expire_task.cancel()
        await self.close()
        return 0

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.serve.control_socket)
        await self.server.close()
        await self._stop_watch()
        self.save_table()

    def save_table(self) -> None:
        if self.table is not None and self.config.pop is not None and self.config.pop.persist:
            try:
                self.table.save(self.config.pop.persist)
                log.info("saved the POP-before-SMTP table to %s", self.config.pop.persist)
            except OSError as exc:
                log.error("could not save the table to %s: %s", self.config.pop.persist, exc)

    async def _expire_loop(self) -> None:
        while self.table is not None:
            await asyncio.sleep(5)
            self.table.expire()

    # --- control socket ---------------------------------------------------------------

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(b'{"ok": false, "error": "line too long"}\n')
                    return
                if len(line) > MAX_CONTROL_LINE:
                    writer.write(b'{"ok": false, "error": "line too long"}\n')
                    return
                reply = self.control(line)
                writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    def control(self, line: bytes) -> dict[str, Any]:
        """Answer one control command (a JSON object with ``command``)."""
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "not a JSON object"}
        if not isinstance(message, dict) or not isinstance(message.get("command"), str):
            return {"ok": False, "error": 'expected {"command": ...}'}
        command = message["command"]
        try:
            if command == "stats":
                return {"ok": True, "stats": self.stats()}
            if command == "reload":
                result = self.reload()
                return {"ok": result == "reloaded", "result": result}
            if command in ("table", "add", "remove"):
                return self._table_command(command, message)
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def stats(self) -> dict[str, Any]:
        counters: dict[str, Any] = dict(self.server.counters)
        counters["connections-open"] = self.server.connections
        counters["uptime-seconds"] = round(time.time() - self.started, 1)
        if self.table is not None:
            counters["table-entries"] = len(self.table)
            counters["pop-ttl"] = self.table.ttl
        if self.watch is not None:
            for key, value in self.watch.counters().items():
                counters[f"watch-{key}"] = value
        return counters

    def _table_command(self, command: str, message: dict[str, Any]) -> dict[str, Any]:
        if self.table is None:
            return {"ok": False, "error": "POP-before-SMTP is not configured"}
        if command == "table":
            now = self.table.clock()
            entries = [
                {"address": e.address, "user": e.user, "expires_in": round(e.expires_at - now, 1)}
                for e in self.table.entries()
            ]
            return {"ok": True, "entries": entries}
        address = message.get("address")
        if not isinstance(address, str):
            return {"ok": False, "error": '"address" must be a string'}
        if command == "remove":
            removed = self.table.remove(address)
            log.info("control: removed %s from the table (%s)", address, removed)
            return {"ok": True, "removed": bool(removed)}
        ttl = message.get("ttl")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0
        ):
            return {"ok": False, "error": '"ttl" must be a positive number of seconds'}
        user = message.get("user")
        if user is not None and not isinstance(user, str):
            return {"ok": False, "error": '"user" must be a string'}
        self.table.record(address, user=user, ttl=ttl)
        log.info("control: added %s to the table", address)
        return {"ok": True, "added": address}
