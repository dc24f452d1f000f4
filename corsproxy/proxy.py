"""The HTTP layer: reads the request, asks the engine, answers or forwards (SPEC 4, 5).

All I/O lives here. The CORS decision is made before anything is forwarded and applied to
the response head before ``prepare()``; bodies stream through in bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from corsproxy import headers as h
from corsproxy import origins
from corsproxy.cors import (
    PASSTHROUGH,
    Action,
    Decision,
    Kind,
    RequestFacts,
    decide,
    expose_value_for,
)
from corsproxy.origins import routing_host
from corsproxy.paths import PathError, Target, parse_target
from corsproxy.policy import Settings, Upstream

log = logging.getLogger("corsproxy")

# Large enough that a 1 GiB body moves in few, cheap reads; small enough to bound memory.
READ_CHUNK = 256 * 1024
BAD_GATEWAY = 502
GATEWAY_TIMEOUT = 504
NOT_FOUND = 404
BAD_REQUEST = 400
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_NEVER_FORWARDED = h.HOP_BY_HOP | {"host", "expect"}


@functools.lru_cache(maxsize=16)
def client_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    """``read`` bounds each wait for the upstream (the head, then each chunk), not the whole
    response, so long streams keep flowing (SPEC 4)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


class UpstreamFault(Exception):
    """The upstream could not be reached or misbehaved; ``reason`` is a metric label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class Outcome:
    """What one request came to, for logs and metrics."""

    route: str
    decision: Decision
    upstream_status: int | None = None
    upstream_error: str | None = None  # connect | timeout | protocol
    note: str = ""  # why the proxy answered an error itself, for the log
    # uvloop's clock, which aiohttp's access logger uses, moves in whole milliseconds:
    # too coarse for local answers, so the request is timed here.
    started: float = field(default_factory=time.perf_counter)


OUTCOME = web.RequestKey("outcome", Outcome)
AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class RelayedResponse(web.StreamResponse):
    """A response whose head is the upstream's. aiohttp gives every non-empty body a
    ``Content-Type: application/octet-stream`` by default; a relayed answer keeps only
    the upstream's, so a response without one stays without one (browsers then sniff)."""

    async def _prepare_headers(self) -> None:
        had_type = h.CONTENT_TYPE in self.headers
        await super()._prepare_headers()
        if not had_type:
            self.headers.popall(h.CONTENT_TYPE, None)


