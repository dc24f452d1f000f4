"""Pooled HTTP/1.1 connections to upstreams, parsed by httptools (llhttp, in C).

The proxy writes a request head it assembled itself and reads the response head back as raw
``(lowercase name, name, value)`` triples. Body chunks go straight to a sink (the client's
transport) as they arrive; when the client reads slowly, the client side pauses this
transport, so nothing piles up in between. One exchange at a time per connection, and a
connection goes back to the pool only when its response was read to the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httptools

from corsproxy.config import upstream_tls
from corsproxy.http import wire
from corsproxy.http.listener import READ_CHUNK, RawHeaders, ReadPauses
from corsproxy.http.wire import Body, Framing, Refusal

if TYPE_CHECKING:
    from corsproxy.config.upstream_tls import UpstreamTLS
    from corsproxy.engine.policy import Settings, Upstream
    from corsproxy.http.listener import ClientConnection


FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class UpstreamError(Exception):
    """``reason`` is the metric label: connect, tls, timeout or protocol. ``stale`` means a pooled
    connection was found closed before any byte of an answer: nothing was processed."""

    def __init__(self, reason: str, message: str, stale: bool = False, cause: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message  # for the client: never the upstream's address
        self.stale = stale
        self.cause = cause  # for the operator: what failed, in a few words

    @property
    def explained(self) -> str:
        """The message with its cause, for the access log."""
        if not self.cause or self.cause == self.message:
            return self.message
        if self.cause.startswith(self.message):  # a TLS cause: the message, with detail
            return self.cause
        return f"{self.message} ({self.cause})"


def tls_error(exc: ssl.SSLError, tls: UpstreamTLS | None) -> UpstreamError:
    """A TLS failure toward an upstream: a 502 whose body says what failed, in words
    (``upstream TLS: certificate verify failed: self-signed certificate``), and whose
    cause, for the log, adds the detail (the name checked, the key that fixes it)."""
    message, cause = upstream_tls.describe(exc, tls)
    return UpstreamError("tls", message, cause=cause)


def describe_os_error(exc: OSError) -> str:
    """A connect failure in a few lowercase words: 'connection refused', 'name not found'."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}".replace("_", " ").lower()
    if isinstance(exc, socket.gaierror):
        return "name not found"
    if exc.errno:  # asyncio words it "Connect call failed (...)": the OS's text is clearer
        return os.strerror(exc.errno).lower()
    return (str(exc) or type(exc).__name__).lower()


