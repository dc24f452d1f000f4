"""The WebSocket tunnel: after the upstream's 101, the proxy is invisible. Messages of any
size, extensions and subprotocols end to end, the 101's own headers, flow control both ways,
its own idle deadline, Close 1001 on shutdown, and one log line and count per session."""

# ruff: noqa: F811  (proxy_process, imported below, is a fixture named as a parameter)
from __future__ import annotations

import asyncio
import json
import time
import zlib

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from procutil import eventually
from test_streaming import GiB, MiB, RssSampler, figures, proxy_process  # noqa: F401
from test_websocket import ORIGIN, EchoServer, greeted, receive

from corsproxy.http.frames import FrameTracker, close_frame, header_size, payload_size

CONFIG = """\
upstream: {upstream}
defaults:
  allow_origins: [https://app.test]
timeouts: {{read: 0.5, idle: 0.5, shutdown: 0.3, websocket_idle: {websocket_idle}}}
"""

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: https://app.test\r\n\r\n"
)


async def start(upstream, make_proxy, handler, websocket_idle: float = 30):
    upstream.handler = handler
    return await make_proxy(CONFIG, upstream=upstream.url, websocket_idle=str(websocket_idle))


def big_echo_server() -> EchoServer:
    """The echo upstream with no message size limit (aiohttp's default is 4 MiB)."""
    server = EchoServer()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        server.closed.set()
        return ws

    server.handle = handle  # type: ignore[method-assign]
    return server


