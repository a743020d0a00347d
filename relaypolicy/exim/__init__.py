"""Exim's socket: a one-line protocol Exim's ``${readsocket}`` speaks from ``acl_smtp_rcpt``.

:mod:`relaypolicy.exim.codec` is the protocol, sans I/O; :mod:`relaypolicy.exim.settings`
reads the ``[exim]`` section. The daemon that listens is :mod:`relaypolicy.daemon.exim`;
the ACL that asks it is in ``docs/exim.md`` and ``contrib/exim/``.
"""

from __future__ import annotations

from relaypolicy.exim.codec import (
    FIELDS,
    MAX_LINE,
    EximConnection,
    EximRequest,
    encode_answer,
    encode_request,
    rcpt_path,
)
from relaypolicy.exim.settings import EXIM_KEYS, EximSettings, parse_exim

__all__ = [
    "EXIM_KEYS",
    "FIELDS",
    "MAX_LINE",
    "EximConnection",
    "EximRequest",
    "EximSettings",
    "encode_answer",
    "encode_request",
    "parse_exim",
    "rcpt_path",
]
