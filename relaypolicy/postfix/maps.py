"""Postfix lookup tables the import reads: sender login maps and client certificates.

``inline:{ key=value, ... }`` is read from the parameter itself. ``hash:``, ``btree:``,
``lmdb:``, ``cdb:`` and ``texthash:`` name a file: the import reads its source text (the
file postmap(1) compiles, ``/etc/postfix/sender_logins`` for
``hash:/etc/postfix/sender_logins``), through the ``read_file`` it is given, and notes that
the compiled table may differ when postmap has not run since. Any other type (``pcre:``,
``regexp:``, ``ldap:``, ``mysql:``, ``proxy:``...) is refused: its answers cannot be listed.
"""

from __future__ import annotations

from collections.abc import Callable

from relaypolicy.postfix.postconf import split_list
from relaypolicy.senders import sender_key

__all__ = ["MapReader", "map_lines"]

_READABLE = ("hash", "btree", "texthash", "lmdb", "cdb")


class MapReader:
    """Reads tables for the import; ``refuse(parameter, value, reason)`` records what it
    cannot read, ``notes`` collects the caveats."""

    def __init__(
        self,
        read_file: Callable[[str], str] | None,
        refuse: Callable[[str, str, str], None],
        notes: list[str],
    ) -> None:
        self.read_file = read_file
        self.refuse = refuse
        self.notes = notes

    def table(self, parameter: str, text: str) -> list[tuple[str, str]] | None:
        """(key, value) pairs of one Postfix table, or ``None`` and a refusal."""
        kind, _, name = text.partition(":")
        if kind == "inline" and name.startswith("{") and name.endswith("}"):
            pairs = []
            for entry in split_list(name[1:-1]):
                key, equals, value = entry.strip("{} ").partition("=")
                if not equals:
                    self.refuse(parameter, text, f"inline entry {entry!r} is not key=value")
                    return None
                pairs.append((key.strip(), value.strip()))
            return pairs
        if kind not in _READABLE or not name.startswith("/"):
            self.refuse(
                parameter,
                text,
                f"a {kind or 'file'} table: relaypolicy reads hash, btree, lmdb, cdb, "
                "texthash and inline tables only (their source text)",
            )
        elif self.read_file is None:
            self.refuse(parameter, text, "the table's source file cannot be read here")
        else:
            try:
                content = self.read_file(name)
            except OSError as exc:
                self.refuse(parameter, text, f"cannot read {name}: {exc.strerror or exc}")
                return None
            if kind != "texthash":
                self.notes.append(
                    f"{parameter}: read from {name}, the source of {text}: "
                    "run postmap if it changed since"
                )
            return map_lines(content)
        return None

    def sender_logins(self, text: str) -> list[tuple[str, list[str]]]:
        """(sender, logins) of ``smtpd_sender_login_maps`` (its expanded ``text``), in the
        order read; the first table that has a sender wins, as Postfix's lookup order."""
        logins: dict[str, tuple[str, list[str]]] = {}
        for table in split_list(text):
            for key, value in self.table("smtpd_sender_login_maps", table) or []:
                try:
                    lookup, domain = sender_key(key)
                except ValueError as exc:
                    self.refuse("smtpd_sender_login_maps", f"{key} {value}", f"{exc}")
                    continue
                marked = ("@" if domain else "") + lookup
                names = value.replace(",", " ").split()
                if marked not in logins and names:  # the first table that has it wins
                    logins[marked] = (key, names)
        if not logins:
            self.refuse("smtpd_sender_login_maps", text or "(empty)", "no sender to translate")
        return list(logins.values())

    def fingerprints(self, digest: str, text: str) -> list[str]:
        """The fingerprints of ``relay_clientcerts`` (its expanded ``text``), when the
        ``smtpd_tls_fingerprint_digest`` is one relaypolicy pins (SHA-256 or longer)."""
        digest = digest.lower()
        if digest not in ("sha256", "sha384", "sha512"):
            self.refuse(
                "smtpd_tls_fingerprint_digest",
                digest,
                "relaypolicy pins SHA-256 (or longer) fingerprints",
            )
            return []
        found = [
            key
            for table in split_list(text)
            for key, _ in self.table("relay_clientcerts", table) or []
        ]
        if not found:
            self.refuse(
                "relay_clientcerts",
                text or "(empty)",
                "permit_tls_clientcerts without a certificate to translate",
            )
        return found


def map_lines(content: str) -> list[tuple[str, str]]:
    """Key/value pairs of a Postfix table's source text (postmap(1) input format)."""
    pairs: list[tuple[str, str]] = []
    for raw in content.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and pairs:
            key, value = pairs[-1]
            pairs[-1] = (key, f"{value} {raw.strip()}")
            continue
        key, _, value = raw.strip().partition(" ")
        if "\t" in key:
            key, _, rest = key.partition("\t")
            value = f"{rest} {value}"
        pairs.append((key, value.strip()))
    return pairs