async def test_16_mib_message_crosses_both_ways(upstream, make_proxy, client):
    """No message size limit: aiohttp's own 4 MiB default killed an 8 MiB message."""
    server = big_echo_server()
    proxy = await start(upstream, make_proxy, server.handle)
    payload = bytes(range(256)) * (16 * MiB // 256)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN, max_msg_size=0) as ws:
        await ws.send_bytes(payload)
        msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type is WSMsgType.BINARY
        assert msg.data == payload[::-1]


async def test_the_101_is_relayed_whole(upstream, make_proxy):
    """Every header of the upstream's 101 reaches the client: Set-Cookie, the subprotocol
    the upstream chose, and its own headers."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("graphql-transport-ws",))
        ws.set_cookie("sid", "s3cret", path="/")
        ws.headers["X-Upstream"] = "yes"
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.receive()
        return ws

    proxy = await start(upstream, make_proxy, handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            HANDSHAKE.replace(
                b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
            )
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        first = await asyncio.wait_for(reader.readexactly(7), 5)
    finally:
        writer.transport.abort()
    assert head.startswith("HTTP/1.1 101 ")
    lines = {line.split(":", 1)[0].lower(): line for line in head.split("\r\n")[1:] if line}
    assert "sid=s3cret" in lines["set-cookie"]
    assert lines["x-upstream"].endswith("yes")
    assert lines["sec-websocket-protocol"].endswith("graphql-transport-ws")
    assert lines["sec-websocket-accept"].endswith("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    assert lines["upgrade"].lower().endswith("websocket")
    assert first == b"\x81\x05hello"  # the upstream's own frame, byte for byte


async def test_permessage_deflate_is_negotiated_end_to_end(upstream, make_proxy, client):
    """The client's extension offer reaches the upstream and the upstream's answer reaches the
    client: compressed frames cross the proxy as they are (it was inflated and deflated
    again in the proxy, per leg)."""
    server = EchoServer()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        server.closed.set()
        return ws

    proxy = await start(upstream, make_proxy, handler)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN, compress=15) as ws:
        assert ws.compress, "the client's offer was not accepted end to end"
        await ws.send_str("x" * 100_000)
        msg = await receive(ws)
        assert msg.data == "echo:" + "x" * 100_000
    assert "permessage-deflate" in (upstream.seen[0].header("Sec-WebSocket-Extensions") or "")


async def test_idle_tunnel_outlives_read_and_idle_timeouts(upstream, make_proxy, client):
    """A tunnel is not an HTTP exchange: silence longer than timeouts.read and .idle (0.5 s
    here) leaves it open."""
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server.handle)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await greeted(ws)
        await asyncio.sleep(1.5)  # the scenario: a quiet tunnel, three times read and idle
        await ws.send_str("still here")
        msg = await receive(ws)
        assert msg.data == "echo:still here"


async def test_tunnel_closes_after_websocket_idle(upstream, make_proxy, client, capsys):
    """timeouts.websocket_idle without a byte either way closes the tunnel, and says so."""
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server.handle, websocket_idle=0.5)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await greeted(ws)
        started = time.monotonic()
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        assert time.monotonic() - started < 3
    await eventually(lambda: "websocket_idle" in capsys.readouterr().out, 5, "the log line")
    assert not proxy.proxy.tunnels


async def test_shutdown_sends_close_1001_to_both_sides(upstream, make_proxy, client):
    """SIGTERM with a tunnel open: after timeouts.shutdown, each side gets Close 1001
    ("going away") at a frame boundary, then the TCP close."""
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server.handle)
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await greeted(ws)
        await asyncio.wait_for(proxy.stop(), 5)
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_code == 1001


async def test_session_is_logged_and_counted_when_it_ends(upstream, make_proxy, client, capsys):
    """One access-log line per session (status 101, bytes each way, the decision), counted
    in corsproxy_requests_total{kind="websocket"}; the open-tunnel gauge goes up and down."""
    server = EchoServer()
    proxy = await start(upstream, make_proxy, server.handle)
    registry = proxy.metrics.registry

    def sample(name: str, **labels: str) -> float:
        value = registry.get_sample_value(name, labels)
        return value or 0.0

    capsys.readouterr()
    async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
        await greeted(ws)
        assert sample("corsproxy_websocket_sessions") == 1
        await ws.send_bytes(b"z" * 1000)
        await receive(ws)
    await eventually(lambda: not proxy.proxy.tunnels, 5, "the session ended")
    lines: list[dict] = []

    def logged() -> bool:
        lines.extend(json.loads(x) for x in capsys.readouterr().out.splitlines() if x)
        return any(line["status"] == 101 for line in lines)

    await eventually(logged, 5, "the session's log line")
    (line,) = [line for line in lines if line["status"] == 101]
    assert (line["kind"], line["decision"], line["origin"]) == ("websocket", "allowed", ORIGIN)
    assert line["bytes_received"] > 1000  # the client's masked frame, its close included
    assert line["bytes"] > 1000 + 5 + 8  # the 101, the greeting, the echo
    assert (
        sample("corsproxy_requests_total", route="default", kind="websocket", decision="allowed")
        == 1
    )
    assert sample("corsproxy_websocket_sessions") == 0


@pytest.mark.slow
async def test_1gib_to_a_slow_reader_in_bounded_memory(upstream, proxy_process):
    """Flow control both ways: a reader slower than the upstream makes the proxy stop
    reading the upstream, so its memory stays flat over 1 GiB."""
    block = bytes(range(256)) * (MiB // 256)
    sent_crc = 0

    async def source(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal sent_crc
        if request.path == "/warm":
            return web.Response(text="warm")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        for i in range(GiB // MiB):
            message = i.to_bytes(8, "big") + block[8:]
            sent_crc = zlib.crc32(message, sent_crc)
            await ws.send_bytes(message)
        await ws.close()
        return ws

    upstream.handler = source
    count, crc = 0, 0
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy_process.url + "/warm") as resp:
            await resp.read()
        with RssSampler(proxy_process.pid) as sampler:
            started = time.monotonic()
            async with (
                asyncio.timeout(180),
                session.ws_connect(proxy_process.url + "/ws", max_msg_size=0) as ws,
            ):
                async for msg in ws:
                    count += len(msg.data)
                    crc = zlib.crc32(msg.data, crc)
                    if count % (64 * MiB) == 0:
                        await asyncio.sleep(0.05)  # the scenario: a reader that dawdles
            elapsed = time.monotonic() - started
    text = figures("websocket download", sampler, count, elapsed)
    assert count == GiB, text
    assert crc == sent_crc, text
    assert sampler.growth < 100 * MiB, text


# --- the frame tracker (pure) -------------------------------------------------------------------

FRAMES = [
    pytest.param(b"\x81\x05hello", [7], id="small-unmasked-text"),
    pytest.param(b"\x81\x85abcd" + b"xxxxx", [11], id="small-masked"),
    pytest.param(b"\x82\x7e\x01\x00" + b"p" * 256, [260], id="16-bit-length"),
    pytest.param(b"\x82\x7f" + (70000).to_bytes(8, "big") + b"q" * 70000, [70010], id="64-bit"),
    pytest.param(b"\x01\x03abc" + b"\x89\x00" + b"\x80\x02de", [5, 7, 11], id="ping-in-fragments"),
    pytest.param(b"\x88\x02\x03\xe8", [4], id="close-frame"),
    pytest.param(b"\x81\x00" * 3, [2, 4, 6], id="empty-payloads"),
]


@pytest.mark.parametrize(("stream", "boundaries"), FRAMES)
@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1 << 20], ids=lambda n: f"fed-{n}-bytes-at-a-time")
def test_frame_tracker_finds_every_boundary(stream, boundaries, piece):
    """RFC 6455 5.2: boundaries found from headers alone, however the bytes are split: after
    each piece, the tracker is at a boundary exactly when one falls there."""
    tracker = FrameTracker()
    for end in range(piece, len(stream) + piece, piece):
        chunk = stream[end - piece : end]
        assert tracker.feed(chunk) == len(chunk)
        assert tracker.at_boundary is (min(end, len(stream)) in boundaries), end


def test_stop_at_boundary_holds_back_the_next_frame():
    """Shutdown lets the frame in flight finish and nothing after it."""
    tracker = FrameTracker()
    stream = b"\x81\x05hello\x81\x05world"
    tracker.feed(stream[:3])  # mid-frame
    assert tracker.feed(stream[3:], stop_at_boundary=True) == 4
    assert tracker.at_boundary
    assert tracker.feed(stream[7:], stop_at_boundary=True) == 0  # already at one


@pytest.mark.parametrize(
    ("head", "size", "payload"),
    [
        (b"\x81\x05", 2, 5),
        (b"\x81\x85", 6, 5),
        (b"\x82\x7e\x01\x00", 4, 256),
        (b"\x82\xfe\x01\x00", 8, 256),
        (b"\x82\x7f" + (1 << 40).to_bytes(8, "big"), 10, 1 << 40),
        (b"\x82\xff" + (1 << 40).to_bytes(8, "big"), 14, 1 << 40),
    ],
)
def test_header_sizes(head, size, payload):
    assert header_size(head) == size
    assert payload_size(head) == payload
    assert header_size(head[:1]) is None


def test_close_frames_masked_toward_servers_only():
    assert close_frame(masked=False) == b"\x88\x02\x03\xe9"
    masked = close_frame(masked=True)
    assert masked[:2] == b"\x88\x82" and len(masked) == 8
    key, body = masked[2:6], masked[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"\x03\xe9"
