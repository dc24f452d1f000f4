"""The client side of HTTP/1.1: requests parsed by httptools (llhttp, in C), responses
written straight to the transport.

aiohttp's server builds a request object, a header multidict, a URL and a response object
for every request; a proxy needs none of them. Here a request is its raw header triples plus
the few fields the proxy reads, and a response is bytes the proxy assembled. One request is
handled at a time per connection, in order; pipelined requests wait with reading paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools

log = logging.getLogger("corsproxy")

# Large enough that a 1 GiB body moves in few, cheap reads; small enough to bound memory.
READ_CHUNK = 256 * 1024

RawHeaders = list[tuple[bytes, bytes, bytes]]  # (lowercase name, name as sent, value)

# Read into IncomingRequest.fields (lowercase name -> every value), for the proxy's decisions.
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

# What a request head may hold (aiohttp's and nginx's limits are of this order). Past them the
# answer is 414 or 431 and the connection closes; heads are counted while they arrive, so a
# client cannot make the proxy buffer or re-parse an endless header line.
MAX_TARGET = 8 * 1024
MAX_FIELD = 8 * 1024
MAX_FIELDS = 100
MAX_HEAD = 64 * 1024

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"
CLOSE = b"Connection: close\r\n"
TEXT_PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"
LAST_CHUNK = b"0\r\n\r\n"
LINGER = 2.0  # seconds a closing connection keeps reading what a client still sends
SMALL_BODY = 16 * 1024  # copied behind its head into one write; larger ones are not copied
NO_BODY_STATUSES = frozenset({204, 304})  # never a body, nor a Content-Length (RFC 9110 8.6)


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


class IncomingRequest:
    """One request as read off the wire. Its body flows to ``sink`` once the proxy attaches
    one; until then chunks wait here (reading pauses past READ_CHUNK)."""

    __slots__ = (
        "body_complete",
        "buffered",
        "chunked",
        "chunks",
        "fields",
        "framing",
        "has_body",
        "head_sent",
        "headers",
        "invalid",
        "keep_alive",
        "keyed",
        "method",
        "on_body_end",
        "sent",
        "sink",
        "started",
        "state",
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
        self.invalid: tuple[int, str] | None = None  # refused before the proxy decides
        self.fields: dict[bytes, list[bytes]] = {}
        self.keyed: list[bytes] = []  # name, value, name, value... of KEYED headers
        self.keep_alive = True
        self.has_body = False
        self.chunked = False
        self.upgrade = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.body_complete = False
        self.sink: Callable[[bytes], None] | None = None
        self.on_body_end: Callable[[], None] | None = None
        self.started = time.perf_counter()
        self.status = 0  # of the response, once its head is sent
        self.sent = 0  # bytes written to the client, response head included
        self.head_sent = False
        self.framing = b""  # b"chunked", b"close" or b"" (length known or no body)
        self.task: asyncio.Task[None] | None = None
        self.state: Any = None  # the proxy's own bookkeeping (route, decision, notes)

    def header(self, lname: bytes) -> str | None:
        values = self.fields.get(lname)
        return values[0].decode("latin-1") if values else None

    def header_all(self, lname: bytes) -> list[str]:
        return [v.decode("latin-1") for v in self.fields.get(lname, ())]

    def raw_head(self) -> bytes:
        """The head as received (modulo whitespace), to hand the connection to another parser."""
        lines = [
            b"%s %s HTTP/%s\r\n"
            % (self.method.encode(), self.target.encode("latin-1"), self.version.encode())
        ]
        lines.extend(b"%s: %s\r\n" % (name, value) for _, name, value in self.headers)
        lines.append(b"\r\n")
        return b"".join(lines)


Handler = Callable[["IncomingRequest", "ClientConnection"], None]
Finished = Callable[["IncomingRequest", "ClientConnection"], None]


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, hands each to the proxy in turn, frames the
    responses, and applies backpressure both ways."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.request: IncomingRequest | None = None  # being parsed
        self.active: IncomingRequest | None = None  # being answered
        self.waiting: deque[IncomingRequest] = deque()  # parsed, not yet answered
        self.url_parts: list[bytes] = []
        self.pauses: set[str] = set()
        self.write_paused = False
        self.source: Any = None  # has pause_/resume_reading: paused when the client reads slowly
        self.upgrade_tail: bytes | None = None
        self.closed = False
        self.last_seen = 0.0
        self.head_began: float | None = None  # a request head is arriving since then
        self.head_bytes = 0  # received since head_began

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.last_seen = self.listener.loop.time()
        self.listener.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        self.waiting.clear()
        active = self.active
        if active is not None and active.task is not None:
            active.task.cancel()  # frees the upstream connection at once

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.listener.loop.time()
        parser = self.parser
        if parser is None:
            return
        if self.head_began is not None:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD + READ_CHUNK:
                self.listener.malformed(self, ValueError("request head too large"))
                self.refuse(431)
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.parser = None
            self.upgrade_tail = data[upgrade.args[0] :]
            self.pause("upgrade")
            if self.active is None and self.waiting:
                self.dispatch(self.waiting.popleft())
        except httptools.HttpParserCallbackError as exc:
            # One of the callbacks below (or the proxy they call) failed: a bug, not the
            # client's fault. Logged with its traceback; the client gets a 500.
            log.error("internal error while handling a request", exc_info=exc.__context__)
            self.refuse(500)
        except httptools.HttpParserError as exc:
            self.listener.malformed(self, exc)
            self.refuse(400)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.source is not None:
            self.source.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.source is not None:
            self.source.resume_reading()

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        self.request = IncomingRequest()
        self.url_parts = []
        self.head_began = self.last_seen
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.request
        assert request is not None
        if self.head_began is None:
            return  # a trailer after a chunked body: never a header of the request
        if len(name) + len(value) > MAX_FIELD or len(request.headers) >= MAX_FIELDS:
            request.invalid = (431, "request header fields too large")
            return
        lname = name.lower()
        request.headers.append((lname, name, value))
        if lname in WATCHED:
            request.fields.setdefault(lname, []).append(value)
            if lname in KEYED:
                request.keyed += (lname, value)

    def on_headers_complete(self) -> None:
        request = self.request
        parser = self.parser
        assert request is not None and parser is not None
        self.head_began = None
        if self.transport is None or self.transport.is_closing():
            return  # pipelined behind a response that closes the connection
        request.method = parser.get_method().decode()
        request.target = b"".join(self.url_parts).decode("latin-1")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        fields = request.fields
        if b"transfer-encoding" in fields:
            request.has_body = request.chunked = True
        elif b"content-length" in fields:
            request.has_body = fields[b"content-length"][0].strip() not in (b"0", b"")
        hosts = fields.get(b"host")
        if len(request.target) > MAX_TARGET:
            request.invalid = (414, "request target too long")
        elif (hosts is None and request.version == "1.1") or (hosts and len(hosts) > 1):
            request.invalid = (400, "an HTTP/1.1 request needs exactly one Host header")
        if request.invalid is not None or (request.upgrade and request.has_body):
            # What follows cannot be trusted to be a request: llhttp stops before the body
            # of an upgrade, and that body must never be read as one (request smuggling).
            request.keep_alive = False
        if request.upgrade:
            # llhttp stops at an upgrade; the request is handled once it has (data_received).
            self.waiting.append(request)
        elif self.active is None and not self.waiting:
            self.dispatch(request)
        else:
            self.waiting.append(request)
            self.pause("pipelined")

    def on_body(self, data: bytes) -> None:
        request = self.request
        assert request is not None
        if request.sink is not None:
            request.sink(data)
            return
        request.chunks.append(data)
        request.buffered += len(data)
        if request.buffered > READ_CHUNK:
            self.pause("body")

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        request.body_complete = True
        self.request = None
        if request.on_body_end is not None:
            request.on_body_end()

    # --- used by the proxy

    def attach_body(
        self, request: IncomingRequest, sink: Callable[[bytes], None], end: Callable[[], None]
    ) -> None:
        """Send the request body to ``sink`` from now on; ``end`` when it is complete."""
        chunks, request.chunks, request.buffered = request.chunks, [], 0
        request.sink, request.on_body_end = sink, end
        for chunk in chunks:
            sink(chunk)
        self.resume("body")
        if request.body_complete:
            end()

    def discard_body(self, request: IncomingRequest) -> None:
        request.chunks, request.buffered, request.on_body_end = [], 0, None
        request.sink = _discard
        self.resume("body")

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def will_close(self, request: IncomingRequest) -> bool:
        return not request.keep_alive or self.listener.closing

    def connection_line(self, request: IncomingRequest) -> bytes:
        if self.will_close(request):
            return CLOSE
        return KEEP_ALIVE if request.version == "1.0" else b""

    def answer(
        self, request: IncomingRequest, status: int, lines: list[bytes], body: bytes
    ) -> None:
        """A whole response made by the proxy, in one write."""
        if not request.body_complete and b"expect" in request.fields:
            # The client waits for 100 Continue before sending its body and now never will:
            # the connection cannot carry another request.
            request.keep_alive = False
        connection = self.connection_line(request)
        data = whole_response(status, lines, body, connection, request.method == "HEAD")
        request.status, request.sent, request.head_sent = status, len(data), True
        self.discard_body(request)
        self.write(data)
        self.finish(request)

    def start_response(
        self,
        request: IncomingRequest,
        status: int,
        reason: bytes,
        lines: list[bytes],
        length_known: bool,
        has_body: bool,
        first: list[bytes] | None = None,
    ) -> None:
        """Write a relayed head (and, when it came with it, the start of the body)."""
        close = self.will_close(request)
        extra = b""
        if has_body and not length_known:
            if request.version == "1.0":
                request.framing, close = b"close", True
            else:
                request.framing, extra = b"chunked", CHUNKED
        connection = CLOSE if close else (KEEP_ALIVE if request.version == "1.0" else b"")
        if close:
            request.keep_alive = False
        head = b"".join([status_line(status, reason), *lines, extra, connection, b"\r\n"])
        request.status, request.head_sent = status, True
        request.sent += len(head)
        if not first:
            self.write(head)
        elif len(first) == 1 and len(first[0]) <= SMALL_BODY and request.framing != b"chunked":
            request.sent += len(first[0])
            self.write(head + first[0])  # a small answer goes out in one write
        else:
            self.send(request, first, head)

    def send(self, request: IncomingRequest, chunks: list[bytes], head: bytes = b"") -> None:
        """Body chunks, framed, in one writelines: big chunks are passed on, not copied."""
        if self.transport is None:
            return
        out = [head] if head else []
        chunked = request.framing == b"chunked"
        for data in chunks:
            if not data:
                continue
            request.sent += len(data)
            if chunked:
                size = b"%x\r\n" % len(data)
                request.sent += len(size) + 2
                out += (size, data, b"\r\n")
            else:
                out.append(data)
        if out:
            self.transport.writelines(out)

    def send_one(self, request: IncomingRequest, data: bytes) -> None:
        if request.framing == b"chunked":
            self.send(request, [data])
        elif data and self.transport is not None:
            request.sent += len(data)
            self.transport.write(data)

    def end_response(self, request: IncomingRequest) -> None:
        if request.framing == b"chunked":
            request.sent += len(LAST_CHUNK)
            self.write(LAST_CHUNK)
        self.finish(request)

    def abort(self, request: IncomingRequest) -> None:
        """Cut the connection: a body that stopped short must not pass for a whole one."""
        request.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self.finish(request)

    def finish(self, request: IncomingRequest) -> None:
        """The response is written: log it, then go on with the next request or close."""
        if request is not self.active:
            return
        self.active = None
        self.source = None
        self.last_seen = self.listener.loop.time()
        self.listener.finished(request, self)
        if self.closed:
            return
        if not request.keep_alive or self.listener.closing:
            self.close_after_answer()
            return
        self.resume("upload")  # the upstream that pushed back on the body is done with it
        if not request.body_complete:
            self.discard_body(request)  # read past the rest; the next request follows it
        if self.upgrade_tail is not None and request.upgrade:
            # An upgrade the proxy answered itself (a refusal, or a non-WebSocket upgrade
            # served as plain HTTP): carry on parsing what followed it.
            tail, self.upgrade_tail = self.upgrade_tail, None
            self.parser = httptools.HttpRequestParser(self)
            self.resume("upgrade")
            if tail:
                self.data_received(tail)
        if self.waiting:
            # Next turn of the loop, not from here: a long pipeline of requests answered at
            # once would otherwise nest one call deeper per request.
            self.listener.loop.call_soon(self.dispatch_waiting)
        else:
            self.resume("pipelined")

    def dispatch_waiting(self) -> None:
        if self.closed or self.active is not None:
            return
        if self.waiting:
            self.dispatch(self.waiting.popleft())
        if not self.waiting:
            self.resume("pipelined")

    def hand_off(self, request: IncomingRequest, protocol: asyncio.Protocol) -> None:
        """Give the connection (this request's head replayed, and anything after it) to
        another protocol, for the rest of its life: WebSockets are aiohttp's job."""
        transport = self.transport
        assert transport is not None
        data = request.raw_head() + (self.upgrade_tail or b"")
        self.upgrade_tail, self.parser, self.active, self.transport = None, None, None, None
        self.closed = True
        self.listener.connections.discard(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.pauses:
            self.pauses.clear()
            transport.resume_reading()  # type: ignore[attr-defined]
        if data:
            protocol.data_received(data)

    def close_if_idle(self, now: float, idle: float) -> None:
        """Close when nothing was received for ``idle`` seconds between requests, or when a
        request head has been trickling in for that long (a slow client holds no slot)."""
        if self.active is not None or self.waiting or self.transport is None:
            return
        began = self.head_began
        if now - self.last_seen >= idle or (began is not None and now - began >= idle):
            self.transport.close()

    # --- internals

    def dispatch(self, request: IncomingRequest) -> None:
        self.active = request
        if request.upgrade and self.parser is not None:
            # Not really an upgrade for llhttp yet; wait for data_received to stop it.
            self.waiting.appendleft(request)
            self.active = None
            return
        self.listener.handle(request, self)

    def pause(self, reason: str) -> None:
        if not self.pauses and self.transport is not None:
            self.transport.pause_reading()
        self.pauses.add(reason)

    def resume(self, reason: str) -> None:
        if self.pauses and reason in self.pauses:
            self.pauses.discard(reason)
            if not self.pauses and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def refuse(self, status: int) -> None:
        """Stop reading; answer ``status`` if nothing is being answered, then close."""
        self.parser = None
        if self.transport is None:
            return
        active = self.active
        if active is not None and active.task is not None and self.request is not active:
            active.keep_alive = False  # finish the answer in progress, then close
            return
        if active is not None and active.head_sent:
            self.transport.close()  # its body was broken: the upstream must not wait for it
            return
        if active is None or active.task is None:
            body = b"%s\n" % HTTPStatus(status).phrase.encode()
            self.transport.write(whole_response(status, [TEXT_PLAIN], body, CLOSE, False))
        self.transport.close()  # bytes that are not HTTP are owed no lingering close

    def close_after_answer(self) -> None:
        """Close once the answer is out. Closing on a client still sending (a refused upload)
        makes the kernel reset the connection, which can destroy the answer in flight; so
        the sending side closes first and what the client still sends is read and dropped
        for up to LINGER seconds (nginx's lingering close)."""
        transport = self.transport
        if transport is None:
            return
        if self.request is None or not transport.can_write_eof():
            transport.close()  # nothing more is coming (or TLS, which cannot half-close)
            return
        transport.write_eof()
        self.parser = None  # whatever still arrives is dropped
        self.pauses.clear()
        transport.resume_reading()
        self.listener.loop.call_later(LINGER, transport.close)


class Listener:
    """The protocol factory and the set of live connections, for idle sweeps and shutdown."""

    def __init__(
        self,
        handle: Handler,
        finished: Finished,
        malformed: Callable[[ClientConnection, Exception], None],
        idle: float,
    ) -> None:
        self.handle = handle
        self.finished = finished
        self.malformed = malformed
        self.idle = idle
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.server: asyncio.Server | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.sweepers: list[Callable[[], None]] = []  # run with each sweep (upstream pools)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        self.server = await self.loop.create_server(self, host, port, backlog=1024, **kwargs)
        self.sweeper = asyncio.ensure_future(self.sweep())
        return int(self.server.sockets[0].getsockname()[1])

    async def sweep(self) -> None:
        """Close connections idle for longer than ``idle`` (checked a few times a second)."""
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.idle / 4)))
            now = self.loop.time()
            for conn in list(self.connections):
                conn.close_if_idle(now, self.idle)
            for sweep in self.sweepers:
                sweep()

    async def close(self, timeout: float) -> None:
        """Stop accepting, close idle connections, give requests in flight ``timeout``."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close_if_idle(float("inf"), 0)
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.server is not None:
            # Python 3.12+ also waits here for connections handed to another protocol (open
            # WebSockets), which their own shutdown closes next: do not wait for those.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