class BrokenBody(Exception):
    """The client's request body turned out malformed or stalled while it was being sent:
    the exchange ends with ``refusal`` (400, 408) and the upstream connection is closed."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class _HeadOnly(Exception):
    """Raised from the parser callback to stop after the head of an answer to HEAD."""


class _OutOfTurn(Exception):
    """Raised from a parser callback on an answer the proxy cannot relay as it is."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: str, tls: UpstreamTLS | None = None) -> None:
        self.pool = pool
        self.key = key
        self.tls = tls  # an https:// upstream's: says what a TLS failure means
        self.session_kept = tls is None  # its TLS session is kept for the next connection
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.pauses = ReadPauses()
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.send_timer: asyncio.TimerHandle | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the exchange: ready for the next one (or to be closed)."""
        if self.timer is not None:
            self.timer.cancel()
        if self.send_timer is not None:
            self.send_timer.cancel()
        if not self.closed:
            self.pauses.clear()  # never pooled paused: it would not hear a close
        self.head: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self.head_only = False
        self.status = 0
        self.interim = False
        self.reason = b""
        self.headers: RawHeaders = []
        self.framing_fields: list[tuple[bytes, bytes]] = []  # CL, TE and Connection values
        self.tokens: frozenset[bytes] = frozenset()  # what the answer's Connection lists
        self.framing: Framing = wire.NO_BODY
        self.keep_alive = True
        self.complete = False
        self.got_data = False
        self.request_sent = True
        self.chunked_request = False
        self.sink: Callable[[bytes], None] | None = None
        self.early: list[bytes] = []  # body that came with the head, before a sink
        self.early_size = 0
        self.client: ClientConnection | None = None
        self.read_timeout = 0.0
        self.send_timeout = 60.0
        self.send_timer: asyncio.TimerHandle | None = None
        self.last_read = 0.0
        self.timer = None
        self.head_bytes = 0  # read before the final head was complete (1xx included)
        self.head_fields = 0
        self.trailer_size = 0
        self.trailer_fields = 0
        self.progress = 0
        self.stall = 0
        self.upgrade = False  # the request asked to switch protocols (a WebSocket handshake)
        self.switched: bytes | None = None  # after a 101 to it: what followed, for the tunnel

    # --- the exchange, driven by the proxy

    def begin(
        self,
        head: bytes,
        client: ClientConnection,
        read_timeout: float,
        send_timeout: float,
        head_only: bool,
        body: bool,
        chunked: bool,
        upgrade: bool = False,
    ) -> None:
        loop = self.loop
        self.upgrade = upgrade
        self.head = loop.create_future()
        self.done = loop.create_future()
        self.client = client
        self.head_only = head_only
        self.request_sent = not body
        self.chunked_request = chunked
        self.read_timeout = read_timeout
        self.send_timeout = send_timeout
        assert self.transport is not None
        self.transport.write(head)
        if not body:  # sent whole: timeouts.read runs from now (start_read_clock, inline)
            self.last_read = now = loop.time()
            self.timer = loop.call_at(now + read_timeout, self.check_timeout)

    def send_body(self, data: bytes) -> None:
        if self.transport is None or self.closed or not data:
            return
        if self.chunked_request:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.transport.write(data)

    def end_body(self) -> None:
        self.request_sent = True
        if self.chunked_request and self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")
        self.start_read_clock()

    def body_broken(self, refusal: Refusal) -> None:
        """The client's body broke mid-way: this exchange fails, its connection with it."""
        self.fail(BrokenBody(refusal))

    def start_read_clock(self) -> None:
        """``timeouts.read`` runs from now: once the request is sent (nginx's
        proxy_read_timeout), and again after each pause for a slow client."""
        self.last_read = self.loop.time()
        if self.timer is None and self.done is not None and not self.done.done():
            self.timer = self.loop.call_at(self.last_read + self.read_timeout, self.check_timeout)

    def attach(self, sink: Callable[[bytes], None]) -> list[bytes]:
        """From now on body chunks go to ``sink``; returns what arrived before."""
        self.sink = sink
        early, self.early, self.early_size = self.early, [], 0
        if "early" in self.pauses.reasons:
            self.pauses.resume("early")
            self.start_read_clock()
        return early

    def pause_reading(self) -> None:
        """The client cannot take more yet (its transport's buffer is full)."""
        self.pauses.pause("client")

    def resume_reading(self) -> None:
        self.pauses.resume("client")
        if not self.pauses.reasons:
            self.start_read_clock()

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.request_sent and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.send_timer is not None:
            self.send_timer.cancel()
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.pauses.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.done is None or self.done.done():
            return
        if (
            exc is None
            and self.framing.body is Body.CLOSE
            and self.head is not None
            and self.head.done()
        ):
            self.on_message_complete()  # the body was delimited by the (orderly) close
            return
        if isinstance(exc, ssl.SSLError):
            # TLS 1.3: a refused client certificate arrives after the handshake, as an alert
            self.fail(tls_error(exc, self.tls))
        elif not self.got_data and self.tls is not None and not self.reused:
            # A fresh TLS connection closed unanswered: an asyncio server that refused the
            # client certificate sends no alert, it hangs up.
            cause = upstream_tls.unanswered(self.tls)
            self.fail(UpstreamError("protocol", "upstream closed the connection", cause=cause))
        elif not self.got_data:
            self.fail(UpstreamError("protocol", "upstream closed the connection", self.reused))
        else:
            self.fail(UpstreamError("protocol", "upstream closed the connection mid-response"))

    def data_received(self, data: bytes) -> None:
        if self.switched is not None:
            # Switched to a WebSocket: bytes for the tunnel, which takes over shortly.
            self.switched += data
            if len(self.switched) > READ_CHUNK:
                self.pauses.pause("early")
            return
        if self.done is None or self.done.done():
            self.close()  # nothing was asked: an upstream that talks out of turn is not reused
            return
        self.got_data = True
        self.last_read = self.loop.time()
        if self.head is not None and not self.head.done():
            # The status line and fields (1xx answers included) are bounded: only what fits
            # is parsed, and a head not complete within it is refused (nginx: 502).
            room = wire.MAX_RESPONSE_HEAD - self.head_bytes
            if len(data) > room:
                if not self.feed(data[:room]) or self.done.done():
                    if self.switched is not None:
                        self.switched += data[room:]
                    return
                if not self.head.done():
                    self.fail(UpstreamError("protocol", "upstream response head over 64 KiB"))
                    return
                data = data[room:]
            else:
                self.head_bytes += len(data)
        progress = self.progress
        try:
            self.parser.feed_data(data)  # feed(), inline on the common path
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self.parser_stopped(exc, data):
                return
        if self.done.done():
            return
        if self.progress != progress:
            self.stall = 0
            return
        self.stall += len(data)  # a chunk line or trailer field still growing in the parser
        if self.stall > wire.MAX_STALL:
            self.fail(UpstreamError("protocol", "upstream sent an over-long chunk line"))

    def feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the exchange ended in a failure."""
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            return self.parser_stopped(exc, data)
        return True

    def parser_stopped(self, exc: Exception, data: bytes) -> bool:
        """The parser stopped in ``data``: at the end of a HEAD answer's head, at a switch
        to a WebSocket, or on a fault (the exchange fails: False)."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self.upgrade and self.status == 101:
                self.switched = data[exc.args[0] :]
                return True
            self.fail(UpstreamError("protocol", "upstream switched protocols unasked"))
            return False
        if isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            if isinstance(cause, _HeadOnly):
                # Whatever came after the head in this read is never parsed; anything that
                # arrives later, before a next request, closes the connection (data_received).
                self.parser = httptools.HttpResponseParser(self)
                self.on_message_complete()
                return True
            message = str(cause) if isinstance(cause, _OutOfTurn) else ""
            self.fail(UpstreamError("protocol", message or "upstream sent an invalid response"))
            return False
        self.fail(UpstreamError("protocol", f"upstream sent an invalid response ({exc})"))
        return False

    def pause_writing(self) -> None:
        """The upstream reads the upload slower than the client sends it: stop reading the
        client, and give the upstream ``timeouts.send`` to take more (nginx's
        proxy_send_timeout)."""
        if self.client is not None:
            self.client.pauses.pause("upload")
        if self.send_timer is None and self.done is not None and not self.done.done():
            self.send_timer = self.loop.call_later(self.send_timeout, self.send_timed_out)

    def resume_writing(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        if self.client is not None:
            self.client.pauses.resume("upload")

    def send_timed_out(self) -> None:
        self.send_timer = None
        if self.done is not None and not self.done.done():
            self.fail(UpstreamError("timeout", "upstream accepted no bytes for timeouts.send"))

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.status:
            # A second answer to one request (stray bytes after a complete response, or a
            # body after a 204): never relayed, and the connection is not reused.
            raise _OutOfTurn("upstream sent more than one answer")
        self.headers = []
        self.framing_fields = []
        self.reason = b""
        self.progress += 1

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.progress += 1
        if self.status:
            # A trailer after a chunked body: bounded, dropped, never part of the head
            # already sent (RFC 9112 7.1.2).
            self.trailer_size += len(name) + len(value) + 4
            self.trailer_fields += 1
            if (
                self.trailer_size > wire.MAX_TRAILER
                or self.trailer_fields > wire.MAX_TRAILER_FIELDS
            ):
                raise _OutOfTurn("upstream trailer section too large")
            return
        self.head_fields += 1
        if self.head_fields > wire.MAX_RESPONSE_FIELDS:
            raise _OutOfTurn("upstream response has too many header fields")
        lname = name.lower()
        self.headers.append((lname, name, value))
        if lname in FRAMING_FIELDS:
            self.framing_fields.append((lname, value))

    def on_headers_complete(self) -> None:
        self.progress += 1
        parser = self.parser
        status = parser.get_status_code()
        self.interim = status < 200 and not (status == 101 and self.upgrade)
        if self.interim:
            self.head_fields = 0
            return  # 100 Continue and other interim answers are not passed on
        self.status = status
        te: list[bytes] = []
        cl: list[bytes] = []
        connection: list[bytes] = []
        for lname, value in self.framing_fields:
            if lname == b"content-length":
                cl.append(value)
            elif lname == b"transfer-encoding":
                te.append(value)
            else:
                connection.append(value)
        if te and wire.codings(te) != [b"chunked"]:
            # llhttp undoes only the chunking; relaying the rest without its coding would
            # hand the client bytes it cannot read.
            raise _OutOfTurn("upstream used a transfer coding other than chunked")
        self.framing = framing = wire.response_framing(status, self.head_only, te, cl)
        self.tokens = tokens = wire.connection_tokens(connection) if connection else wire.NO_TOKENS
        self.keep_alive = (
            framing.body is not Body.CLOSE
            and status != 101
            and wire.keep_alive(parser.get_http_version(), tokens)
        )
        if self.timer is None:
            self.start_read_clock()  # an early answer: its body is waited for like any other
        assert self.head is not None
        if not self.head.done():
            self.head.set_result(None)
        if self.head_only:
            raise _HeadOnly

    def on_body(self, data: bytes) -> None:
        self.progress += 1
        if self.sink is not None:
            self.sink(data)
        else:
            self.early.append(data)
            self.early_size += len(data)
            if self.early_size > READ_CHUNK:
                self.pauses.pause("early")

    def on_chunk_header(self) -> None:
        self.progress += 1

    def on_message_complete(self) -> None:
        self.progress += 1
        if self.interim:
            self.interim = False
            return
        self.complete = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # --- failures

    def check_timeout(self) -> None:
        """``timeouts.read`` bounds each wait for the upstream: the head once the request
        is sent, then each chunk. One timer per exchange, pushed back lazily instead of
        reset on every read; none runs while the proxy itself holds reading paused (the
        client's ``timeouts.send`` bounds that wait)."""
        self.timer = None
        if self.done is None or self.done.done() or self.pauses.reasons:
            return
        due = self.last_read + self.read_timeout
        if due > self.loop.time():
            self.timer = self.loop.call_at(due, self.check_timeout)
            return
        cause = "read: nothing within timeouts.read"
        self.fail(UpstreamError("timeout", "upstream did not answer in time", cause=cause))

    def fail(self, error: Exception) -> None:
        for future in (self.head, self.done):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # read: an exchange that never awaits one is not an error
        self.close()


class UpstreamPool:
    """Idle keep-alive connections per upstream ``scheme://host:port``."""

    def __init__(self, idle: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle = idle
        self.free: dict[str, list[UpstreamConnection]] = {}
        self.endpoints: dict[str, tuple[str, int, UpstreamTLS | None, str | None]] = {}
        self.live: frozenset[str] | None = None  # after a reload: the keys still in use
        self.sweeper: asyncio.TimerHandle | None = None

    def take(self, upstream: Upstream) -> UpstreamConnection | None:
        free = self.free.get(upstream.key)
        while free:
            conn = free.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def connect(self, upstream: Upstream, timeout: float) -> UpstreamConnection:
        host, port, tls, server_name = self.endpoint(upstream)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self, upstream.key, tls),
                    host,
                    port,
                    ssl=tls.context if tls is not None else None,
                    server_hostname=server_name,
                )
        except TimeoutError:
            cause = "connect: no connection within timeouts.connect"
            raise UpstreamError("timeout", "upstream did not answer in time", cause=cause) from None
        except ssl.SSLError as exc:
            raise tls_error(exc, tls) from None
        except OSError as exc:
            cause = f"connect: {describe_os_error(exc)}"
            raise UpstreamError("connect", "upstream unreachable", cause=cause) from None
        return conn

    def endpoint(self, upstream: Upstream) -> tuple[str, int, UpstreamTLS | None, str | None]:
        """(host, port, TLS settings, the name SNI sends and the certificate must carry)."""
        found = self.endpoints.get(upstream.key)
        if found is None:
            parts = urlsplit(upstream.url)
            https = parts.scheme == "https"
            tls = (upstream.tls or upstream_tls.default()) if https else None
            host = parts.hostname or ""
            name = None
            if tls is not None:
                name = tls.spec.server_name or host
            found = (host, parts.port or (443 if https else 80), tls, name)
            self.endpoints[upstream.key] = found
        return found

    def release(self, conn: UpstreamConnection) -> None:
        reusable = conn.reusable
        conn.reset()  # also forgets the client: a late resume_writing must not reach it
        if not conn.session_kept and conn.tls is not None and conn.transport is not None:
            # After an exchange, so a TLS 1.3 ticket (sent after the handshake) has arrived.
            conn.session_kept = True
            conn.tls.context.remember(conn.transport.get_extra_info("ssl_object"))
        if not reusable or (self.live is not None and conn.key not in self.live):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.free.setdefault(conn.key, []).append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.idle, self.sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        free = self.free.get(conn.key)
        if free and conn in free:
            free.remove(conn)

    def retire(self, settings: Settings) -> None:
        """A reload: connections to upstreams (or with upstream_tls settings) no route uses
        any more are closed now when idle, and when their exchange ends when busy; new
        connections use the new settings."""
        table = settings.table
        self.live = live = frozenset(
            r.upstream.key for r in (*table.routes, table.fallback) if r.upstream is not None
        )
        for key, free in list(self.free.items()):
            if key not in live:
                for conn in list(free):
                    conn.close()
                self.free.pop(key, None)
        self.endpoints = {k: v for k, v in self.endpoints.items() if k in live}

    def sweep(self) -> None:
        """Close connections idle longer than ``idle`` (timeouts.idle); one timer for the
        pool, armed while it holds idle connections, due when the oldest expires."""
        self.sweeper = None
        now = time.monotonic()
        cutoff = now - self.idle
        oldest = now
        for free in self.free.values():
            for conn in list(free):
                if conn.idle_since < cutoff:
                    free.remove(conn)
                    conn.close()
                else:
                    oldest = min(oldest, conn.idle_since)
        if any(self.free.values()):
            self.sweeper = self.loop.call_later(oldest + self.idle - now, self.sweep)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for free in self.free.values():
            for conn in list(free):
                conn.close()
        self.free.clear()
