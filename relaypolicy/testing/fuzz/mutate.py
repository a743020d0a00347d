"""Mutations for the random engine: small, cheap edits of text and bytes.

Each call applies one to three edits chosen at random: a code point (or byte) replaced or
bit-flipped, an interesting code point or token inserted, a slice deleted or repeated
(which makes the very long inputs), a splice with another corpus entry, a change of case,
or a fresh random string. "Interesting" means what has broken address and log parsers
before: controls and line ends, lone surrogates, invisible and width-changing code
points, the code points the ``idna`` package refuses (U+2024 ONE DOT LEADER and its
kin), look-alikes, and the characters of routing tricks (RFC 5321 section 3.6, source
routes; the percent hack; UUCP bang paths).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["IDNA_REFUSED", "INTERESTING_CHARS", "mutate_bytes", "mutate_text", "random_text"]

# Code points that UTS 46 maps to something idna.encode then refuses (InvalidCodepoint).
IDNA_REFUSED = (
    "\u2024\u2025\u2026"
    + "".join(chr(code) for code in range(0x2488, 0x249C))
    + "".join(chr(code) for code in range(0x2FF0, 0x2FFC))
    + "\u33c2\ufe12"
)
INTERESTING_CHARS = (
    "\x00\t\n\r \x7f\x85\xa0\xad\u200b\u200d\u2028\u2029\ufeff\ufe0f\ufffd"
    "\ud800\udbff\udc00\udfff\udc80"  # lone surrogates: not UTF-8 at all
    "\uff20\uff0e\u3002\uff61\u212a\u0130\u0131\xdf\u03c2\u0435\u0430\u043e"
    "\U0001f600\U0010ffff\U000e0001"
    '%!@"\\<>[]:,;().-_=+/' + IDNA_REFUSED
)
INTERESTING_TOKENS = (
    "@",
    "%",
    "!",
    '"',
    "\\@",
    "@example.org",
    "%aho.jp",
    "aho.jp!",
    "@aho.jp:",
    "@a,@b:",
    "<",
    ">",
    "[192.0.2.1]",
    "[IPv6:::ffff:192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "[ipv6:::1]",
    "xn--",
    "xn--r8jz45g",
    "..",
    ".",
    "postmaster",
    '"a@b"',
    '"a%b"',
    "EXAMPLE.ORG",
    "example.org.",
    "例え.jp",
    "ex\u0430mple.org",
)
INTERESTING_BYTES = (
    b"\x00",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"=",
    b"==",
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate: not UTF-8
    b"\xe2\x80\xa4",  # U+2024
    b"\xef\xbb\xbf",  # BOM
    b"[",
    b"]",
    b"{",
    b'"',
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-0",
    b"NaN",
    b"9" * 400,
    b"request=smtpd_access_policy\n",
    b"recipient=user%aho.jp@example.org\n",
)

# Where random code points come from: mostly ASCII, then the rest of the range in bands,
# surrogates included (a str may hold one; UTF-8 cannot).
_BANDS = ((0x20, 0x7E), (0x00, 0x1F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF))
_BAND_WEIGHTS = (60, 5, 10, 15, 10)


def random_char(rng: random.Random) -> str:
    """One code point from anywhere in Unicode (surrogates too), mostly ASCII."""
    if rng.random() < 0.1:
        return rng.choice(INTERESTING_CHARS)
    low, high = rng.choices(_BANDS, _BAND_WEIGHTS)[0]
    return chr(rng.randint(low, high))


def random_text(rng: random.Random, max_length: int = 40) -> str:
    """A string of random code points."""
    return "".join(random_char(rng) for _ in range(rng.randint(0, max_length)))


def _mutate_text_once(rng: random.Random, text: str, corpus: Sequence[str]) -> str:
    size = len(text)
    at = rng.randint(0, size)
    op = rng.randrange(11)
    if op == 0 and size:  # replace a code point
        return text[:at] + random_char(rng) + text[at + 1 :]
    if op == 1 and size:  # flip one bit of a code point
        at = min(at, size - 1)
        code = ord(text[at]) ^ (1 << rng.randrange(21))
        return text[:at] + chr(min(code, 0x10FFFF)) + text[at + 1 :]
    if op == 2:
        return text[:at] + rng.choice(INTERESTING_CHARS) + text[at:]
    if op == 3:
        return text[:at] + rng.choice(INTERESTING_TOKENS) + text[at:]
    if op == 4 and size:  # delete a slice
        end = rng.randint(at, min(size, at + 8))
        return text[:at] + text[end:]
    if op == 5 and size:  # repeat a slice: long strings, long labels, many "@"
        end = rng.randint(at, min(size, at + 12))
        times = rng.choice((2, 3, 10, 64, 300))
        return text[:at] + text[at:end] * times + text[end:]
    if op == 6 and corpus:  # splice with another entry
        other = rng.choice(corpus)
        return text[:at] + other[rng.randint(0, len(other)) :]
    if op == 7:
        return text.upper() if rng.random() < 0.5 else text.swapcase()
    if op == 8:
        return random_text(rng)
    if op == 9:  # very long
        return text + rng.choice(("a", "a.", "%", "@", "\u2024")) * rng.randint(60, 5000)
    return text[:at] + random_char(rng) + text[at:]


def mutate_text(rng: random.Random, text: str, corpus: Sequence[str] = ()) -> str:
    """``text`` after one to three random edits."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        text = _mutate_text_once(rng, text, corpus)
    return text


def _mutate_bytes_once(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    size = len(data)
    at = rng.randint(0, size)
    op = rng.randrange(9)
    if op == 0 and size:  # flip one bit
        at = min(at, size - 1)
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    if op == 1 and size:  # replace a byte
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    if op == 2:
        return data[:at] + rng.choice(INTERESTING_BYTES) + data[at:]
    if op == 3:  # an interesting code point, UTF-8 encoded (a surrogate: not UTF-8)
        char = rng.choice(INTERESTING_CHARS).encode("utf-8", "surrogatepass")
        return data[:at] + char + data[at:]
    if op == 4 and size:
        end = rng.randint(at, min(size, at + 16))
        return data[:at] + data[end:]
    if op == 5 and size:
        end = rng.randint(at, min(size, at + 32))
        times = rng.choice((2, 3, 10, 100, 1000))
        return data[:at] + data[at:end] * times + data[end:]
    if op == 6 and corpus:
        other = rng.choice(corpus)
        return data[:at] + other[rng.randint(0, len(other)) :]
    if op == 7:
        return rng.randbytes(rng.randint(0, 64))
    return data[:at] + bytes([rng.randrange(256)]) + data[at:]


def mutate_bytes(rng: random.Random, data: bytes, corpus: Sequence[bytes] = ()) -> bytes:
    """``data`` after one to three random edits."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        data = _mutate_bytes_once(rng, data, corpus)
    return data
