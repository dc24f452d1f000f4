"""WebSocket upgrades through the proxy: the origin gate, then a transparent tunnel (the
upstream's 101 relayed whole, bytes untouched both ways, the session logged and counted)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from aiohttp import WSMsgType, web

ORIGIN = "https://app.test"
EVIL = "https://evil.test"
CONFIG = """\
upstream: {upstream}
defaults:
  allow_origins: [https://app.test]
  on_disallowed: {on_disallowed}
timeouts: {{read: 1, connect: 1}}
routes:
  - path: /legacy/**
    cors: passthrough
  - path: /closed/**
    cors: {{allow_origins: []}}
"""


class EchoServer:
    """A WebSocket upstream: greets with one text and one binary message, then echoes every
    message back prefixed with ``echo:``, and records what it received and how it ended."""

    def __init__(self, protocols: tuple[str, ...] = ()) -> None:
        self.protocols = protocols
        self.received: list[tuple[WSMsgType, str | bytes]] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.close_with: tuple[int, bytes] | None = None  # close after the greeting
        self.upgrades = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=self.protocols)
        await ws.prepare(request)
        self.upgrades += 1
        await ws.send_str("hello")
        await ws.send_bytes(b"\x00hello\xff")
        if self.close_with is not None:
            code, message = self.close_with
            await ws.close(code=code, message=message)
            self.closed.set()
            return ws
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                self.received.append((msg.type, msg.data))
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.received.append((msg.type, msg.data))
                await ws.send_bytes(b"echo:" + msg.data)
        self.close_code = ws.close_code
        self.closed.set()
        return ws


async def start(upstream, make_proxy, server: EchoServer, on_disallowed: str = "reject"):
    upstream.handler = server.handle
    return await make_proxy(CONFIG, upstream=upstream.url, on_disallowed=on_disallowed)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), 5)


async def greeted(ws: aiohttp.ClientWebSocketResponse) -> None:
    first, second = await receive(ws), await receive(ws)
    assert (first.type, first.data) == (WSMsgType.TEXT, "hello")
    assert (second.type, second.data) == (WSMsgType.BINARY, b"\x00hello\xff")


async def echo_round_trip(ws: aiohttp.ClientWebSocketResponse, server: EchoServer) -> None:
    await greeted(ws)
    await ws.send_str("ping é")
    msg = await receive(ws)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:ping é")
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    await ws.send_bytes(payload)
    msg = await receive(ws)
    assert msg.type is WSMsgType.BINARY
    assert msg.data == b"echo:" + payload
    assert server.received == [(WSMsgType.TEXT, "ping é"), (WSMsgType.BINARY, payload)]


async def test_allowed_origin_relays_text_and_binary_both_ways(
    upstream, make_proxy, client
) -> None:
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await echo_round_trip(ws, server)
    assert server.upgrades == 1
    seen = upstream.seen[0]
    assert seen.header("Upgrade").lower() == "websocket"
    assert seen.header("Origin") == ORIGIN


@pytest.mark.parametrize("on_disallowed", ["reject", "forward"])
async def test_disallowed_origin_gets_403_and_never_reaches_upstream(
    upstream, make_proxy, client, on_disallowed: str
) -> None:
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server, on_disallowed)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with client.ws_connect(proxy.url + "/ws", origin=EVIL):
            pass
    assert caught.value.status == 403
    assert caught.value.headers is not None
    assert not any(k.lower().startswith("access-control-") for k in caught.value.headers)
    assert upstream.seen == []
    assert server.upgrades == 0


async def test_disallowed_origin_refusal_on_the_wire(upstream, make_proxy) -> None:
    """The same refusal seen as raw bytes: a 403, not a 101, with a reason in the body."""
    from conftest import parse_head, raw_request

    server = EchoServer()
    proxy = await start(upstream, make_proxy, server, "forward")
    raw = await raw_request(
        proxy.port,
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Origin: https://evil.test\r\nConnection: close\r\n\r\n",
    )
    status, _, body = parse_head(raw)
    assert status == 403
    assert b"origin" in body.lower()
    assert upstream.seen == []


async def test_upgrade_without_origin_is_proxied(upstream, make_proxy, client) -> None:
    """Unchecked: even on a route that allows no cross-origin access at all."""
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(proxy.url + "/closed/ws") as ws:
        await echo_round_trip(ws, server)
    assert upstream.seen[0].header("Origin") is None


async def test_same_origin_upgrade_is_proxied(upstream, make_proxy, client) -> None:
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    same = f"http://127.0.0.1:{proxy.port}"  # aiohttp sends Host: 127.0.0.1:PORT
    async with client.ws_connect(proxy.url + "/closed/ws", origin=same) as ws:
        await echo_round_trip(ws, server)
    assert upstream.seen[0].header("Origin") == same


async def test_passthrough_route_proxies_any_origin(upstream, make_proxy, client) -> None:
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(proxy.url + "/legacy/ws", origin=EVIL) as ws:
        await echo_round_trip(ws, server)
    assert upstream.seen[0].raw_path == "/legacy/ws"


async def test_closed_route_refuses_cross_origin_upgrade(upstream, make_proxy, client) -> None:
    """The control for the two tests above: the same route does refuse a foreign origin."""
    proxy = await start(upstream, make_proxy, EchoServer())
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with client.ws_connect(proxy.url + "/closed/ws", origin=ORIGIN):
            pass
    assert caught.value.status == 403
    assert upstream.seen == []


async def test_upstream_silent_on_handshake_gets_504(upstream, make_proxy, client) -> None:
    """`timeouts.read` bounds the wait for the upstream's 101 as for any response head."""
    release = asyncio.Event()

    async def silent(request: web.BaseRequest) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)
        return web.Response(text="too late")

    upstream.handler = silent
    proxy = await make_proxy(CONFIG, upstream=upstream.url, on_disallowed="reject")
    started = time.monotonic()
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            async with asyncio.timeout(4), client.ws_connect(proxy.url + "/ws", origin=ORIGIN):
                pass
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert caught.value.status == 504
    assert elapsed < 3, f"answered after {elapsed:.2f}s; read timeout is 1 s"


async def test_subprotocol_chosen_by_upstream_reaches_client(upstream, make_proxy, client) -> None:
    server = EchoServer(protocols=("chat.v2",))
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(
        proxy.url + "/ws", origin=ORIGIN, protocols=("chat.v1", "chat.v2")
    ) as ws:
        assert ws.protocol == "chat.v2"
        await greeted(ws)
    offered = upstream.seen[0].header("Sec-WebSocket-Protocol") or ""
    assert [p.strip() for p in offered.split(",")] == ["chat.v1", "chat.v2"]


async def test_no_subprotocol_when_upstream_picks_none(upstream, make_proxy, client) -> None:
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN, protocols=("chat.v1",)) as ws:
        assert ws.protocol is None
        await greeted(ws)


async def test_upstream_close_code_reaches_client(upstream, make_proxy, client) -> None:
    server = EchoServer()
    server.close_with = (4001, b"upstream says bye")
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await greeted(ws)
        msg = await receive(ws)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4001
        assert msg.extra == "upstream says bye"
        assert ws.close_code == 4001


async def test_client_close_code_reaches_upstream(upstream, make_proxy, client) -> None:
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await greeted(ws)
        await ws.close(code=4002, message=b"client says bye")
        # The closing handshake with the proxy completed: not an abnormal 1006.
        assert ws.close_code == aiohttp.WSCloseCode.OK
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_code == 4002


async def test_upstream_vanishing_ends_the_client_connection(upstream, make_proxy, client) -> None:
    """The upstream drops its TCP connection without a Close frame: the tunnel passes the
    close on (as nginx does), the proxy invents no frame, and the client sees the end."""

    async def vanish(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        assert request.transport is not None
        request.transport.abort()
        return ws

    upstream.handler = vanish
    proxy = await make_proxy(CONFIG, upstream=upstream.url, on_disallowed="reject")
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "hello")
        msg = await receive(ws)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        assert ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE


async def test_client_vanishing_ends_the_upstream_connection(upstream, make_proxy) -> None:
    """The client drops its TCP connection without a Close frame: the upstream's connection
    ends promptly too, as if the client were directly connected (an abnormal closure)."""
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://app.test\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        await asyncio.wait_for(reader.readexactly(2 + 5), 5)  # the greeting "hello"
    finally:
        writer.transport.abort()
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE


@pytest.mark.parametrize(
    ("upstream_status", "expected"),
    [
        pytest.param(401, 401, id="refusal-status-passed-on"),
        pytest.param(404, 404, id="missing-endpoint-passed-on"),
        pytest.param(403, 403, id="forbidden-passed-on"),
        pytest.param(200, 200, id="a-plain-answer-is-relayed-as-any-response"),
    ],
)
async def test_upstream_refusing_the_upgrade(
    upstream, make_proxy, client, upstream_status, expected
) -> None:
    async def refuse(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            status=upstream_status, text="no", headers={"Access-Control-Allow-Origin": "*"}
        )

    upstream.handler = refuse
    proxy = await make_proxy(CONFIG, upstream=upstream.url, on_disallowed="reject")
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(proxy.url + "/ws", headers={"Origin": ORIGIN})
    assert caught.value.status == expected
    assert len(upstream.seen) == 1
    # Relayed with the route's CORS handling: the upstream's own Access-Control-* headers
    # removed, Vary: Origin added (browsers read no CORS headers on a handshake answer).
    assert caught.value.headers is not None
    assert caught.value.headers.get("Access-Control-Allow-Origin") is None
    assert caught.value.headers.get("Vary") == "Origin"
