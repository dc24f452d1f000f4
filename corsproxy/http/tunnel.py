"""WebSocket tunnels: once the upstream has answered a handshake with 101, the client's and
the upstream's connections are joined and bytes move both ways untouched.

The proxy's only WebSocket duty is the Origin check before the handshake (cross-site
WebSocket hijacking, in ``cors``); after the 101 it is invisible, as in nginx, HAProxy and
Envoy: no re-framing, no message size limit, subprotocols and extensions end to end. It
reads frame headers only to know where frames end (``frames``), so a shutdown can put a
Close frame between two frames.
"""

from __future__ import annotations

import asyncio
import logging

from corsproxy.http.frames import FrameTracker, close_frame
from corsproxy.http.listener import ReadPauses

log = logging.getLogger("corsproxy")

GOING_AWAY_GRACE = 1.0  # seconds, on shutdown, for a frame in flight to end before Close 1001


class TunnelEnd(asyncio.Protocol):
    """One of the tunnel's two connections: what it receives goes to the other end, and
    when the other end cannot keep up, this one stops reading (flow control both ways)."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, server: bool) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.server = server  # the upstream: frames toward it are masked (RFC 6455 5.3)
        self.pauses = ReadPauses()
        self.pauses.transport = transport
        self.frames = FrameTracker()  # of the frames this end sends
        self.received = 0  # bytes this end sent through the tunnel
        self.peer: TunnelEnd = self
        self.lost = False
        self.close_sent = False

    def data_received(self, data: bytes) -> None:
        self.tunnel.relay(self, data)

    def eof_received(self) -> bool:
        return False  # a half-close ends the tunnel like a close

    def pause_writing(self) -> None:
        self.peer.pauses.pause("peer")

    def resume_writing(self) -> None:
        self.peer.pauses.resume("peer")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.end_lost(self)


class Tunnel:
    """Two joined connections, the idle deadline, and how the session ended."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        idle: float,
        flush: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = TunnelEnd(self, client, server=False)
        self.upstream = TunnelEnd(self, upstream, server=True)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.idle = idle
        self.flush = flush  # how long a closing end may take to take its last bytes
        self.last = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.reason = ""
        self.going_away = False

    def start(self, client_tail: bytes, upstream_tail: bytes) -> None:
        """Take both connections over; relay what each sent after its half of the handshake."""
        for end in (self.client, self.upstream):
            end.transport.set_protocol(end)
            end.transport.resume_reading()
        self.timer = self.loop.call_at(self.last + self.idle, self.check_idle)
        if upstream_tail:
            self.relay(self.upstream, upstream_tail)
        if client_tail:
            self.relay(self.client, client_tail)

    def relay(self, source: TunnelEnd, data: bytes) -> None:
        self.last = self.loop.time()
        receiver = source.peer
        if self.going_away:
            # Only the frame in flight may still pass; then the receiver gets Close 1001.
            data = data[: source.frames.feed(data, stop_at_boundary=True)]
            self.forward(source, data)
            if source.frames.at_boundary:
                self.close_toward(receiver)
            return
        source.frames.feed(data)
        self.forward(source, data)

    def forward(self, source: TunnelEnd, data: bytes) -> None:
        if data and not source.peer.lost and not source.peer.close_sent:
            source.received += len(data)
            source.peer.transport.write(data)

    def check_idle(self) -> None:
        """``timeouts.websocket_idle``: one timer, pushed back lazily, never a fixed tick."""
        self.timer = None
        if self.done.done():
            return
        due = self.last + self.idle
        if due > self.loop.time():
            self.timer = self.loop.call_at(due, self.check_idle)
            return
        self.end("no byte either way for timeouts.websocket_idle")

    def go_away(self) -> None:
        """Shutdown: each side gets Close 1001 at a frame boundary, then the TCP close."""
        if self.done.done() or self.going_away:
            return
        self.going_away = True
        self.reason = self.reason or "server stopping"
        for source in (self.client, self.upstream):
            if source.frames.at_boundary:
                self.close_toward(source.peer)
        self.loop.call_later(GOING_AWAY_GRACE, self.abort)

    def close_toward(self, receiver: TunnelEnd) -> None:
        receiver.peer.pauses.pause("going away")  # nothing more from the sender
        if not receiver.close_sent and not receiver.lost:
            receiver.close_sent = True
            receiver.transport.write(close_frame(masked=receiver.server))
        if all(end.close_sent or end.lost for end in (self.client, self.upstream)):
            self.end(self.reason)

    def end(self, reason: str) -> None:
        """Close both connections (what was written still goes out, within ``flush``)."""
        self.reason = self.reason or reason
        for end in (self.client, self.upstream):
            if not end.lost:
                end.transport.close()
        self.loop.call_later(self.flush, self.abort)

    def end_lost(self, end: TunnelEnd) -> None:
        if not self.reason:
            self.reason = "client closed" if end is self.client else "upstream closed"
        if not end.peer.lost:
            end.peer.transport.close()
            self.loop.call_later(self.flush, self.abort)
            return
        if self.timer is not None:
            self.timer.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        for end in (self.client, self.upstream):
            if not end.lost:
                end.transport.abort()
