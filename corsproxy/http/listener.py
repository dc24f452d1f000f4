"""The client side of HTTP/1.1: requests parsed by httptools (llhttp, in C), responses
written straight to the transport.

aiohttp's server builds a request object, a header multidict, a URL and a response object
for every request; a proxy needs none of them. Here each request/response cycle is one
``Exchange``: the raw header triples and the few fields the proxy reads, how the body flows,
and what was sent back. One exchange is answered at a time per connection, in order;
pipelined requests wait with reading paused.

What a peer may send is bounded as it arrives (``wire``'s limits), every refusal is an
exchange answered through the proxy (so it is logged and counted like any other), and a
connection ends along one path, ``ClientConnection.close``, with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from termios import TIOCOUTQ
from typing import Any, NoReturn

import httptools

from corsproxy.http import wire
from corsproxy.http.wire import (
    MAX_FIELD,
    MAX_FIELDS,
    MAX_HEAD,
    NO_BODY_STATUSES,
    Body,
    Framing,
    Refusal,
)
from corsproxy.http.wire import REFUSED_METHODS as REFUSED

log = logging.getLogger("corsproxy")

# Large enough that a 1 GiB body moves in few, cheap reads; small enough to bound memory.
READ_CHUNK = 256 * 1024

RawHeaders = list[tuple[bytes, bytes, bytes]]  # (lowercase name, name as sent, value)

# Read into Exchange.fields (lowercase name -> every value), for the proxy's decisions.
WATCHED = frozenset(
    {
        b"host",
        b"origin",
        b"connection",
        b"upgrade",
        b"expect",
        b"content-length",
        b"transfer-encoding",
        b"access-control-request-method",
        b"access-control-request-headers",
        b"access-control-request-private-network",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
    }
)

# The headers the proxy's routing and CORS decisions read besides method and target: the
# (name, value) sequence of these keys its memo of decisions (proxy.Memo).
KEYED = frozenset(
    {
        b"host",
        b"origin",
        b"access-control-request-method",
        b"access-control-request-headers",
        b"access-control-request-private-network",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"Connection: close\r\n"
TEXT_PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"
LAST_CHUNK = b"0\r\n\r\n"
LINGER = 2.0  # seconds a closing connection keeps reading what a client still sends
SMALL_BODY = 16 * 1024  # copied behind its head into one write; larger ones are not copied
LOGGED_TARGET = 256  # characters of an over-long target kept for the log line


def status_line(status: int, reason: bytes = b"") -> bytes:
    if reason:
        return b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class _Clock:
    """The Date header, formatted once per second rather than once per response."""

    second = 0
    line = b""

    @classmethod
    def date_line(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.line = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return cls.line


date_line = _Clock.date_line


def whole_response(
    status: int, lines: list[bytes], body: bytes, connection: bytes, head_only: bool
) -> bytes:
    """A response the proxy makes itself, head and body in one ``bytes``."""
    head = [status_line(status), *lines, date_line(), connection]
    if status in NO_BODY_STATUSES:
        head.append(b"\r\n")
    else:
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        if not head_only:
            head.append(body)
    return b"".join(head)


def _discard(_: bytes) -> None:
    pass


def unsent_bytes(transport: asyncio.Transport | None) -> int:
    """Bytes written for a peer and not yet taken by it: the transport's buffer plus, on
    Linux, the kernel's unacknowledged send queue (a slow reader drains the kernel's queue
    long before the transport's buffer moves)."""
    if transport is None:
        return 0
    queued = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            queued += struct.unpack("i", fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0" * 4))[0]
    return queued


class _Stop(Exception):
    """Raised from a parser callback to stop parsing on purpose (a refusal, or a request
    pipelined behind one that closes the connection)."""


class ReadPauses:
    """Reading from one transport, paused while any named reason holds: the one flow-control
    primitive of both legs (a client pushing back on a response, an upstream on an upload,
    a pipelined request waiting its turn)."""

    __slots__ = ("reasons", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self._resume()

    def clear(self) -> None:
        if self.reasons:
            self.reasons.clear()
            self._resume()

    def _resume(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


class Exchange:
    """One request and its answer. The listener fills in the request and owns the framing
    both ways; the proxy sets ``task`` and ``outcome``; ``status``, ``sent`` and
    ``head_sent`` say what went back. Until the proxy attaches a ``sink``, body chunks wait
    here (reading pauses past READ_CHUNK)."""

    __slots__ = (
        "body_complete",
        "body_error",
        "buffered",
        "chunks",
        "close_reason",
        "fields",
        "framing",
        "has_body",
        "head_sent",
        "headers",
        "invalid",
        "keep_alive",
        "keyed",
        "method",
        "on_body_broken",
        "on_body_end",
        "outcome",
        "response_framing",
        "sent",
        "sink",
        "started",
        "status",
        "target",
        "task",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.version = "1.1"
        self.headers: RawHeaders = []
        self.invalid: Refusal | None = None  # refused before the proxy decides anything
        self.fields: dict[bytes, list[bytes]] = {}
        self.keyed: list[bytes] = []  # name, value, name, value... of KEYED headers
        self.framing: Framing = wire.NO_BODY  # of the request body
        self.has_body = False
        self.upgrade = False
        self.keep_alive = True
        self.close_reason = ""
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.body_complete = False
        self.body_error: Refusal | None = None  # the body broke after the head was handled
        self.sink: Callable[[bytes], None] | None = None
        self.on_body_end: Callable[[], None] | None = None
        self.on_body_broken: Callable[[Refusal], None] | None = None
        self.started = time.perf_counter()
        self.status = 0  # of the response, once its head is sent
        self.sent = 0  # bytes written to the client, response head included
        self.head_sent = False
        self.response_framing: Framing = wire.NO_BODY
        self.task: asyncio.Task[None] | None = None
        self.outcome: Any = None  # the proxy's record of the exchange (route, decision, notes)

    def header(self, lname: bytes) -> str | None:
        values = self.fields.get(lname)
        return values[0].decode("latin-1") if values else None

    def header_all(self, lname: bytes) -> list[str]:
        return [v.decode("latin-1") for v in self.fields.get(lname, ())]

    def close_after(self, reason: str) -> None:
        """The connection carries no further exchange after this one."""
        if self.keep_alive:
            self.keep_alive = False
            self.close_reason = reason

    def raw_head(self) -> bytes:
        """The head as received (modulo whitespace), to hand the connection to another parser."""
        lines = [
            b"%s %s HTTP/%s\r\n"
            % (self.method.encode(), self.target.encode("latin-1"), self.version.encode())
        ]
        lines.extend(b"%s: %s\r\n" % (name, value) for _, name, value in self.headers)
        lines.append(b"\r\n")
        return b"".join(lines)


Handler = Callable[["Exchange", "ClientConnection"], None]
Finished = Callable[["Exchange", "ClientConnection"], None]


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, hands each to the proxy in turn, frames the
    responses, and applies backpressure both ways."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pauses = ReadPauses()
        self.peer = ""
        self.exchange: Exchange | None = None  # being parsed (head, then body)
        self.active: Exchange | None = None  # being answered
        self.waiting: deque[Exchange] = deque()  # parsed, not yet answered
        self.url_parts: list[bytes] = []
        self.url_size = 0
        self.head_size = 0  # bytes of the head being parsed, counted as fields complete
        self.head_fields = 0  # its fields, dropped ones included
        self.in_head = False  # a request head is arriving
        self.trailer_size = 0
        self.trailer_fields = 0
        self.progress = 0  # bumped whenever the parser finishes something
        self.stall = 0  # bytes fed since it last did
        self.write_paused = False
        self.send_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.unsent = 0  # bytes waiting for the client when the send timer was armed
        self.source: Any = None  # has pause_/resume_reading: paused when the client reads slowly
        self.upgrade_tail: bytes | None = None
        self.closed = False  # the transport is gone (or handed to another protocol)
        self.closing = ""  # why the proxy is closing this connection, once it is
        self.last_request = False  # a request said it is the last: what follows is dropped
        self.unread = False  # a refusal stopped reading mid-request
        self.last_seen = 0.0
        self.head_began: float | None = None  # a request head is arriving since then

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.pauses.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.last_seen = self.listener.loop.time()
        self.listener.connections.add(self)
        self.arm_idle_timer()
        self.listener.count(1)  # metric hook: corsproxy_client_connections

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.forget(self)
        self.listener.count(-1)  # metric hook: corsproxy_client_connections
        self.waiting.clear()
        self.stop_send_timer()
        active = self.active
        if active is not None and active.task is not None:
            active.task.cancel()  # frees the upstream connection at once

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.listener.loop.time()
        parser = self.parser
        if parser is None:
            return  # closing, or handed over: nothing more is read as a request
        progress = self.progress, self.head_fields
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.parser = None
            self.upgrade_tail = data[upgrade.args[0] :]
            self.pauses.pause("upgrade")
            if self.active is None and self.waiting:
                self.dispatch(self.waiting.popleft())
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Stop):
                return  # stopped on purpose; the refusal (if any) is already queued
            # One of the callbacks below (or the proxy they call) failed: a bug, not the
            # client's fault. Logged with its traceback; the client gets a 500.
            log.error("internal error while handling a request", exc_info=exc.__context__)
            self.refuse(500, "internal error")
            return
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":  # llhttp's words for HTTP/1.2, HTTP/3.0
                self.refuse(505, "HTTP version not supported")
            else:
                self.refuse(400, f"malformed request: {exc}")
            return
        if (self.progress, self.head_fields) != progress:
            self.stall = 0
            return
        # Nothing finished in this whole read: a field, target or chunk line still growing
        # inside the parser. Bounded here, since the parser would buffer it without end.
        self.stall += len(data)
        if self.stall > wire.MAX_STALL and self.parser is not None:
            if self.in_head or self.exchange is None:
                self.refuse(431, f"a request header line over {self.stall} bytes")
            else:
                self.refuse(400, f"a chunk line or trailer field over {self.stall} bytes")

    def pause_writing(self) -> None:
        """The client reads slower than the proxy writes: stop producing for it (upstream
        reads, and further requests) and start the ``timeouts.send`` clock."""
        self.write_paused = True
        self.pauses.pause("writing")
        if self.source is not None:
            self.source.pause_reading()
        if self.send_timer is None:
            self.arm_send_timer()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stop_send_timer()
        self.pauses.resume("writing")
        if self.source is not None:
            self.source.resume_reading()

    def stop_send_timer(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None

    def arm_send_timer(self) -> None:
        self.unsent = unsent_bytes(self.transport)
        self.send_timer = self.listener.loop.call_later(
            self.listener.send_timeout, self.send_timed_out
        )

    def send_timed_out(self) -> None:
        """``timeouts.send`` passed with the client's buffer full: if the client took some
        bytes meanwhile, it is slow, not gone, and gets another period."""
        self.send_timer = None
        transport = self.transport
        if not self.write_paused or self.closed or transport is None:
            return
        if unsent_bytes(transport) < self.unsent:
            self.arm_send_timer()
            return
        self.close("client accepted no bytes for timeouts.send", abort=True)

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.last_request or self.closing:
            # Pipelined behind a request that closes the connection: never handled.
            log.debug("dropped a request pipelined behind a closing one from %s", self.peer)
            self.parser = None
            raise _Stop
        self.exchange = Exchange()
        self.url_parts = []
        self.url_size = self.head_size = self.trailer_size = self.trailer_fields = 0
        self.head_fields = 0
        self.in_head = True
        self.head_began = self.last_seen
        self.progress += 1

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)
        self.url_size += len(url)
        self.progress += 1
        if self.url_size > wire.MAX_TARGET:
            self.stop(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Runs for every field of every request: the limits are summed here and told apart
        # only when one is passed. Each field is progress (head_fields, see data_received).
        if not self.in_head:
            return self.on_trailer(len(name) + len(value) + 4)
        size = len(name) + len(value) + 4  # ": " and CRLF
        self.head_size += size
        self.head_fields += 1
        if (
            size > MAX_FIELD
            or self.head_fields > MAX_FIELDS
            or self.head_size + self.url_size > MAX_HEAD
        ):
            if self.head_size + self.url_size > MAX_HEAD:
                self.stop(431, "request head too large")
            self.stop(431, "request header fields too large")
        exchange = self.exchange
        lname = name.lower()
        if b"_" in lname:  # wire.dropped_request_field, inline: it runs for every field
            return
        exchange.headers.append((lname, name, value))
        if lname in WATCHED:
            exchange.fields.setdefault(lname, []).append(value)
            if lname in KEYED:
                exchange.keyed += (lname, value)

    def on_trailer(self, size: int) -> None:
        """A field after a chunked body: counted, bounded, never a header (RFC 9112 7.1.2)."""
        self.progress += 1
        self.trailer_size += size
        self.trailer_fields += 1
        if self.trailer_size > wire.MAX_TRAILER or self.trailer_fields > wire.MAX_TRAILER_FIELDS:
            self.stop(431, "request trailer section too large")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        parser = self.parser
        assert exchange is not None and parser is not None
        self.in_head = False
        self.head_began = None
        self.progress += 1
        exchange.method = method = parser.get_method().decode()
        exchange.target = b"".join(self.url_parts).decode("latin-1")
        exchange.version = version = parser.get_http_version()
        fields = exchange.fields
        te = fields.get(b"transfer-encoding")
        hosts = fields.get(b"host")
        if te or version != "1.1" or hosts is None or len(hosts) != 1 or method in REFUSED:
            refusal = wire.refuse_request(method, version, len(hosts or ()), te)
            if refusal is not None:
                self.stop(*refusal)
        connection = fields.get(b"connection")
        exchange.keep_alive = wire.keep_alive(
            version, wire.connection_tokens(connection) if connection else wire.NO_TOKENS
        )
        exchange.framing = framing = wire.request_framing(te, fields.get(b"content-length"))
        exchange.has_body = framing is wire.CHUNKED or framing.length > 0
        exchange.upgrade = parser.should_upgrade()
        if exchange.upgrade and exchange.has_body:
            # What follows cannot be trusted to be a request: llhttp stops before the body
            # of an upgrade, and that body must never be read as one (request smuggling).
            exchange.close_after("an upgrade request with a body")
        if not exchange.keep_alive:
            self.last_request = True
        if exchange.upgrade:
            # llhttp stops at an upgrade; the request is handled once it has (data_received).
            self.waiting.append(exchange)
        elif self.active is None and not self.waiting:
            self.dispatch(exchange)
        else:
            self.waiting.append(exchange)
            self.pauses.pause("pipelined")

    def on_body(self, data: bytes) -> None:
        self.progress += 1
        exchange = self.exchange
        assert exchange is not None
        if exchange.sink is not None:
            exchange.sink(data)
            return
        exchange.chunks.append(data)
        exchange.buffered += len(data)
        if exchange.buffered > READ_CHUNK:
            self.pauses.pause("body")

    def on_chunk_header(self) -> None:
        self.progress += 1

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.progress += 1
        exchange.body_complete = True
        self.exchange = None
        if exchange.on_body_end is not None:
            exchange.on_body_end()

    # --- refusals

    def stop(self, status: int, reason: str) -> NoReturn:
        """From a parser callback: refuse, and stop the parser where it is."""
        self.refuse(status, reason)
        raise _Stop

    def refuse(self, status: int, reason: str) -> None:
        """The request being read cannot be read on (malformed, over a limit, or of a kind
        the proxy does not serve): nothing more is read from this connection, and the
        request is answered ``status`` in its turn (through the proxy, so logged and
        counted), then the connection closes."""
        parser, self.parser = self.parser, None
        if self.closing or parser is None:
            return  # already answered and closing (or handed over): nothing is owed
        self.unread = True  # the client may still be sending: close it lingering
        self.pauses.pause("refused")
        self.listener.malformed(self, f"{status} {reason}")
        exchange, self.exchange = self.exchange, None
        refusal = Refusal(status, reason)
        if exchange is None or self.in_head or not self.is_known(exchange):
            # Its head was not complete: answer it as a refusal in its turn.
            if exchange is None:
                exchange = Exchange()
            if self.in_head:
                target = b"".join(self.url_parts).decode("latin-1")
                exchange.target = target[:LOGGED_TARGET]
                with contextlib.suppress(httptools.HttpParserError):
                    exchange.method = parser.get_method().decode()
            self.in_head = False
            exchange.invalid = refusal
            exchange.close_after(reason)
            if self.active is None and not self.waiting:
                self.dispatch(exchange)
            else:
                self.waiting.append(exchange)
            return
        # Its head was handled (or waits its turn) and its body broke: the exchange fails.
        exchange.close_after(reason)
        exchange.body_error = refusal
        if exchange is not self.active:
            if exchange in self.waiting:
                exchange.invalid = refusal  # answered instead when its turn comes
            elif self.active is None:
                self.close(reason)  # already answered: nothing is owed
            return
        if exchange.on_body_broken is not None:
            exchange.on_body_broken(refusal)  # the proxy answers it, or cuts the connection
        elif exchange.task is None and not exchange.head_sent:
            # The proxy failed while handling the head (an internal error): answer here.
            body = b"%s\n" % HTTPStatus(status).phrase.encode()
            self.answer(exchange, status, [TEXT_PLAIN], body)

    def is_known(self, exchange: Exchange) -> bool:
        return exchange is self.active or exchange in self.waiting or exchange.outcome is not None

    # --- used by the proxy

    def attach_body(
        self,
        exchange: Exchange,
        sink: Callable[[bytes], None],
        end: Callable[[], None],
        broken: Callable[[Refusal], None],
    ) -> None:
        """Send the request body to ``sink`` from now on; ``end`` when it is complete,
        ``broken`` if it turns out malformed or stalls."""
        chunks, exchange.chunks, exchange.buffered = exchange.chunks, [], 0
        exchange.sink, exchange.on_body_end, exchange.on_body_broken = sink, end, broken
        for chunk in chunks:
            sink(chunk)
        self.pauses.resume("body")
        if exchange.body_complete:
            end()
        elif exchange.body_error is not None:
            broken(exchange.body_error)

    def discard_body(self, exchange: Exchange) -> None:
        exchange.chunks, exchange.buffered = [], 0
        exchange.on_body_end = exchange.on_body_broken = None
        exchange.sink = _discard
        self.pauses.resume("body")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def keeps_alive(self, exchange: Exchange) -> bool:
        """The one keep-alive decision for an answer: the request allowed it, nothing since
        closed it, and the server is not stopping."""
        return exchange.keep_alive and not self.listener.closing and not self.closing

    def connection_line(self, exchange: Exchange) -> bytes:
        if not self.keeps_alive(exchange):
            exchange.close_after("server stopping")
            return CLOSE
        return KEEP_ALIVE if exchange.version == "1.0" else b""

    def answer(self, exchange: Exchange, status: int, lines: list[bytes], body: bytes) -> None:
        """A whole response made by the proxy, in one write."""
        if exchange.has_body and not exchange.body_complete:
            # Answered before its body arrived (a refused upload, or one waiting for 100
            # Continue): the body cannot be told from a next request, so nothing follows.
            exchange.close_after("answered before the request body arrived")
        connection = self.connection_line(exchange)
        data = whole_response(status, lines, body, connection, exchange.method == "HEAD")
        exchange.status, exchange.sent, exchange.head_sent = status, len(data), True
        self.discard_body(exchange)
        self.write(data)
        self.finish(exchange)

    def start_response(
        self,
        exchange: Exchange,
        status: int,
        reason: bytes,
        lines: list[bytes],
        upstream: Framing,
        first: list[bytes] | None = None,
    ) -> None:
        """Write a relayed head (and, when it came with it, the start of the body). The
        framing line is the proxy's own, worked out from how the upstream's body ends."""
        framing = exchange.response_framing = wire.relayed_framing(
            upstream, status, exchange.version
        )
        if framing.body is Body.CLOSE:
            exchange.close_after("response body delimited by the close")
        connection = self.connection_line(exchange)
        head = b"".join(
            [status_line(status, reason), *lines, framing.header(), connection, b"\r\n"]
        )
        exchange.status, exchange.head_sent = status, True
        exchange.sent += len(head)
        if not first or framing.body is Body.NONE:
            self.write(head)
        elif len(first) == 1 and len(first[0]) <= SMALL_BODY and framing.body is not Body.CHUNKED:
            exchange.sent += len(first[0])
            self.write(head + first[0])  # a small answer goes out in one write
        else:
            self.send(exchange, first, head)

    def send(self, exchange: Exchange, chunks: list[bytes], head: bytes = b"") -> None:
        """Body chunks, framed, in one writelines: big chunks are passed on, not copied."""
        if self.transport is None:
            return
        out = [head] if head else []
        chunked = exchange.response_framing.body is Body.CHUNKED
        for data in chunks:
            if not data:
                continue
            exchange.sent += len(data)
            if chunked:
                size = b"%x\r\n" % len(data)
                exchange.sent += len(size) + 2
                out += (size, data, b"\r\n")
            else:
                out.append(data)
        if out:
            self.transport.writelines(out)

    def send_one(self, exchange: Exchange, data: bytes) -> None:
        if exchange.response_framing.body is Body.CHUNKED:
            self.send(exchange, [data])
        elif data and self.transport is not None:
            exchange.sent += len(data)
            self.transport.write(data)

    def end_response(self, exchange: Exchange) -> None:
        if exchange.response_framing.body is Body.CHUNKED:
            exchange.sent += len(LAST_CHUNK)
            self.write(LAST_CHUNK)
        self.finish(exchange)

    def cut(self, exchange: Exchange, reason: str) -> None:
        """End the connection under an answer: a body that stopped short must not pass for
        a whole one."""
        exchange.close_after(reason)
        self.finish(exchange)

    def finish(self, exchange: Exchange) -> None:
        """The response is written: log it, then go on with the next request or close."""
        if exchange is not self.active:
            return
        self.active = None
        self.source = None
        self.last_seen = self.listener.loop.time()
        self.listener.finished(exchange, self)
        if self.closed:
            return
        if not self.keeps_alive(exchange):
            self.close(exchange.close_reason or "server stopping")
            return
        self.pauses.resume("upload")  # the upstream that pushed back on the body is done with it
        if not exchange.body_complete:
            self.discard_body(exchange)  # read past the rest; the next request follows it
        if self.upgrade_tail is not None and exchange.upgrade:
            # An upgrade the proxy answered itself (a refusal, or a non-WebSocket upgrade
            # served as plain HTTP): carry on parsing what followed it.
            tail, self.upgrade_tail = self.upgrade_tail, None
            self.parser = httptools.HttpRequestParser(self)
            self.pauses.resume("upgrade")
            if tail:
                self.data_received(tail)
        if self.waiting:
            # Next turn of the loop, not from here: a long pipeline of requests answered at
            # once would otherwise nest one call deeper per request.
            self.listener.loop.call_soon(self.dispatch_waiting)
        else:
            self.pauses.resume("pipelined")

    def dispatch_waiting(self) -> None:
        if self.closed or self.closing or self.active is not None:
            return
        if self.waiting:
            self.dispatch(self.waiting.popleft())
        if not self.waiting:
            self.pauses.resume("pipelined")

    def start_tunnel(
        self, exchange: Exchange, reason: bytes, lines: list[bytes]
    ) -> tuple[asyncio.Transport, bytes]:
        """Answer 101 and give the connection up to a WebSocket tunnel for the rest of its
        life; returns its transport (reading paused) and what the client sent after the
        handshake."""
        transport = self.transport
        assert transport is not None
        head = b"".join([status_line(101, reason), *lines, b"\r\n"])
        exchange.status, exchange.head_sent = 101, True
        exchange.sent += len(head)
        transport.write(head)
        tail = self.upgrade_tail or b""
        self.upgrade_tail, self.parser, self.transport = None, None, None
        self.closed = True
        self.stop_send_timer()
        self.listener.forget(self)
        self.listener.count(-1)  # metric hook: the tunnel's own gauge counts it from here
        self.pauses.reasons.clear()
        self.pauses.transport = None
        return transport, tail

    def arm_idle_timer(self) -> None:
        """One timer per connection for ``timeouts.idle``, pushed back lazily when it fires
        early (reads only move ``last_seen``): no sweep on a fixed tick."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = self.listener.loop.call_at(
            self.last_seen + self.listener.idle, self.check_idle
        )

    def check_idle(self) -> None:
        """Close when nothing was received for ``timeouts.idle`` between requests, or when a
        request head has been trickling in for that long (a slow client holds no slot);
        fail an exchange whose request body stalled for that long. While the proxy is
        answering, or holds reading paused itself, other deadlines apply."""
        self.idle_timer = None
        if self.transport is None or self.closing or self.closed:
            return
        idle = self.listener.idle
        now = self.listener.loop.time()
        began = self.head_began
        due = self.last_seen + idle
        if self.active is None and not self.waiting:
            if began is not None:
                due = min(due, began + idle)
            if now >= due:
                self.close("idle for timeouts.idle")
                return
        elif (
            self.exchange is not None
            and self.exchange is self.active
            and not self.in_head
            and not self.pauses.reasons  # not waiting on the proxy's own pushback
            and now >= due
        ):
            self.refuse(408, "request body stalled for timeouts.idle")
            return
        self.idle_timer = self.listener.loop.call_at(max(due, now + idle / 2), self.check_idle)

    # --- internals

    def dispatch(self, exchange: Exchange) -> None:
        self.active = exchange
        if exchange.upgrade and self.parser is not None and exchange.invalid is None:
            # Not really an upgrade for llhttp yet; wait for data_received to stop it.
            self.waiting.appendleft(exchange)
            self.active = None
            return
        self.listener.handle(exchange, self)

    def close(self, reason: str, abort: bool = False) -> None:
        """The one way the proxy ends a connection. ``abort`` resets it at once (a client
        that reads nothing would otherwise hold its unsent answer forever). Otherwise what
        was written goes out first; and closing on a client still sending (a refused
        upload) would make the kernel reset the connection under the answer, so the
        sending side closes first and what the client still sends is read and dropped for
        up to LINGER seconds (nginx's lingering close)."""
        transport = self.transport
        if transport is None:
            return
        if self.closing and not abort:
            return
        self.closing = reason
        self.parser = None
        log.debug("closing the connection from %s: %s", self.peer or "?", reason)
        if abort:
            transport.abort()
            return
        if (self.exchange is None and not self.unread) or not transport.can_write_eof():
            transport.close()  # nothing more is coming (or TLS, which cannot half-close)
            self.bound_flush(transport)
            return
        try:
            transport.write_eof()
        except OSError:  # the client is already gone (reset): nothing to linger for
            transport.abort()
            return
        self.pauses.clear()
        self.listener.loop.call_later(LINGER, self.end_linger, transport)

    def end_linger(self, transport: asyncio.Transport) -> None:
        transport.close()
        self.bound_flush(transport)

    def bound_flush(self, transport: asyncio.Transport) -> None:
        """A closed transport still sends what it holds; a client that reads none of it
        would keep it forever, so it gets timeouts.send, then a reset."""
        if transport.get_write_buffer_size():
            self.listener.loop.call_later(self.listener.send_timeout, transport.abort)


class Listener:
    """The protocol factory and the set of live connections, for reloads and shutdown."""

    def __init__(
        self,
        handle: Handler,
        finished: Finished,
        malformed: Callable[[ClientConnection, str], None],
        idle: float,
        send_timeout: float = 60.0,
    ) -> None:
        self.handle = handle
        self.finished = finished
        self.malformed = malformed
        self.idle = idle
        self.send_timeout = send_timeout
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.server: asyncio.Server | None = None
        self.drained: asyncio.Event | None = None  # set when the last connection goes
        self.count: Callable[[int], object] = lambda change: None  # metric hook (app.start)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        self.server = await self.loop.create_server(self, host, port, backlog=1024, **kwargs)
        return int(self.server.sockets[0].getsockname()[1])

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        if not self.connections and self.drained is not None:
            self.drained.set()

    def set_idle(self, idle: float) -> None:
        """A reload's timeouts.idle applies at once, to connections already open too."""
        self.idle = idle
        for conn in self.connections:
            conn.arm_idle_timer()

    async def close(self, timeout: float) -> None:
        """Stop accepting, close idle connections, give requests in flight ``timeout``."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.active is None and not conn.waiting:
                conn.close("server stopping")
        if self.connections:
            self.drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), timeout)
        for conn in list(self.connections):
            conn.close("server stopped", abort=True)
        if self.server is not None:
            # Python 3.12+ also waits here for connections given to a tunnel (open
            # WebSockets), which their own shutdown closes next: do not wait for those.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
