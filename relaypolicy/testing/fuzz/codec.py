"""The ``codec`` target: bytes into the Postfix policy protocol codec.

An input is the byte stream of one connection. It is fed three ways to a fresh
:class:`~relaypolicy.postfix.codec.PolicyConnection`: line by line (which keeps the codec
on its line-at-a-time parser, the reference), whole (its one-pass parser takes each whole
request), and cut at points drawn from the input's CRC. Half the inputs (by that CRC)
run with tiny limits, so the limits are reached often. The oracle:

- ``receive_data`` raises only :class:`~relaypolicy.postfix.codec.ProtocolError` (what
  the asyncio server catches), and once failed it refuses more data;
- the three feeds agree: the same requests and the same error, or no error; when the
  stream fails, the requests a feed returned before its error are a prefix of the
  reference's;
- limits hold: no request has more attributes than ``max_attributes``, no attribute line
  is longer than ``max_line``, no request larger than ``max_request``, and the bytes the
  codec keeps between calls never exceed ``max_line``;
- ``PolicyRequest.to_request()`` raises only a :class:`ValueError` naming an address or
  port field (the server answers those with its action for unusable requests).

Hangs (work that grows faster than the input) are the engine's per-input time limit.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from relaypolicy.postfix.codec import PolicyConnection, PolicyRequest, ProtocolError
from relaypolicy.testing.fuzz.engine import ORACLE, Problem
from relaypolicy.testing.fuzz.mutate import mutate_bytes

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["CodecTarget"]

TINY_LIMITS = {"max_line": 64, "max_request": 256, "max_attributes": 8}
DEFAULT_LIMITS = {"max_line": 8 * 1024, "max_request": 64 * 1024, "max_attributes": 1000}
_CONTRACT_ERRORS = ("client_address:", "server_address:", "client_port:", "server_port:")

# SMTPD_POLICY_README's example request (Postfix 3.8 attributes), and variations.
POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"helo_name=some.domain.tld\nqueue_id=8045F2AB23\nsender=foo@bar.tld\n"
    b"recipient=bar@foo.tld\nrecipient_count=0\nclient_address=1.2.3.4\n"
    b"client_name=another.domain.tld\nreverse_client_name=another.domain.tld\n"
    b"instance=123.456.7\nsasl_method=plain\nsasl_username=you\nsasl_sender=\nsize=12345\n"
    b"ccert_subject=solaris9.porcupine.org\nccert_issuer=Wietse+20Venema\n"
    b"ccert_fingerprint=C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04\n"
    b"encryption_protocol=TLSv1/SSLv3\nencryption_cipher=DHE-RSA-AES256-SHA\n"
    b"encryption_keysize=256\netrn_domain=\nstress=\n"
    b"ccert_pubkey_fingerprint=68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40\n"
    b"client_port=1234\npolicy_context=submission\nserver_address=10.3.2.1\n"
    b"server_port=54321\ncompatibility_level=major.minor.patch\nmail_version=3.8.0\n\n"
)
SHORT_REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=203.0.113.7\n"
    b"sender=\nrecipient=user%aho.jp@example.org\n\n"
)
SEEDS = (
    POSTFIX_REQUEST,
    SHORT_REQUEST,
    POSTFIX_REQUEST + SHORT_REQUEST,
    POSTFIX_REQUEST.replace(b"\n", b"\r\n"),
    SHORT_REQUEST.replace(b"client_address=203.0.113.7", b"client_address=unknown"),
    SHORT_REQUEST.replace(b"user%aho.jp", "us\u00e9r".encode()),
    SHORT_REQUEST.replace(b"user%aho.jp@example.org", "a@b\u2024c.jp".encode()),
    SHORT_REQUEST.replace(b"RCPT", b"DATA") + SHORT_REQUEST,
    SHORT_REQUEST[:-1],  # a request still open
    b"request=smtpd_access_policy\n" + b"x=" + b"y" * 9000 + b"\n\n",
    b"request=smtpd_access_policy\n" + b"".join(b"a%d=1\n" % n for n in range(1200)) + b"\n",
    b"\n",
    b"request=junk\n\n",
)


def _line_chunks(data: bytes) -> list[bytes]:
    chunks, start = [], 0
    while (end := data.find(b"\n", start)) != -1:
        chunks.append(data[start : end + 1])
        start = end + 1
    if start < len(data):
        chunks.append(data[start:])
    return chunks


def _cut(data: bytes, rng: random.Random) -> list[bytes]:
    if len(data) <= 200 and rng.random() < 0.3:
        return [data[index : index + 1] for index in range(len(data))]
    points = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(1, 6)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


Attributes = dict[str, str]


def _feed(
    make: Callable[..., PolicyConnection],
    chunks: Sequence[bytes],
    limits: dict[str, int],
    problems: list[Problem],
) -> tuple[list[Attributes], str | None]:
    connection = make(**limits)
    got: list[Attributes] = []
    for chunk in chunks:
        try:
            requests = connection.receive_data(chunk)
        except ProtocolError as exc:
            try:
                connection.receive_data(b"\n")
            except ProtocolError:
                pass
            else:
                problems.append(Problem(ORACLE, "a failed connection took more data"))
            return got, str(exc)
        got += [request.attributes for request in requests]
        # The partial line the codec keeps between calls (a private field, read only here).
        if len(connection._buffer) > limits["max_line"]:
            problems.append(Problem(ORACLE, "kept more than max_line bytes between calls"))
    return got, None


def _limit_problems(requests: list[Attributes], limits: dict[str, int]) -> list[Problem]:
    problems = []
    for attributes in requests:
        if len(attributes) > limits["max_attributes"]:
            problems.append(Problem(ORACLE, "request over max_attributes", f"{len(attributes)}"))
        size = 1
        for name, value in attributes.items():
            line = len(name.encode()) + 1 + len(value.encode("utf-8", "surrogatepass"))
            size += line + 1
            if line > limits["max_line"]:
                problems.append(Problem(ORACLE, "attribute line over max_line", name[:40]))
        if size > limits["max_request"]:
            problems.append(Problem(ORACLE, "request over max_request", f"{size}"))
    return problems


class CodecTarget:
    """Byte streams through :class:`~relaypolicy.postfix.codec.PolicyConnection` (or the
    ``connection`` class given: a test gives a broken one to see the oracle fire)."""

    name = "codec"

    def __init__(self, connection: Callable[..., PolicyConnection] = PolicyConnection) -> None:
        self.connection = connection

    def corpus(self) -> Sequence[bytes]:
        return SEEDS

    def mutate(self, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
        return mutate_bytes(rng, rng.choice(corpus), corpus)

    def check(self, value: bytes) -> list[Problem]:
        crc = zlib.crc32(value)
        limits = TINY_LIMITS if crc & 1 else DEFAULT_LIMITS
        rng = random.Random(crc)  # noqa: S311 - cut points, not secrets
        problems: list[Problem] = []
        reference, error = _feed(self.connection, _line_chunks(value), limits, problems)
        for feed, chunks in (("whole", [value]), ("cut", _cut(value, rng))):
            got, got_error = _feed(self.connection, chunks, limits, problems)
            if (got_error is None) != (error is None):
                problems.append(
                    Problem(
                        ORACLE,
                        f"{feed} feed and line feed disagree on failing",
                        f"line: {error!r}, {feed}: {got_error!r}",
                    )
                )
            elif got != (reference if error is None else reference[: len(got)]):
                problems.append(Problem(ORACLE, f"{feed} feed parsed other requests"))
            elif got_error != error:
                problems.append(
                    Problem(
                        ORACLE,
                        f"{feed} feed names another error",
                        f"line: {error!r}, {feed}: {got_error!r}",
                    )
                )
        problems += _limit_problems(reference, limits)
        for attributes in reference:
            problems += _to_request(attributes)
        return problems

    def strategy(self) -> SearchStrategy[bytes]:
        # Hypothesis is a development extra: its strategies load only for that engine.
        from relaypolicy.testing.fuzz.strategies import policy_streams

        return policy_streams(SEEDS)


def _to_request(attributes: Attributes) -> list[Problem]:
    try:
        PolicyRequest(attributes).to_request()
    except ValueError as exc:
        if not str(exc).startswith(_CONTRACT_ERRORS):
            raise
    return []
