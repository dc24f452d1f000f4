"""HTTP/1.1 wire rules, as pure functions: how a message is framed, whether a connection
stays open, which headers belong to one hop, what a request may look like.

The listener (client side) and the upstream connections both ask these; nothing else
decides framing or keep-alive. The proxy never passes a peer's framing header on: it drops
``Content-Length`` and ``Transfer-Encoding`` from every message it relays and writes the
one framing line it chose itself (RFC 9112 6.1, 6.3), so no peer can make the two legs
disagree on where a message ends (request smuggling, response splitting).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from enum import Enum
from typing import NamedTuple

from corsproxy.engine import headers as h

# --- limits (docs/configuration.md, "What a request may look like") -------------------------

MAX_TARGET = 8 * 1024  # request target -> 414
MAX_FIELD = 8 * 1024  # one header field (name + value) -> 431
MAX_FIELDS = 100  # header fields in a request head -> 431
MAX_HEAD = 64 * 1024  # a request head, counted as it arrives -> 431
MAX_TRAILER = 16 * 1024  # a trailer section, either direction: read, counted, dropped
MAX_TRAILER_FIELDS = 100
# Bytes a peer may send without the parser finishing anything (a field, a chunk line, a piece
# of body): what bounds a field, URL or chunk extension that never ends while it is still
# inside the parser. One read (READ_CHUNK) more may arrive before the check.
MAX_STALL = MAX_FIELD + 8 * 1024
MAX_RESPONSE_HEAD = 64 * 1024  # upstream status line + fields (1xx included) -> 502
MAX_RESPONSE_FIELDS = 1000  # nginx has no count, only its 4-8 KiB buffer; ours is laxer

NO_BODY_STATUSES = frozenset({204, 304})  # never a body, nor a Content-Length (RFC 9110 8.6)
# A reverse proxy tunnels nothing but allowed WebSocket upgrades, and TRACE would echo
# credentials back to a script (the Fetch Standard forbids both to pages; llhttp already
# refuses TRACK, a method it does not know, with a 400).
REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"  # the Allow line of a 405

HOP_BY_HOP = frozenset(name.encode() for name in h.HOP_BY_HOP)  # lowercase bytes
# Framing and routing headers: the proxy writes its own, so a peer's are always dropped, and
# naming them in Connection neither removes nor adds anything (RFC 9112 6.1, RFC 9110 7.6.1).
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
PROTECTED = FRAMING | {b"host"}


class Body(Enum):
    NONE = "none"  # no body at all
    LENGTH = "length"  # Content-Length: N
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # until the connection closes (responses only)


class Framing(NamedTuple):
    body: Body
    length: int = 0  # for Body.LENGTH, and the advertised length of an answer to HEAD

    def header(self) -> bytes:
        """The one framing line the proxy writes for this message (for an answer to HEAD:
        the length the upstream advertised, with no body)."""
        if self.body is Body.LENGTH or (self.body is Body.NONE and self.length):
            return b"Content-Length: %d\r\n" % self.length
        if self.body is Body.CHUNKED:
            return b"Transfer-Encoding: chunked\r\n"
        return b""


NO_BODY = Framing(Body.NONE)
CHUNKED = Framing(Body.CHUNKED)
UNTIL_CLOSE = Framing(Body.CLOSE)


def codings(values: Iterable[bytes]) -> list[bytes]:
    """Transfer codings named by Transfer-Encoding values, lowercase, in order."""
    return [c.strip().lower() for v in values for c in v.split(b",") if c.strip()]


def content_length(values: list[bytes]) -> int:
    """The length llhttp already checked (digits only, one value): 0 when absent."""
    return int(values[0]) if values else 0


def request_framing(te: list[bytes] | None, cl: list[bytes] | None) -> Framing:
    """RFC 9112 6.3 for a request the parser accepted (it refuses CL with TE, two CLs and
    a TE whose last coding is not chunked): chunked (the CHUNKED object itself), N bytes,
    or nothing."""
    if te:
        return CHUNKED
    if cl:
        return Framing(Body.LENGTH, content_length(cl))
    return NO_BODY


def response_framing(
    status: int, head_only: bool, te: list[bytes] | None, cl: list[bytes] | None
) -> Framing:
    """RFC 9112 6.3 for an upstream answer: what follows its head, as the proxy reads it.
    An answer to HEAD keeps the advertised length (RFC 9110 9.3.2) but has no body."""
    if head_only:
        return Framing(Body.NONE, content_length(cl) if cl and not te else 0)
    if status in NO_BODY_STATUSES or status < 200:
        return NO_BODY
    if te:
        return CHUNKED
    if cl:
        return Framing(Body.LENGTH, content_length(cl))
    return UNTIL_CLOSE


def relayed_framing(upstream: Framing, status: int, version: str) -> Framing:
    """How the proxy frames an upstream answer toward its client: the length when known,
    else chunked (HTTP/1.1) or until close (HTTP/1.0, which has no chunked coding)."""
    if status in NO_BODY_STATUSES:
        return NO_BODY
    if upstream.body is Body.NONE or upstream.body is Body.LENGTH:
        return upstream
    return CHUNKED if version == "1.1" else UNTIL_CLOSE


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Lowercase names listed in Connection headers (nearly always one of a few values)."""
    return _tokens(tuple(values))


@functools.lru_cache(maxsize=256)
def _tokens(values: tuple[bytes, ...]) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


NO_TOKENS: frozenset[bytes] = frozenset()  # no Connection header


def keep_alive(version: str, tokens: frozenset[bytes]) -> bool:
    """Whether a message lets its connection carry another (RFC 9112 9.3): HTTP/1.1 unless
    it says close, HTTP/1.0 only when it says keep-alive."""
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


@functools.lru_cache(maxsize=256)
def hop_by_hop(tokens: frozenset[bytes]) -> frozenset[bytes]:
    """The names not relayed past this hop: the fixed set plus what Connection lists, never
    a framing header or Host (those the proxy always writes itself)."""
    if not tokens:
        return HOP_BY_HOP
    return HOP_BY_HOP | (tokens - PROTECTED)


def dropped_request_field(lname: bytes) -> bool:
    """Request header names with ``_`` are never forwarded: many backends read ``_`` as
    ``-``, so ``Transfer_Encoding`` or ``X_Forwarded_Host`` would reopen framing and
    spoofing tricks (nginx's ``underscores_in_headers off``)."""
    return b"_" in lname


class Refusal(NamedTuple):
    status: int
    reason: str


def refuse_request(
    method: str, version: str, host_count: int, te: list[bytes] | None
) -> Refusal | None:
    """What the proxy refuses in a request head the parser accepted, before any rule
    looks at it; ``None`` when the head may go on."""
    if version not in ("1.1", "1.0"):
        if version == "0.9":
            return Refusal(400, "HTTP/0.9 is not supported")
        return Refusal(505, f"HTTP/{version} is not supported")
    if method in REFUSED_METHODS:
        return Refusal(405, f"{method} is not served by this proxy")
    if host_count > 1 or (host_count == 0 and version == "1.1"):
        return Refusal(400, "an HTTP/1.1 request needs exactly one Host header")
    if te and codings(te) != [b"chunked"]:
        # llhttp undoes only the chunking; the other codings cannot be passed on undone.
        return Refusal(501, "transfer codings other than chunked are not supported")
    return None