class Proxy:
    """The request handler. ``settings`` is swapped whole on reload; each request reads it once."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        settings = self.settings
        host = routing_host(request.headers.get(h.HOST, ""))
        target: Target | None = None
        path_error = ""
        try:
            target = parse_target(request.raw_path)
            route = settings.table.match(host, target.path)
        except PathError as exc:
            route, path_error = settings.table.fallback, str(exc)
        websocket = is_websocket(request)
        decision = PASSTHROUGH
        if route.policy is not None:
            decision = decide(route.policy, request_facts(request, settings, websocket))
        request[OUTCOME] = Outcome(route.name, decision)
        if target is None:
            # Refused whatever the policy says, preflights included (SPEC 3.1); the
            # decision only tells whether an allowed page may read the 400.
            request[OUTCOME].note = f"bad request path: {path_error}"
            return error_response(BAD_REQUEST, request[OUTCOME].note, decision)
        if decision.action is Action.ANSWER:
            return answer(decision)
        upstream = route.upstream
        if upstream is None:
            request[OUTCOME].note = "no route for this path"
            return error_response(NOT_FOUND, request[OUTCOME].note, decision)
        try:
            if websocket:
                if request.method != "GET" or not web.WebSocketResponse().can_prepare(request).ok:
                    request[OUTCOME].note = "malformed WebSocket handshake"
                    return error_response(BAD_REQUEST, request[OUTCOME].note, decision)
                return await self.forward_websocket(request, upstream, target, settings)
            return await self.forward(request, upstream, target, decision, settings)
        except UpstreamFault as fault:
            request[OUTCOME].upstream_error = fault.reason or None
            request[OUTCOME].note = fault.message
            return error_response(fault.status, fault.message, decision)

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        target: Target,
        decision: Decision,
        settings: Settings,
    ) -> web.StreamResponse:
        url = URL(upstream.target(target.path_qs), encoded=True)
        out_headers = upstream_request_headers(request, upstream, settings)
        has_body = request.body_exists
        if has_body and request.headers.get(h.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        timeout = client_timeout(settings.timeouts.connect, settings.timeouts.read)
        resp = await self.send(request, url, out_headers, has_body, timeout)
        request[OUTCOME].upstream_status = resp.status
        try:
            response = RelayedResponse(status=resp.status, reason=resp.reason)
            copy_response_headers(resp.headers, response.headers, decision)
            await response.prepare(request)
            if request.method == "HEAD" or await self.stream_body(request, resp, response):
                await response.write_eof()
            return response
        finally:
            resp.close()

    async def send(
        self,
        request: web.BaseRequest,
        url: URL,
        headers: CIMultiDict[str],
        has_body: bool,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        # A pooled connection the upstream has just closed fails before any answer. Only a
        # bodiless idempotent request is sent again (RFC 9110 9.2.2): a POST is never
        # replayed, and a streamed body cannot be rewound. aiohttp's own retry is off (see
        # make_session), because it would resend the unread rest of a streamed body.
        retry = not has_body and request.method in IDEMPOTENT_METHODS
        try:
            while True:
                try:
                    return await self.session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=request.content if has_body else None,
                        allow_redirects=False,
                        timeout=timeout,
                    )
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if not retry or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                    retry = False
        except aiohttp.ServerDisconnectedError:
            raise UpstreamFault(BAD_GATEWAY, "protocol", "upstream closed the connection") from None
        except (aiohttp.ConnectionTimeoutError, TimeoutError):
            raise UpstreamFault(
                GATEWAY_TIMEOUT, "timeout", "upstream did not answer in time"
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError):
            raise UpstreamFault(BAD_GATEWAY, "connect", "upstream unreachable") from None
        except aiohttp.ClientError:
            raise UpstreamFault(
                BAD_GATEWAY, "protocol", "upstream sent an invalid response"
            ) from None

    async def stream_body(
        self,
        request: web.BaseRequest,
        resp: aiohttp.ClientResponse,
        response: web.StreamResponse,
    ) -> bool:
        """Copy the body chunk by chunk as it arrives (SSE events are flushed one by one).

        False when it stopped short. An upstream failure after the head was sent cannot
        become a 502: the client connection is cut instead, so a truncated body is never
        mistaken for a whole one. A client that went away simply ends the copy.
        """
        while True:
            try:
                chunk = await resp.content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else "protocol"
                request[OUTCOME].upstream_error = reason
                request[OUTCOME].note = "upstream failed mid-body"
                if request.transport is not None:
                    request.transport.close()
                return False
            if not chunk:
                return True
            try:
                await response.write(chunk)
            except ConnectionError:
                request[OUTCOME].note = "client went away mid-body"
                return False

    async def forward_websocket(
        self, request: web.BaseRequest, upstream: Upstream, target: Target, settings: Settings
    ) -> web.StreamResponse:
        scheme = "wss" if upstream.url.startswith("https") else "ws"
        url = URL(scheme + upstream.target(target.path_qs)[upstream.url.index(":") :], encoded=True)
        out_headers = upstream_request_headers(request, upstream, settings)
        for name in list(out_headers):
            if name.lower() in h.WEBSOCKET_HANDSHAKE:
                del out_headers[name]
        protocols = h.split_list(request.headers.get(h.SEC_WEBSOCKET_PROTOCOL, ""))
        # ws_connect applies no ClientTimeout to its handshake request: bound connecting
        # and waiting for the 101 here, as `forward` does for an ordinary response head.
        handshake = settings.timeouts.connect + settings.timeouts.read
        try:
            async with asyncio.timeout(handshake):
                upstream_ws = await self.session.ws_connect(
                    url,
                    headers=out_headers,
                    protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(
                        ws_receive=None, ws_close=settings.timeouts.read
                    ),
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            # A refusal such as 401 or 404 is the upstream's answer: pass its status on.
            # Anything else (a 200, a bad 101) means the upstream speaks no WebSocket here.
            refused = 400 <= exc.status < 600
            request[OUTCOME].upstream_status = exc.status
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
        request[OUTCOME].upstream_status = 101
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


def request_facts(request: web.BaseRequest, settings: Settings, websocket: bool) -> RequestFacts:
    headers = request.headers
    origins = tuple(headers.getall(h.ORIGIN, ()))
    if not origins:
        return RequestFacts(request.method, origins, "", websocket=websocket)
    request_headers = headers.getall(h.AC_REQUEST_HEADERS, None)
    return RequestFacts(
        method=request.method,
        origins=origins,
        addressed_origin=addressed_origin(request, settings),
        request_method=headers.get(h.AC_REQUEST_METHOD),
        request_headers=",".join(request_headers) if request_headers else None,
        request_private_network=headers.get(h.AC_REQUEST_PRIVATE_NETWORK, "").lower() == "true",
        websocket=websocket,
    )


def addressed_origin(request: web.BaseRequest, settings: Settings) -> str:
    """``scheme://host[:port]`` the client addressed, to tell same-origin requests (SPEC 4.1)."""
    scheme = "https" if settings.tls is not None else "http"
    host = request.headers.get(h.HOST, "")
    if settings.trust_forwarded:
        proto = request.headers.get(h.X_FORWARDED_PROTO)
        if proto:
            scheme = proto.split(",")[0].strip().lower()
        forwarded_host = request.headers.get(h.X_FORWARDED_HOST)
        if forwarded_host:
            host = forwarded_host.split(",")[0].strip()
    return origins.addressed_origin(scheme, host)


