"""Hypothesis strategies for the fuzz targets' structured inputs (imports Hypothesis).

Only the Hypothesis engine imports this module. Each strategy mixes whole-range noise
with inputs built from the pieces that matter to its target, and with the target's own
corpus, so that most examples get past the first syntax check.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from relaypolicy.postfix.codec import POSTFIX_ATTRIBUTES
from relaypolicy.testing.fuzz.mutate import INTERESTING_CHARS, INTERESTING_TOKENS
from relaypolicy.testing.fuzz.relay import CLIENTS
from relaypolicy.testing.strategies import mailboxes, routed_recipients

__all__ = ["log_blocks", "policy_streams", "request_fields", "table_files"]

# Every code point, lone surrogates included (st.characters leaves them out by default).
any_char = st.characters(exclude_categories=())
_PIECES = (
    *INTERESTING_TOKENS,
    *INTERESTING_CHARS,
    "user",
    "example.org",
    "aho.jp",
    "backup.example.net",
    "xn--r8jz45g.jp",
)


def _noise(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(any_char, max_size=max_size)


def address_like() -> st.SearchStrategy[str]:
    """Strings shaped like envelope addresses: routing tricks, literals, quotes, source
    routes, IDNA-refused code points, very long parts, and noise."""
    pieces = st.lists(st.one_of(st.sampled_from(_PIECES), _noise(6)), min_size=1, max_size=10).map(
        "".join
    )
    long = st.tuples(st.sampled_from(["a", "a.", "%", "@", "\u2024"]), st.integers(60, 3000))
    return st.one_of(
        pieces,
        mailboxes(["example.org", "例え.jp", "aho.jp"]),
        routed_recipients(["example.org", "[192.0.2.1]"], ["aho.jp", "[203.0.113.1]"]),
        long.map(lambda pair: pair[0] * pair[1] + "@example.org"),
        st.tuples(pieces, st.sampled_from(["<{}>", "@a,@b:{}", '"{}"@example.org'])).map(
            lambda pair: pair[1].format(pair[0])
        ),
        _noise(),
    )


def request_fields(corpus: Sequence[dict[str, str]]) -> st.SearchStrategy[dict[str, str]]:
    """Request field mappings for the ``request`` target."""
    clients = st.one_of(st.sampled_from(CLIENTS), st.ip_addresses().map(str), _noise(20))
    built = st.fixed_dictionaries(
        {
            "client_address": clients,
            "recipient": address_like(),
            "sender": st.one_of(st.just(""), address_like()),
            "helo_name": st.one_of(st.just("mail.aho.jp"), _noise()),
            "sasl_username": st.one_of(st.sampled_from(["", "taro", "mallory"]), _noise(10)),
            "sasl_method": st.sampled_from(["", "PLAIN"]),
        },
        optional={"encryption_protocol": st.sampled_from(["", "TLSv1.3"])},
    )
    return st.one_of(built, st.sampled_from(list(corpus)))


def policy_streams(corpus: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Byte streams for the ``codec`` target: requests of random attributes, with noise."""
    names = st.one_of(
        st.sampled_from([*POSTFIX_ATTRIBUTES, "request", "protocol_state", ""]),
        st.text(max_size=10),
    )
    values = st.one_of(st.sampled_from(["smtpd_access_policy", "RCPT", "1.2.3.4"]), _noise())
    line = st.tuples(names, values).map(
        lambda pair: f"{pair[0]}={pair[1]}".encode("utf-8", "surrogatepass")
    )
    ending = st.sampled_from([b"\n", b"\r\n", b""])
    request = st.tuples(st.lists(st.tuples(line, ending), max_size=12), ending).map(
        lambda drawn: (
            b"request=smtpd_access_policy\n"
            + b"".join(text + end for text, end in drawn[0])
            + b"\n"
            + drawn[1]
        )
    )
    stream = st.lists(st.one_of(request, st.binary(max_size=40)), min_size=1, max_size=4)
    return st.one_of(stream.map(b"".join), st.sampled_from(list(corpus)), st.binary())


def log_blocks(corpus: Sequence[str]) -> st.SearchStrategy[str]:
    """Log text for the ``parsers`` target: real lines, lines with drawn user names and
    addresses, noise, joined by LF or CRLF."""
    users = st.one_of(st.text(max_size=12), _noise(12), st.sampled_from(_PIECES))
    addresses = st.one_of(st.ip_addresses().map(str), st.sampled_from(["6.6.6.6,", "", "x"]))
    templates = st.sampled_from(
        [
            "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<{u}>, method=PLAIN, "
            "rip={a}, lip=192.0.2.1, mpid=1, TLS",
            "Nov 28 09:03:29 pop3-login: Info: Logged in: user=<{u}>, method=P, rip={a}",
            "Nov 28 09:03:28 mail imapd[1]: LOGIN, user={u}, ip=[{a}], port=[1], protocol=IMAP",
            "Nov 28 09:03:28 mail cyrus/imap[1]: login: host [{a}] {u} plain User logged in",
            'Nov 28 09:03:28 mail qpopper[1]: (v4.0.5) POP login by user "{u}" at (h) {a}',
            "Nov 28 09:03:28 mail ipop3d[1]: Login user={u} host=h [{a}] nmsgs=1/1",
            "Nov 28 09:03:28 mail pop3d[1]: ok {u} {a}",
        ]
    )
    drawn = st.builds(lambda t, u, a: t.format(u=u, a=a), templates, users, addresses)
    line = st.one_of(drawn, st.sampled_from(list(corpus)), _noise(80))
    return st.tuples(st.lists(line, min_size=1, max_size=8), st.sampled_from(["\n", "\r\n"])).map(
        lambda pair: pair[1].join(pair[0])
    )


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(any_char, max_size=20),
        st.sampled_from(["203.0.113.7", "2001:db8::/64", "::ffff:1.2.3.4", "1e999"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


def _document(entries: list[Any], version: Any, prefix: Any, nesting: int) -> bytes:
    document: Any = {
        "format": "relaypolicy-iptable",
        "version": version,
        "ipv6_prefix": prefix,
        "entries": entries,
    }
    text = json.dumps(document)  # NaN and Infinity come out as the bare words json reads
    return ("[" * nesting + text + "]" * nesting).encode("utf-8", "surrogatepass")


def table_files(corpus: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """File contents for the ``loader`` target: documents of drawn JSON values (sometimes
    deeply nested), the corpus, and random bytes."""
    entries = st.lists(
        st.one_of(
            st.tuples(
                st.one_of(st.ip_addresses().map(str), st.text(max_size=10)),
                st.one_of(st.floats(), st.integers()),
                st.one_of(st.none(), st.text(any_char, max_size=10)),
            ).map(list),
            _json_values(),
        ),
        max_size=5,
    )
    nesting = st.one_of(st.just(0), st.integers(0, 3000))
    documents = st.builds(
        _document, entries, st.one_of(st.just(1), _json_values()), st.just(128), nesting
    )
    return st.one_of(documents, st.sampled_from(list(corpus)), st.binary(max_size=200))
