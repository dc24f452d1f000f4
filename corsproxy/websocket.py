"""WebSockets (SPEC 4.4): the one part of the proxy that runs on aiohttp's server.

The listener hands over the connection of a handshake the engine let through; from there,
aiohttp answers the handshake, connects to the upstream, and relays messages and close
codes. A WebSocket is long-lived, so its per-connection cost does not matter; its framing,
masking and close handshake are worth taking from a well-kept library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from corsproxy.listener import ClientConnection, Exchange
from corsproxy.proxy import (
    BAD_GATEWAY,
    GATEWAY_TIMEOUT,
    HandOff,
    Outcome,
    Proxy,
    UpstreamFault,
    error_parts,
)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a full traceback for every request it cannot parse; a malformed request
    is the client's fault, so one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            exc = record.exc_info[1]
            record.msg = "malformed request: %s"
            record.args = (str(exc.message).splitlines()[0] if exc.message else exc.code,)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())


AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
OUTCOME = web.RequestKey("outcome", Outcome)


def make_session() -> aiohttp.ClientSession:
    """The client side of WebSockets. It keeps no cookies (they belong to the clients) and
    adds none of its own headers."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
    )


class WebSocketProxy:
    def __init__(self, proxy: Proxy, session: aiohttp.ClientSession) -> None:
        self.proxy = proxy
        self.session = session
        self.pending: dict[object, HandOff] = {}
        self.server = web.Server(
            self.handle,
            access_log_class=access_logger_for(proxy),
            # A client that hangs up cancels its handler, which closes the upstream side.
            handler_cancellation=True,
        )

    def take(self, request: Exchange, conn: ClientConnection, handoff: HandOff) -> None:
        """The listener's hand-off: aiohttp reads the handshake again and answers it."""
        protocol = self.server()
        self.pending[protocol] = handoff
        # Dropped unread when the client vanishes before aiohttp reads the handshake again.
        asyncio.get_running_loop().call_later(60, self.pending.pop, protocol, None)
        conn.hand_off(request, protocol)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        handoff = self.pending.pop(request.protocol, None)
        if handoff is None:  # a second request on a handed-over connection
            response = web.Response(status=400, text="one WebSocket per connection\n")
            response.force_close()
            return response
        request[OUTCOME] = handoff.outcome
        try:
            return await self.forward(request, handoff)
        except UpstreamFault as fault:
            handoff.outcome.upstream_error = fault.reason or None
            handoff.outcome.note = fault.message
            pairs, body = error_parts(fault.message, handoff.outcome.decision)
            response = web.Response(status=fault.status, body=body, headers=pairs)
            response.force_close()
            return response

    async def shutdown(self, timeout: float) -> None:
        await self.server.shutdown(timeout)
        await self.session.close()

    async def forward(self, request: web.BaseRequest, handoff: HandOff) -> web.StreamResponse:
        settings = handoff.settings
        # ws_connect applies no ClientTimeout to its handshake request: bound connecting
        # and waiting for the 101 here, as `forward` does for an ordinary response head.
        handshake = settings.timeouts.connect + settings.timeouts.read
        try:
            async with asyncio.timeout(handshake):
                upstream_ws = await self.session.ws_connect(
                    URL(handoff.url, encoded=True),
                    headers=handoff.headers,
                    protocols=handoff.protocols,
                    timeout=aiohttp.ClientWSTimeout(
                        ws_receive=None, ws_close=settings.timeouts.read
                    ),
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            # A refusal such as 401 or 404 is the upstream's answer: pass its status on.
            # Anything else (a 200, a bad 101) means the upstream speaks no WebSocket here.
            refused = 400 <= exc.status < 600
            handoff.outcome.upstream_status = exc.status
            raise UpstreamFault(
                exc.status if refused else BAD_GATEWAY,
                "" if refused else "protocol",
                f"upstream refused the WebSocket upgrade ({exc.status})",
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError):
            raise UpstreamFault(BAD_GATEWAY, "connect", "upstream unreachable") from None
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise UpstreamFault(
                GATEWAY_TIMEOUT, "timeout", "upstream did not answer in time"
            ) from None
        except aiohttp.ClientError:
            raise UpstreamFault(BAD_GATEWAY, "protocol", "upstream WebSocket failed") from None
        handoff.outcome.upstream_status = 101
        client_ws = web.WebSocketResponse(
            protocols=(upstream_ws.protocol,) if upstream_ws.protocol else ()
        )
        try:
            await client_ws.prepare(request)
            relaying = asyncio.ensure_future(relay(client_ws, upstream_ws))
            try:
                await asyncio.shield(relaying)
            except asyncio.CancelledError:
                # The client's connection is gone (handler cancellation): let the relay
                # pass the client's close code on to the upstream before giving up.
                await asyncio.wait({relaying}, timeout=settings.timeouts.read)
                relaying.cancel()
                raise
        finally:
            await upstream_ws.close()
        return client_ws


async def relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Pump messages both ways until either side closes, then close the other with its code.

    The other direction is stopped *before* its peer is sent the Close frame: aiohttp's
    ``close()`` called while another task sits in ``receive()`` drops the connection at once
    instead of waiting for the peer's Close, which the peer sees as an unclean close (1006).
    """

    async def pump(src: AnyWebSocket, dst: AnyWebSocket) -> aiohttp.WSMessage:
        while True:
            msg = await src.receive()
            if msg.type is WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return msg

    to_upstream = asyncio.ensure_future(pump(client, upstream))
    to_client = asyncio.ensure_future(pump(upstream, client))
    tasks = (to_upstream, to_client)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        ended = to_client if to_client in done else to_upstream
        src, dst = (upstream, client) if ended is to_client else (client, upstream)
        msg = None if ended.cancelled() or ended.exception() else ended.result()
        for ws in (dst, src):  # src is still open only when relaying to dst failed
            if not ws.closed:
                code, reason = relayed_close(msg, to_client=ws is client)
                with contextlib.suppress(Exception):
                    await ws.close(code=code, message=reason)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def relayed_close(msg: aiohttp.WSMessage | None, to_client: bool) -> tuple[int, bytes]:
    """The code and reason to pass on: the peer's own when it sent a Close frame (an empty
    one counts as 1000); when it vanished without one or failed, 1011 to a client whose
    upstream was lost, 1001 to an upstream whose client went away (1006 is never sent)."""
    if msg is not None and msg.type is WSMsgType.CLOSE:
        reason = (msg.extra or "").encode()
        if len(reason) > 123:  # the most a Close frame holds; never split a character
            reason = reason[:123].decode("utf-8", "ignore").encode()
        return msg.data or aiohttp.WSCloseCode.OK, reason
    if to_client:
        return aiohttp.WSCloseCode.INTERNAL_ERROR, b"upstream connection lost"
    return aiohttp.WSCloseCode.GOING_AWAY, b""


def access_logger_for(proxy: Proxy) -> type[AbstractAccessLogger]:
    """aiohttp calls an access logger once the response is sent, so sizes and durations are
    final: WebSocket sessions are logged and counted when they end."""

    class AccessLogger(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return True

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            outcome = request.get(OUTCOME)
            if outcome is None:
                return
            proxy.record(
                outcome,
                request.remote,
                request.method,
                request.raw_path,
                response.status,
                response.body_length,
                request.headers.get("Origin"),
            )

    return AccessLogger