def is_websocket(request: web.BaseRequest) -> bool:
    if request.headers.get(h.UPGRADE, "").lower() != "websocket":
        return False
    return "upgrade" in h.connection_listed(request.headers.getall(h.CONNECTION, ()))


def upstream_request_headers(
    request: web.BaseRequest, upstream: Upstream, settings: Settings
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, with Host and X-Forwarded-* set (SPEC 5)."""
    incoming = request.headers
    listed = incoming.getall(h.CONNECTION, ())
    drop = _NEVER_FORWARDED | h.connection_listed(listed) if listed else _NEVER_FORWARDED
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in drop:
            out.add(name, value)
    client_host = incoming.get(h.HOST, "")
    out[h.HOST] = client_host if settings.preserve_host and client_host else upstream.host_header
    prior = ", ".join(incoming.getall(h.X_FORWARDED_FOR, ()))
    remote = request.remote or ""
    out[h.X_FORWARDED_FOR] = f"{prior}, {remote}" if prior else remote
    if not (settings.trust_forwarded and h.X_FORWARDED_PROTO in incoming):
        out[h.X_FORWARDED_PROTO] = "https" if settings.tls is not None else "http"
    if not (settings.trust_forwarded and h.X_FORWARDED_HOST in incoming):
        if client_host:
            out[h.X_FORWARDED_HOST] = client_host
        else:  # HTTP/1.0 without Host: never pass on the client's own claim
            out.popall(h.X_FORWARDED_HOST, None)
    return out


def copy_response_headers(
    upstream: CIMultiDictProxy[str], out: CIMultiDict[str], decision: Decision
) -> None:
    """Upstream response head -> client response head, with the decision applied."""
    listed = upstream.getall(h.CONNECTION, ())
    drop = h.HOP_BY_HOP | h.connection_listed(listed) if listed else h.HOP_BY_HOP
    for name, value in upstream.items():
        lower = name.lower()
        if lower in drop or (decision.strip and lower.startswith(h.ACCESS_CONTROL_PREFIX)):
            continue
        out.add(name, value)
    apply_decision(out, decision, upstream.keys() if decision.expose_upstream else ())


def apply_decision(
    out: CIMultiDict[str], decision: Decision, upstream_names: Iterable[str] = ()
) -> None:
    for name, value in decision.headers:
        out[name] = value
    if decision.expose_upstream and decision.cors_allowed:
        exposed = expose_value_for(upstream_names)
        if exposed:
            out[h.AC_EXPOSE_HEADERS] = exposed
    if decision.vary:
        merged = h.merge_vary(out.getall(h.VARY, ()), decision.vary)
        if merged is not None:
            out[h.VARY] = merged


_REFUSAL_PREFIX = {
    Kind.PREFLIGHT: "CORS preflight rejected",
    Kind.ACTUAL: "CORS request rejected",
    Kind.WEBSOCKET: "WebSocket rejected",
}


def answer(decision: Decision) -> web.Response:
    """The proxy's own answer: a preflight, a 403 refusal, or a 400 for several Origins."""
    if decision.reason:
        prefix = _REFUSAL_PREFIX.get(decision.kind, "Bad request")
        response = web.Response(
            status=decision.status, text=f"{prefix}: {decision.reason}\n", content_type="text/plain"
        )
    else:
        response = web.Response(status=decision.status)
    apply_decision(response.headers, decision)
    return response


def error_response(status: int, message: str, decision: Decision) -> web.Response:
    """400/404/502/504 made by the proxy. An allowed cross-origin page gets the same CORS
    headers a forwarded response would carry, so it can read the error (SPEC 4)."""
    response = web.Response(status=status, text=message + "\n", content_type="text/plain")
    if not decision.cors_allowed:
        decision = replace(decision, headers=())
    apply_decision(response.headers, decision)
    return response
