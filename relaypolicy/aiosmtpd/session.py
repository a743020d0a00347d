"""What an aiosmtpd session says, as a :class:`~relaypolicy.model.Request`.

:func:`request_from_session` maps aiosmtpd's session, envelope and transport to the
request a policy reads (table in ``docs/aiosmtpd.md``). TLS is read from the transport
(:func:`tls_facts`), because with implicit TLS aiosmtpd never fills ``session.ssl``
(aiosmtpd issues #274, #281); the client certificate's key fingerprint needs its
SubjectPublicKeyInfo (:func:`subject_public_key_info`, RFC 5280 section 4.1). Part of
:mod:`relaypolicy.aiosmtpd`, which checks that the ``aiosmtpd`` extra is installed.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from aiosmtpd.smtp import SMTP, Envelope, Session

from relaypolicy.model import Request

__all__ = [
    "UNNAMED_LOGIN",
    "TlsFacts",
    "request_from_session",
    "subject_public_key_info",
    "tls_facts",
]

UNNAMED_LOGIN = "<unnamed>"  # an authenticator that succeeded without saying who logged in


class TlsFacts(NamedTuple):
    """The TLS facts of a connection, in the form Postfix gives its policy services."""

    protocol: str = ""  # "TLSv1.3"; empty: no TLS
    cipher: str = ""
    ccert_subject: str = ""  # the client certificate's CN, when it was verified
    ccert_fingerprint: str = ""  # SHA-256 of the certificate, "AB:CD:..."
    ccert_pubkey_fingerprint: str = ""  # SHA-256 of its SubjectPublicKeyInfo


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in digest)


def _der_element(der: bytes, offset: int) -> tuple[int, int, int]:
    """The tag, content start and end of the DER element at ``offset`` (ValueError if cut)."""
    if offset + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[offset], der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def subject_public_key_info(certificate: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER X.509 certificate (RFC 5280 section 4.1),
    whose digest is Postfix's ``ccert_pubkey_fingerprint``; the standard library has no
    parser for it, and walking seven elements needs none."""
    tag, start, _ = _der_element(certificate, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, position, _ = _der_element(certificate, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, _, end = _der_element(certificate, position)
    if tag == 0xA0:  # [0] EXPLICIT version, absent for v1
        position = end
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, position = _der_element(certificate, position)
    tag, _, end = _der_element(certificate, position)
    if tag != 0x30:
        raise ValueError("no SubjectPublicKeyInfo")
    return certificate[position:end]


def tls_facts(server: SMTP | None, session: Session | None) -> TlsFacts:
    """Protocol, cipher and client certificate, from the transport or else ``session.ssl``.

    The transport knows about implicit TLS too, where aiosmtpd leaves ``session.ssl`` unset.
    A client certificate is there only if the ``SSLContext`` asked for (and verified) one.
    """
    ssl_object: Any = None
    transport = getattr(server, "transport", None)
    if transport is not None:
        ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None and session is not None and isinstance(session.ssl, dict):
        ssl_object = session.ssl.get("ssl_object")
    if ssl_object is None:
        return TlsFacts()
    cipher = ssl_object.cipher()
    facts = TlsFacts(protocol=ssl_object.version() or "", cipher=cipher[0] if cipher else "")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return facts
    try:
        pubkey = _colon_hex(hashlib.sha256(subject_public_key_info(der)).digest())
    except ValueError:
        pubkey = ""
    names = [pair for rdn in (ssl_object.getpeercert() or {}).get("subject", ()) for pair in rdn]
    subject = next((value for name, value in reversed(names) if name == "commonName"), "")
    return facts._replace(
        ccert_subject=subject,
        ccert_fingerprint=_colon_hex(hashlib.sha256(der).digest()),
        ccert_pubkey_fingerprint=pubkey,
    )


def _sasl(session: Session) -> tuple[str, str]:
    """``(username, mechanism)`` of an authenticated session, ``("", "")`` otherwise."""
    if not session.authenticated:
        return "", ""
    data = session.auth_data
    login = data if isinstance(data, str | bytes) else getattr(data, "login", None)
    mechanism = getattr(data, "mechanism", "")
    if isinstance(login, bytes):
        login = login.decode("utf-8", "replace")
    if not isinstance(login, str) or not login:
        login = UNNAMED_LOGIN
    return login, mechanism if isinstance(mechanism, str) else ""


def _endpoint(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return "", 0


def request_from_session(
    server: SMTP | None, session: Session, envelope: Envelope | None, recipient: str
) -> Request:
    """The :class:`Request` for one recipient of an aiosmtpd session.

    Raises :class:`ValueError` when the client address is unknown (a unix-socket listener
    has none): relay control cannot decide without it.
    """
    client, client_port = _endpoint(session.peer)
    transport = getattr(server, "transport", None)
    local, server_port = _endpoint(transport.get_extra_info("sockname") if transport else None)
    proxy = session.proxy_data
    if proxy is not None and proxy.valid and proxy.src_addr is not None:
        # Behind a PROXY-protocol balancer (aiosmtpd's proxy_protocol_timeout): the real
        # client is the one the balancer reports, and so is the port it came in on.
        client, client_port = str(proxy.src_addr), proxy.src_port or 0
        local, server_port = str(proxy.dst_addr or ""), proxy.dst_port or 0
    sender = envelope.mail_from if envelope is not None and envelope.mail_from else ""
    login, mechanism = _sasl(session)
    tls = tls_facts(server, session)
    return Request(
        client_address=client,
        client_port=client_port,
        server_address=local,
        server_port=server_port,
        helo_name=session.host_name or "",
        sender="" if sender == "<>" else sender,
        recipient=recipient,
        sasl_username=login,
        sasl_method=mechanism,
        encryption_protocol=tls.protocol,
        encryption_cipher=tls.cipher,
        ccert_subject=tls.ccert_subject,
        ccert_fingerprint=tls.ccert_fingerprint,
        ccert_pubkey_fingerprint=tls.ccert_pubkey_fingerprint,
    )
