"""Every error relaypolicy raises on purpose, in one tree.

Catch :class:`RelayPolicyError` to catch them all. Each class also subclasses the
built-in exception it refines, so code that already catches ``ValueError`` or ``OSError``
keeps working and nobody needs a comment explaining why a tuple is caught::

    RelayPolicyError
    ├── ConfigError(ValueError)        a configuration file or setting that cannot be used
    ├── DomainError(ValueError)        a domain that is not syntactically valid
    ├── TableFileError(ValueError)     a saved POP-before-SMTP table that cannot be loaded
    ├── PasswordFileError(ValueError)  an smtpd password file or hash that cannot be used
    ├── ScenarioError(ValueError)      a scenario file (relaypolicy test) that cannot be used
    ├── ProtocolError(ValueError)      a peer broke the Postfix policy protocol
    ├── UsageError(ValueError)         a command line we cannot act on (exit 64)
    ├── ExportError(OSError)           an exported map could not be written (postmap failed)
    ├── AuditError(ConnectionError)    an SMTP audit could not run (no connection, EHLO refused)
    └── StaleTable(RuntimeError)       a shared table that has not heard from Redis in time

The messages name what is wrong and where (the file, the key, the line): they are meant
for the person who has to fix it.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "ConfigError",
    "DomainError",
    "ExportError",
    "PasswordFileError",
    "ProtocolError",
    "RelayPolicyError",
    "ScenarioError",
    "StaleTable",
    "TableFileError",
    "UsageError",
]


class RelayPolicyError(Exception):
    """The root of every error relaypolicy raises on purpose."""


class ConfigError(RelayPolicyError, ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


class DomainError(RelayPolicyError, ValueError):
    """A domain that is not syntactically valid; the message says why."""


class TableFileError(RelayPolicyError, ValueError):
    """A saved table that cannot be loaded: the message names the file and the fault."""


class PasswordFileError(RelayPolicyError, ValueError):
    """A password file or hash that cannot be used; the message says where and why."""


class ScenarioError(RelayPolicyError, ValueError):
    """A scenario file that cannot be used; the message names the file, the case and key."""


class ProtocolError(RelayPolicyError, ValueError):
    """The peer broke the Postfix policy protocol; the message says how.

    The connection is unusable afterwards: close it.
    """


class UsageError(RelayPolicyError, ValueError):
    """A command line we cannot act on; the command exits 64 (``EX_USAGE``)."""


class ExportError(RelayPolicyError, OSError):
    """A map could not be written (postmap failed, or no postmap to run)."""


class AuditError(RelayPolicyError, ConnectionError):
    """The audit could not run: no connection, EHLO or STARTTLS refused."""


class StaleTable(RelayPolicyError, RuntimeError):
    """A shared table has not heard from Redis for longer than its ``max_staleness``."""
