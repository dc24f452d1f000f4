"""HTTP/1.1 on the wire, both legs: the framing, keep-alive and connection-lifetime rules
the proxy's own HTTP layer owns (http/listener.py for clients, http/upstream.py for upstreams).

Clients are raw sockets, since an HTTP client would hide the framing. Upstreams are the
recording aiohttp server from conftest or, where the exact bytes matter, a bare asyncio
server that answers with scripted bytes (``raw_upstream``). Every table row names the rule
it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import WSMsgType, web
from conftest import parse_head
from procutil import eventually

from corsproxy.config.load import parse_settings
from corsproxy.http import proxy as proxy_module
from corsproxy.http.listener import ClientConnection

APP = "https://app.test"
OTHER = "https://other.test"
EVIL = "https://evil.test"
MiB = 1 << 20

CONFIG = """
upstream: {upstream}
defaults:
  allow_origins: [https://app.test, https://other.test]
  allow_methods: [GET, HEAD, POST, PUT]
  allow_headers: [X-Token]
routes:
  - path: /star/**
    cors:
      allow_origins: ["*"]
      allow_methods: ["*"]
      allow_headers: ["*"]
"""

IDLE_CONFIG = CONFIG + "timeouts: {{idle: 0.5}}\n"


# --- the client side: raw requests and a strict response reader -----------------------------


def request(
    method: str = "GET",
    target: str = "/x",
    *headers: str,
    version: str = "1.1",
    body: bytes = b"",
    close: bool = False,
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: front.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def preflight(target: str = "/x", origin: str = APP, *headers: str) -> bytes:
    return request(
        "OPTIONS", target, f"Origin: {origin}", "Access-Control-Request-Method: PUT", *headers
    )


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # length, chunked, close (read to EOF) or none

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


async def read_response(
    reader: asyncio.StreamReader, method: str = "GET", timeout: float = 5.0
) -> Response:
    """One response, its body read by its own framing (RFC 9112 6.3). A body that stops
    short raises IncompleteReadError; a 1xx comes back on its own."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers, _ = parse_head(head)
        response = Response(status, headers, b"", "none")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return response
        encoding = ",".join(response.all("Transfer-Encoding")).lower()
        if "chunked" in encoding:
            response.framing = "chunked"
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer fields
                    return response
                response.body += await reader.readexactly(size)
                assert await reader.readexactly(2) == b"\r\n", "chunk not followed by CRLF"
        length = response.header("Content-Length")
        if length is not None:
            response.framing = "length"
            response.body = await reader.readexactly(int(length))
        else:
            response.framing = "close"
            response.body = await reader.read()
        return response


async def read_final(
    reader: asyncio.StreamReader, method: str = "GET", timeout: float = 5.0
) -> tuple[int, Response]:
    """The final response and how many 1xx came before it."""
    interim = 0
    while True:
        response = await read_response(reader, method, timeout)
        if response.status >= 200:
            return interim, response
        interim += 1


async def closed_within(
    reader: asyncio.StreamReader, timeout: float, reset_ok: bool = True
) -> bytes:
    """What arrives before the proxy closes the connection (fails if it does not in time).

    A reset is a close too: a proxy that closes while the client's bytes are still unread
    (or still arriving) makes the kernel answer with RST, and whether it comes to that
    depends on socket buffers and scheduling, not on the proxy. Read piece by piece so bytes
    that arrived before a reset are still returned. ``reset_ok=False`` where "not reset" is
    the point of the test."""
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                if not reset_ok:
                    raise
                return received
            if not data:
                return received
            received += data


@contextlib.asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()  # the proxy stopped reading: do not wait to flush
        else:
            writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- the upstream side: a bare server that answers with scripted bytes ----------------------


@dataclass
class RawUpstream:
    """A bare asyncio server; ``script`` runs once per connection the proxy opens."""

    url: str = ""
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # the proxy closed on us
    gone_at: float = 0.0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request head, recorded; its Content-Length body read and dropped."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        return head

    def saw_close(self) -> None:
        if not self.gone.is_set():
            self.gone_at = asyncio.get_running_loop().time()
            self.gone.set()

    async def until_closed(self, reader: asyncio.StreamReader, limit: float = 10) -> None:
        """Read (and drop) whatever the proxy sends until it closes the connection."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(limit):
                while await reader.read(65536):
                    pass
                self.saw_close()


Script = Callable[[RawUpstream, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Script], Awaitable[RawUpstream]]]:
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def factory(script: Script) -> RawUpstream:
        up = RawUpstream()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            up.connections += 1
            try:
                await script(up, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                up.saw_close()
            finally:
                tasks.discard(task)
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return up

    yield factory
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


def answers_once(data: bytes, limit: float = 10) -> Script:
    """An upstream script: read one request, send ``data``, then stay open until the proxy
    closes, or ``limit`` seconds (so whatever the client sees comes from the bytes alone)."""

    async def script(up: RawUpstream, reader, writer) -> None:
        await up.read_request(reader)
        writer.write(data)
        await writer.drain()
        await up.until_closed(reader, limit)

    return script


def answer(status: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def says_method_and_path(request: web.BaseRequest) -> web.StreamResponse:
    """For the recording upstream: the body tells which request it answers."""
    if request.path.startswith("/slow"):
        await asyncio.sleep(0.2)  # later requests are parsed long before this one is answered
    body = await request.read()
    return web.Response(text=f"{request.method} {request.path} {len(body)}")


# --- 1. pipelining ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    data: bytes  # the request (the last of a pipeline gets Connection: close added)
    method: str
    status: int
    body: bytes | None  # None: not checked (the proxy's own answer)
    forwarded: str | None = None  # "METHOD /path" the upstream must see


def get_step(path: str, *headers: str) -> Step:
    return Step(request("GET", path, *headers), "GET", 200, f"GET {path} 0".encode(), f"GET {path}")


PREFLIGHT_STEP = Step(preflight("/p"), "OPTIONS", 204, b"")

PIPELINES = [
    pytest.param(
        [get_step("/slow/a", f"Origin: {APP}"), PREFLIGHT_STEP, get_step("/b")],
        id="slow-get-then-preflight-then-get",
    ),
    pytest.param(
        [PREFLIGHT_STEP, get_step("/slow/a"), get_step("/b")],
        id="preflight-first-then-two-gets",
    ),
    pytest.param(
        [get_step("/a"), get_step("/b"), PREFLIGHT_STEP],
        id="preflight-last",
    ),
    pytest.param(
        [
            Step(
                request("POST", "/slow/up", body=b"p" * 5000),
                "POST",
                200,
                b"POST /slow/up 5000",
                "POST /slow/up",
            ),
            get_step("/after-body"),
        ],
        id="post-body-then-get",
    ),
    pytest.param(
        [
            get_step("/slow/a"),
            Step(
                request("POST", "/big", body=b"p" * MiB),
                "POST",
                200,
                b"POST /big 1048576",
                "POST /big",
            ),
            get_step("/after-big-body"),
        ],
        id="large-body-waiting-behind-a-slow-get",
    ),
    pytest.param(
        [
            Step(request("HEAD", "/slow/h"), "HEAD", 200, b"", "HEAD /slow/h"),
            get_step("/after-head"),
        ],
        id="head-then-get-no-stray-body",
    ),
    pytest.param(
        [Step(request("GET", "/r", f"Origin: {EVIL}"), "GET", 403, None), get_step("/after-403")],
        id="refusal-then-get",
    ),
    pytest.param(
        [
            get_step("/slow/a"),
            get_step("/h2c", "Connection: Upgrade", "Upgrade: h2c"),
            get_step("/b"),
        ],
        id="non-websocket-upgrade-served-as-http-between-gets",
    ),
    pytest.param([get_step(f"/n{i}") for i in range(20)], id="twenty-gets"),
]


@pytest.mark.parametrize("steps", PIPELINES)
async def test_pipelined_requests_answered_in_order_each_complete(upstream, make_proxy, steps):
    upstream.handler = says_method_and_path
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    last = steps[-1].data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    data = b"".join(step.data for step in steps[:-1]) + last
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)  # one write: every request is there before the first is answered
        for i, step in enumerate(steps):
            response = await read_response(reader, step.method)
            assert response.status == step.status, f"response {i}"
            if step.body is not None:
                assert response.body == step.body, f"response {i}"
        assert await closed_within(reader, 2) == b"", "bytes after the last response"
    assert [f"{s.method} {s.raw_path}" for s in upstream.seen] == [
        step.forwarded for step in steps if step.forwarded
    ]


async def test_pipelined_request_after_connection_close_is_never_handled(upstream, make_proxy):
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    data = request("GET", "/first", close=True) + request("GET", "/second")
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        response = await read_response(reader)
        assert response.status == 200
        assert response.header("Connection") == "close"
        assert await closed_within(reader, 2) == b""
    assert [s.raw_path for s in upstream.seen] == ["/first"]


# --- 2. keep-alive idle timeout --------------------------------------------------------------


IDLE_CASES = [
    pytest.param(request("GET", "/x"), True, id="idle-after-a-response"),
    pytest.param(b"", False, id="no-request-at-all"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: front.test\r\n", False, id="incomplete-head"),
    pytest.param(b"GE", False, id="a-few-bytes-of-a-request-line"),
]


@pytest.mark.parametrize(("data", "answered"), IDLE_CASES)
async def test_idle_connection_closed_after_timeouts_idle(upstream, make_proxy, data, answered):
    proxy = await make_proxy(IDLE_CONFIG, upstream=upstream.url)
    loop = asyncio.get_running_loop()
    async with connection(proxy.port) as (reader, writer):
        if data:
            writer.write(data)
        if answered:
            assert (await read_response(reader)).status == 200
        started = loop.time()
        rest = await closed_within(reader, 3)
        elapsed = loop.time() - started
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest[:60]
    assert 0.4 <= elapsed <= 2.0, f"closed after {elapsed:.2f}s with timeouts.idle 0.5"
    if not answered:
        assert upstream.seen == []


async def test_trickled_request_head_closed_after_timeouts_idle(upstream, make_proxy):
    """A head sent one byte at a time keeps the connection busy, never idle: it is bounded
    by timeouts.idle from its first byte (a slow client cannot hold a connection forever)."""
    proxy = await make_proxy(IDLE_CONFIG, upstream=upstream.url)
    loop = asyncio.get_running_loop()
    head = request("GET", "/x", *[f"X-Pad-{n}: {'p' * 20}" for n in range(20)])
    async with connection(proxy.port) as (reader, writer):
        started = loop.time()
        for byte in head[:-2]:
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)  # the scenario: a client trickling its head at 10 bytes/s
            if loop.time() - started > 3:
                break
        rest = await closed_within(reader, 3)
        elapsed = loop.time() - started
    assert rest == b"", rest[:60]
    assert elapsed <= 2.5, f"a trickled head was still open after {elapsed:.2f}s (idle 0.5)"
    assert upstream.seen == []


async def test_connection_in_use_is_not_idle(upstream, make_proxy):
    """A response that takes 1.2 s (longer than idle 0.5) and requests 0.3 s apart for 1.5 s:
    the connection carries all of them."""

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(1.2)  # the scenario: an upstream slower than the idle timeout
        return web.Response(text=request.path)

    upstream.handler = slow
    proxy = await make_proxy(IDLE_CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/slow"))
        assert (await read_response(reader)).body == b"/slow"
        for i in range(5):
            await asyncio.sleep(0.3)  # the scenario: a client pausing between requests
            writer.write(request("GET", f"/n{i}"))
            assert (await read_response(reader)).body == f"/n{i}".encode()


# --- 3. upstream interim 1xx ----------------------------------------------------------------

FINAL = answer("200 OK", "X-Final: yes", body=b"final body")

INTERIM = [
    pytest.param("GET", [b"HTTP/1.1 100 Continue\r\n\r\n", FINAL], id="100-then-200"),
    pytest.param("GET", [b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL], id="100-and-200-in-one-write"),
    pytest.param(
        "GET",
        [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", FINAL],
        id="103-headers-not-merged-into-200",
    ),
    pytest.param(
        "GET",
        [b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", FINAL],
        id="several-interims",
    ),
    pytest.param("POST", [b"HTTP/1.1 100 Continue\r\n\r\n", FINAL], id="100-to-a-post"),
    pytest.param(
        "HEAD",
        [b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL[: FINAL.index(b"\r\n\r\n") + 4]],
        id="head-100-and-200-in-one-write",
    ),
    pytest.param(
        "HEAD",
        [b"HTTP/1.1 100 Continue\r\n\r\n", FINAL[: FINAL.index(b"\r\n\r\n") + 4]],
        id="head-100-then-200",
    ),
]


@pytest.mark.parametrize(("method", "parts"), INTERIM)
async def test_upstream_interim_responses_are_not_relayed(raw_upstream, make_proxy, method, parts):
    async def script(up: RawUpstream, reader, writer) -> None:
        await up.read_request(reader)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)  # the scenario: each part in a read of its own
        await up.until_closed(reader)

    up = await raw_upstream(script)
    # read: 1 -- an exchange that waits on forever must still end in a 504 within 3 s
    proxy = await make_proxy(CONFIG + "timeouts: {{read: 1}}\n", upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        body = b"payload" if method == "POST" else b""
        writer.write(request(method, "/x", body=body))
        interim, response = await read_final(reader, method, timeout=3)
    assert interim == 0, "an upstream 1xx reached the client"
    assert response.status == 200
    assert response.header("X-Final") == "yes"
    assert response.all("Link") == []
    assert response.body == (b"" if method == "HEAD" else b"final body")


async def test_expect_100_continue_gets_exactly_one_100(raw_upstream, make_proxy):
    """The proxy answers the client's Expect itself; the upstream's own 100 is not relayed."""

    up = await raw_upstream(answers_once(b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL))
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("PUT", "/x", "Content-Length: 7", "Expect: 100-continue"))
        first = await read_response(reader)
        assert first.status == 100
        writer.write(b"payload")
        interim, response = await read_final(reader)
    assert interim == 0, "a second 100 reached the client"
    assert (response.status, response.body) == (200, b"final body")
    assert b"expect" not in up.heads[0].lower()


# --- 4. close-delimited upstream bodies ------------------------------------------------------

CLOSE_DELIMITED_BODY = bytes(range(256)) * 512  # 128 KiB, every byte value


async def close_delimited(up: RawUpstream, reader, writer, status_line: bytes) -> None:
    await up.read_request(reader)
    half = len(CLOSE_DELIMITED_BODY) // 2
    writer.write(status_line + b"\r\nContent-Type: application/octet-stream\r\n\r\n")
    writer.write(CLOSE_DELIMITED_BODY[:half])
    await writer.drain()
    await asyncio.sleep(0.05)  # the scenario: the body arrives in two separate pieces
    writer.write(CLOSE_DELIMITED_BODY[half:])
    await writer.drain()
    # returning closes the connection: that is the end of the body


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"], ids=["upstream-1.1", "upstream-1.0"]
)
@pytest.mark.parametrize(
    ("version", "headers", "framing"),
    [
        pytest.param("1.1", (), "chunked", id="http11-client-gets-chunked"),
        pytest.param("1.0", (), "close", id="http10-client-gets-close"),
        pytest.param(
            "1.0", ("Connection: keep-alive",), "close", id="http10-keep-alive-client-gets-close"
        ),
    ],
)
async def test_close_delimited_upstream_body_reframed(
    raw_upstream, make_proxy, status_line, version, headers, framing
):
    async def script(up: RawUpstream, reader, writer) -> None:
        await close_delimited(up, reader, writer, status_line)

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x", *headers, version=version))
        response = await read_response(reader)
        assert response.status == 200
        assert response.framing == framing
        assert response.body == CLOSE_DELIMITED_BODY
        assert response.header("Content-Length") is None
        if framing == "chunked":
            assert response.header("Connection") is None
            # the connection is still good for another request
            writer.write(request("GET", "/again", close=True))
            again = await read_response(reader)
            assert again.body == CLOSE_DELIMITED_BODY
        else:
            assert response.header("Transfer-Encoding") is None
            assert response.header("Connection") == "close"
            # read_response read to EOF: the proxy did close
    assert up.connections == (2 if framing == "chunked" else 1)


async def test_chunked_upstream_body_to_http10_client_is_close_delimited(upstream, make_proxy):
    parts = [b"first ", b"second ", b"third"]

    async def chunked(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in parts:
            await response.write(part)
        await response.write_eof()
        return response

    upstream.handler = chunked
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x", "Connection: keep-alive", version="1.0"))
        response = await read_response(reader)
    assert response.framing == "close"
    assert response.header("Transfer-Encoding") is None
    assert response.header("Connection") == "close"
    assert response.body == b"".join(parts), "chunk framing leaked into an HTTP/1.0 body"


# --- 5. HTTP/1.0 clients ---------------------------------------------------------------------

HTTP10 = [
    pytest.param(
        request("GET", "/a", "Connection: keep-alive", version="1.0"),
        "GET",
        "keep-alive",
        id="get-keep-alive-kept",
    ),
    pytest.param(
        request("GET", "/a", version="1.0"), "GET", "close", id="get-without-keep-alive-closed"
    ),
    pytest.param(
        request(
            "OPTIONS",
            "/a",
            f"Origin: {APP}",
            "Access-Control-Request-Method: PUT",
            "Connection: keep-alive",
            version="1.0",
        ),
        "OPTIONS",
        "keep-alive",
        id="local-answer-keep-alive-kept",
    ),
    pytest.param(
        request("GET", "/a", f"Origin: {EVIL}", version="1.0"),
        "GET",
        "close",
        id="local-refusal-without-keep-alive-closed",
    ),
    pytest.param(
        request("HEAD", "/a", "Connection: Keep-Alive", version="1.0"),
        "HEAD",
        "keep-alive",
        id="head-keep-alive-kept-case-insensitive",
    ),
]


@pytest.mark.parametrize(("data", "method", "connection_header"), HTTP10)
async def test_http10_connection_persistence(upstream, make_proxy, data, method, connection_header):
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        first = await read_response(reader, method)
        assert first.header("Connection") == connection_header
        assert first.framing != "close", "a known length must not need the close to end it"
        if connection_header == "close":
            assert await closed_within(reader, 2) == b""
            return
        writer.write(request("GET", "/second", "Connection: keep-alive", version="1.0"))
        second = await read_response(reader)
        assert (second.status, second.body) == (200, b"ok")
        assert second.header("Connection") == "keep-alive"
        writer.write(request("GET", "/third", version="1.0"))
        third = await read_response(reader)
        assert third.status == 200
        assert third.header("Connection") == "close"
        assert await closed_within(reader, 2) == b""
    assert [s.raw_path for s in upstream.seen][-2:] == ["/second", "/third"]


# --- 6. a WebSocket handshake on a connection that already carried requests -----------------

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3's example
HANDSHAKE = request(
    "GET",
    "/ws",
    f"Origin: {APP}",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {WS_KEY}",
    "Sec-WebSocket-Version: 13",
)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload under 126 bytes)."""
    mask = b"\x1f\x2e\x3d\x4c"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    async with asyncio.timeout(5):
        b0, b1 = await reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        assert not b1 & 0x80, "a server frame must not be masked"
        return b0 & 0x0F, await reader.readexactly(length)


async def ws_or_plain(request: web.BaseRequest) -> web.StreamResponse:
    if request.path != "/ws":
        return web.Response(text="plain")
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str("echo:" + msg.data)
    return ws


@pytest.mark.parametrize(
    ("before", "method", "sending"),
    [
        pytest.param(request("GET", "/plain"), "GET", "after", id="after-forwarded-get"),
        pytest.param(preflight("/ws"), "OPTIONS", "after", id="after-local-preflight"),
        pytest.param(request("GET", "/plain"), "GET", "pipelined", id="pipelined-behind-get"),
        pytest.param(request("HEAD", "/plain"), "HEAD", "pipelined", id="pipelined-behind-head"),
        pytest.param(
            request("GET", "/plain"), "GET", "with-frame", id="first-frame-in-the-same-write"
        ),
    ],
)
async def test_websocket_handshake_on_a_used_keep_alive_connection(
    upstream, make_proxy, before, method, sending
):
    upstream.handler = ws_or_plain
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    hello = ws_frame(0x1, "héllo".encode())
    async with connection(proxy.port) as (reader, writer):
        if sending == "after":
            writer.write(before)
        else:  # the handshake (and maybe a frame) right behind the first request
            writer.write(before + HANDSHAKE + (hello if sending == "with-frame" else b""))
        first = await read_response(reader, method)
        assert first.status in (200, 204)
        if method == "GET":
            assert first.body == b"plain"
        if sending == "after":
            writer.write(HANDSHAKE)
        switch = await read_response(reader)
        assert switch.status == 101
        assert switch.header("Sec-WebSocket-Accept") == WS_ACCEPT
        if sending != "with-frame":
            writer.write(hello)
        assert await read_ws_frame(reader) == (0x1, "echo:héllo".encode())
        writer.write(ws_frame(0x8, (1000).to_bytes(2, "big")))
        opcode, payload = await read_ws_frame(reader)
        assert (opcode, payload[:2]) == (0x8, (1000).to_bytes(2, "big"))
    assert [s.raw_path for s in upstream.seen] == (
        ["/plain", "/ws"] if method != "OPTIONS" else ["/ws"]
    )


# --- 7. upstreams that break HTTP ------------------------------------------------------------

GARBAGE = [
    pytest.param(b"garbage\r\n\r\n", id="not-http-at-all"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="another-protocol-banner"),
    pytest.param(b"\x15\x03\x03\x00\x02\x02\x46", id="binary-tls-alert"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", id="bad-content-length"),
    pytest.param(b"HTTP/1.1 OK\r\n\r\n", id="status-line-without-code"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_upstream_garbage_is_502_with_a_text_reason(raw_upstream, make_proxy, garbage):
    up = await raw_upstream(answers_once(garbage))  # stays open: the 502 is the bytes' doing
    proxy = await make_proxy(CONFIG + "timeouts: {{read: 5}}\n", upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x", close=True))
        response = await read_response(reader, timeout=2)
    assert response.status == 502
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert response.body.startswith(b"upstream ") and b"invalid" in response.body, response.body
    assert response.body.endswith(b"\n") and response.body.count(b"\n") == 1


TRUNCATED = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, id="content-length-short"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        id="chunked-without-last-chunk",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhel", id="chunked-mid-chunk"
    ),
]


@pytest.mark.parametrize("sent", TRUNCATED)
async def test_truncated_upstream_body_cuts_the_client_connection(raw_upstream, make_proxy, sent):
    async def script(up: RawUpstream, reader, writer) -> None:
        await up.read_request(reader)
        writer.write(sent)
        await writer.drain()  # then close, mid-body

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))  # keep-alive: only a cut connection tells
        with pytest.raises(asyncio.IncompleteReadError):
            await read_response(reader)
        assert reader.at_eof()


# --- 8. an early answer while the client is still uploading ----------------------------------

UPLOAD = 16 * MiB


@pytest.mark.parametrize(
    ("after", "wait"),
    [
        pytest.param("closes", 0, id="upstream-answers-at-once-then-closes"),
        pytest.param("drains", 0, id="upstream-answers-at-once-then-reads-the-rest"),
        pytest.param("stalls", 0, id="upstream-answers-at-once-then-stops-reading"),
        pytest.param("closes", 0.5, id="upload-backed-up-upstream-answers-then-closes"),
        pytest.param("drains", 0.5, id="upload-backed-up-upstream-answers-then-reads-the-rest"),
        pytest.param(
            "stalls",
            0.5,
            id="upload-backed-up-upstream-answers-then-stops-reading",
        ),
    ],
)
async def test_early_answer_during_upload_reaches_the_client(raw_upstream, make_proxy, after, wait):
    async def script(up: RawUpstream, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        up.heads.append(head)
        if not head.startswith(b"POST"):
            writer.write(answer("200 OK", "Connection: close", body=b"next"))
            await writer.drain()
            return
        await asyncio.sleep(wait)  # reading nothing: the proxy's writes to us back up
        close = ("Connection: close",) if after == "closes" else ()
        writer.write(answer("413 Content Too Large", *close, body=b"too large"))
        await writer.drain()
        if after == "closes":
            writer.write_eof()
            await up.until_closed(reader)
        elif after == "drains":
            await reader.readexactly(UPLOAD)
            await up.until_closed(reader)
        else:
            await asyncio.sleep(30)  # cancelled at teardown

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):

        async def upload() -> None:
            piece = b"u" * 65536
            for _ in range(UPLOAD // len(piece)):
                writer.write(piece)
                await writer.drain()

        writer.write(request("POST", "/upload", f"Content-Length: {UPLOAD}"))
        sending = asyncio.ensure_future(upload())
        try:
            response = await read_response(reader, timeout=5)
            assert (response.status, response.body) == (413, b"too large")
            # Nothing hangs: the proxy either closes, or takes the rest of the body and
            # serves the next request on the connection.
            if response.header("Connection") == "close":
                assert await closed_within(reader, 5) == b""
            else:
                await asyncio.wait_for(sending, 3)
                writer.write(request("GET", "/next", close=True))
                following = await read_response(reader, timeout=5)
                assert (following.status, following.body) == (200, b"next")
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sending


# --- 9. the query string reaches the upstream byte for byte ---------------------------------


@pytest.mark.parametrize(
    ("prefix", "target", "expected"),
    [
        pytest.param("", "/x?", "/x?", id="empty-query-keeps-question-mark"),
        pytest.param("", "/?", "/?", id="root-empty-query"),
        pytest.param("", "/x??", "/x??", id="question-mark-query"),
        pytest.param("", "/x?&", "/x?&", id="lone-ampersand-query"),
        pytest.param("", "/x", "/x", id="no-query-no-question-mark"),
        pytest.param("/v1", "/x?", "/v1/x?", id="empty-query-after-prefix"),
    ],
)
async def test_query_forwarded_exactly(upstream, make_proxy, prefix, target, expected):
    proxy = await make_proxy("upstream: {upstream}" + prefix + "\n", upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", target, close=True))
        assert (await read_response(reader)).status == 200
    assert [s.raw_path for s in upstream.seen] == [expected]


# --- 10. bodiless answers --------------------------------------------------------------------


async def test_preflight_204_and_answers_to_head_carry_no_body(upstream, make_proxy):
    async def sized(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"b" * 1234)

    upstream.handler = sized
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        # Pipelined: one stray body byte would show up as the start of the next response.
        writer.write(
            preflight("/x")
            + request("HEAD", "/x")
            + request("HEAD", "/x", f"Origin: {EVIL}")
            + request("GET", "/x", close=True)
        )
        answered = await read_response(reader, "OPTIONS")
        assert answered.status == 204
        assert answered.header("Content-Length") is None
        assert answered.header("Transfer-Encoding") is None
        head = await read_response(reader, "HEAD")
        assert head.status == 200
        assert head.header("Content-Length") == "1234"
        assert head.header("Transfer-Encoding") is None
        refused = await read_response(reader, "HEAD")  # the proxy's own answer to a HEAD
        assert refused.status == 403
        assert int(refused.header("Content-Length") or 0) > 0
        got = await read_response(reader)
        assert (got.status, got.body) == (200, b"b" * 1234)
        assert await closed_within(reader, 2) == b""


async def test_head_answer_with_length_does_not_wait_for_a_body(raw_upstream, make_proxy):
    """The upstream's HEAD answer says 1000 bytes and sends none: the proxy must neither wait
    for them nor take the next answer on that pooled connection for them."""

    async def script(up: RawUpstream, reader, writer) -> None:
        while True:
            head = await up.read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                writer.write(answer("200 OK", body=b"data"))
            await writer.drain()

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG + "timeouts: {{read: 5}}\n", upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("HEAD", "/x"))
        head = await read_response(reader, "HEAD", timeout=2)
        assert (head.status, head.header("Content-Length")) == (200, "1000")
        writer.write(request("GET", "/x", close=True))
        got = await read_response(reader, timeout=2)
        assert got.body == b"data"
        assert await closed_within(reader, 2) == b""
    assert up.connections == 1, "the HEAD's upstream connection was not reused"


# --- 11. memoised decisions stay per request -------------------------------------------------


def acah(response: Response) -> set[str]:
    value = response.header("Access-Control-Allow-Headers") or ""
    return {name.strip().lower() for name in value.split(",") if name.strip()}


MEMO_SEQUENCE = [
    # (request, method, status, Access-Control-Allow-Origin, Access-Control-Allow-Headers)
    (request("GET", "/api", f"Origin: {APP}"), "GET", 200, APP, None),
    (request("GET", "/api", f"Origin: {EVIL}"), "GET", 403, None, None),
    (request("GET", "/api", f"Origin: {OTHER}"), "GET", 200, OTHER, None),
    (request("GET", "/api"), "GET", 200, None, None),
    (
        preflight("/api", APP, "Access-Control-Request-Headers: x-token"),
        "OPTIONS",
        204,
        APP,
        {"x-token"},
    ),
    (preflight("/api", APP, "Access-Control-Request-Headers: x-evil"), "OPTIONS", 403, None, None),
    (preflight("/api", OTHER), "OPTIONS", 204, OTHER, None),
    (
        preflight("/api", EVIL, "Access-Control-Request-Headers: x-token"),
        "OPTIONS",
        403,
        None,
        None,
    ),
    (
        preflight("/star/s", APP, "Access-Control-Request-Headers: x-a"),
        "OPTIONS",
        204,
        "*",
        {"x-a"},
    ),
    (
        preflight("/star/s", APP, "Access-Control-Request-Headers: x-b, x-c"),
        "OPTIONS",
        204,
        "*",
        {"x-b", "x-c"},
    ),
    (request("GET", "/api", f"oRiGiN: {EVIL}"), "GET", 403, None, None),
]


async def test_memoised_decisions_match_each_request_on_one_connection(upstream, make_proxy):
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        for round_ in range(3):
            for i, (data, method, status, origin, allowed) in enumerate(MEMO_SEQUENCE):
                writer.write(data)
                response = await read_response(reader, method)
                where = f"round {round_}, request {i}"
                assert response.status == status, where
                assert response.header("Access-Control-Allow-Origin") == origin, where
                if allowed is not None:
                    assert acah(response) == allowed, where
                elif method == "OPTIONS":
                    assert response.header("Access-Control-Allow-Headers") is None, where
    forwarded = sum(1 for _, method, status, _, _ in MEMO_SEQUENCE if status == 200)
    assert len(upstream.seen) == 3 * forwarded


# --- 12. a client leaving takes its upstream exchange with it -------------------------------


@pytest.mark.parametrize("when", ["before-head", "mid-body"])
async def test_client_leaving_closes_the_upstream_connection(raw_upstream, make_proxy, when):
    async def script(up: RawUpstream, reader, writer) -> None:
        await up.read_request(reader)
        watching = asyncio.ensure_future(up.until_closed(reader))
        try:
            if when == "mid-body":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(200):  # 10 s of a slow stream, unless the proxy hangs up
                    if up.gone.is_set():
                        break
                    writer.write(b"400\r\n" + b"s" * 1024 + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)  # the scenario: a slow stream
            await watching
        finally:
            watching.cancel()

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG, upstream=up.url)
    loop = asyncio.get_running_loop()
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/stream"))
        if when == "mid-body":
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.wait_for(reader.readexactly(3000), 5)
        else:
            await eventually(lambda: up.heads, what="the request reached the upstream")
    left = loop.time()
    await asyncio.wait_for(up.gone.wait(), 3)
    assert up.gone_at - left < 1.0, f"upstream connection closed {up.gone_at - left:.2f}s later"


# --- request framing the proxy must refuse (request smuggling) ------------------------------

AMBIGUOUS = [
    pytest.param(
        ["Content-Length: 5", "Transfer-Encoding: chunked"], id="content-length-and-chunked"
    ),
    pytest.param(["Content-Length: 5", "Content-Length: 6"], id="two-content-lengths"),
    pytest.param(["Content-Length: 5a"], id="content-length-not-a-number"),
    pytest.param(["Transfer-Encoding: chunked, identity"], id="chunked-not-last"),
]


@pytest.mark.parametrize("headers", AMBIGUOUS)
async def test_ambiguous_request_framing_is_refused_and_never_forwarded(
    upstream, make_proxy, headers
):
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    smuggled = request("GET", "/smuggled")
    data = request("POST", "/x", *headers) + b"0\r\n\r\n" + smuggled
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        response = await read_response(reader)
        assert response.status == 400
        assert response.header("Connection") == "close"
        assert await closed_within(reader, 2) == b""
    assert upstream.seen == []


# --- what a review of the layer found (each was reproduced before it was fixed) --------------

SMUGGLED = request("GET", "/smuggled")
UPGRADE_WITH_BODY = [
    pytest.param("Upgrade: foo", None, 400, id="other-upgrade"),
    pytest.param("Upgrade: websocket", EVIL, 403, id="websocket-refused-by-cors"),
    pytest.param("Upgrade: websocket", APP, 400, id="websocket-with-a-body-is-malformed"),
]


@pytest.mark.parametrize(("upgrade", "origin", "status"), UPGRADE_WITH_BODY)
async def test_body_of_an_upgrade_request_is_never_read_as_a_request(
    upstream, make_proxy, upgrade, origin, status
):
    """llhttp stops at an upgrade before its body; answered by the proxy, the connection must
    close rather than parse that body as the next request (request smuggling)."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    headers = ["Connection: Upgrade", upgrade, "Sec-WebSocket-Version: 13"]
    headers.append(f"Sec-WebSocket-Key: {WS_KEY}")
    if origin:
        headers.append(f"Origin: {origin}")
    data = request("GET", "/x", *headers, body=SMUGGLED)
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        response = await read_response(reader)
        assert response.status == status
        assert await closed_within(reader, 2) == b""
    assert [s.raw_path for s in upstream.seen] == []


OVERSIZED = [
    pytest.param(request("GET", "/" + "a" * 9000), 414, id="target-over-8-KiB"),
    pytest.param(request("GET", "/x", "X-Big: " + "v" * 9000), 431, id="field-over-8-KiB"),
    pytest.param(
        request("GET", "/x", *[f"X-H{n}: v" for n in range(120)]), 431, id="over-100-fields"
    ),
]


@pytest.mark.parametrize(("data", "status"), OVERSIZED)
async def test_oversized_heads_are_refused(upstream, make_proxy, data, status):
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        assert (await read_response(reader)).status == status
        assert await closed_within(reader, 2) == b""
    assert upstream.seen == []


async def test_endless_header_line_is_cut_off_early(upstream, make_proxy, monkeypatch):
    """A header value that never ends is not buffered: the proxy stops reading it as a request
    after a few hundred KiB (and answers 431 or closes) instead of growing until timeouts.idle.

    Measured at the proxy, not at the client: how much the client manages to send before it
    notices the close is mostly what the kernel's socket buffers hold (several MiB where
    net.ipv4.tcp_rmem allows a large receive buffer). So ClientConnection.data_received is
    wrapped, in this test only, to add up what the proxy was handed while it still had a
    parser for the connection; the real method still runs (an observation, not a mock).
    Bytes a lingering close reads and drops after the refusal are not request bytes and are
    not counted. Not the proxy's log line either: its wording is free to change."""
    parsed: dict[ClientConnection, int] = {}
    handed: dict[ClientConnection, int] = {}
    real_data_received = ClientConnection.data_received

    def counting(self: ClientConnection, data: bytes) -> None:
        handed[self] = handed.get(self, 0) + len(data)
        if self.parser is not None:
            parsed[self] = parsed.get(self, 0) + len(data)
        real_data_received(self, data)

    monkeypatch.setattr(ClientConnection, "data_received", counting)
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    start = b"GET /x HTTP/1.1\r\nHost: front.test\r\nX-Endless: "
    sent = 0
    async with connection(proxy.port) as (reader, writer):
        writer.write(start)
        with contextlib.suppress(ConnectionError):  # refused with unread bytes: a reset
            while sent < 8 * MiB and not reader.at_eof() and not writer.is_closing():
                writer.write(b"v" * 65536)
                sent += 65536
                await writer.drain()
        rest = await closed_within(reader, 5)  # the proxy hung up (timeouts.idle is 75 s)
    assert rest == b"" or rest.startswith(b"HTTP/1.1 431 "), rest[:60]
    assert len(parsed) == 1, f"data_received saw {len(parsed)} connections: not observing"
    (read,) = parsed.values()
    assert read >= len(start), f"data_received saw {read} bytes: not observing the proxy"
    assert read < MiB, (
        f"the proxy read {read} bytes of one header line before refusing it "
        f"({sum(handed.values())} read in all, the client sent {sent})"
    )


HOSTS = [
    pytest.param(b"GET /x HTTP/1.1\r\n\r\n", id="http11-without-host"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", id="two-hosts"),
]


@pytest.mark.parametrize("data", HOSTS)
async def test_http11_needs_exactly_one_host(upstream, make_proxy, data):
    """RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without a Host, or with
    several (routing and X-Forwarded-Host could otherwise read a different one than a
    balancer in front)."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        assert (await read_response(reader)).status == 400
    assert upstream.seen == []


async def test_request_trailers_are_never_headers(upstream, make_proxy):
    """Trailers of a chunked upload arrive after the head: they must not join the forwarded
    head, nor the CORS decision."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    body = b"5\r\nhello\r\n0\r\nAuthorization: Bearer smuggled\r\nOrigin: https://evil.test\r\n\r\n"
    data = request("POST", "/x", "Transfer-Encoding: chunked") + body
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        response = await read_response(reader)
    assert response.status == 200
    (seen,) = upstream.seen
    assert seen.body == b"hello"
    assert seen.header("Authorization") is None and seen.header("Origin") is None


UPSTREAM_EXTRAS = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n"
        b"2\r\nok\r\n0\r\nSet-Cookie: sid=evil\r\n\r\n",
        200,
        b"ok",
        id="trailers-stay-out-of-the-head",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Head: 1\r\n\r\nok"
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        200,
        b"ok",
        id="a-second-answer-is-not-relayed",
    ),
    pytest.param(
        b"HTTP/1.1 204 No Content\r\nX-Head: 1\r\n\r\nstray body",
        204,
        b"",
        id="a-204-with-a-body-keeps-its-head",
    ),
]


@pytest.mark.parametrize(("answer_bytes", "status", "body"), UPSTREAM_EXTRAS)
async def test_upstream_extra_bytes_never_rewrite_the_answer(
    raw_upstream, make_proxy, answer_bytes, status, body
):
    up = await raw_upstream(answers_once(answer_bytes, limit=3))
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        response = await read_response(reader)
        assert (response.status, response.body) == (status, body)
        assert response.header("X-Head") == "1"
        assert response.all("Set-Cookie") == []
        # The connection still carries a next request, answered on a fresh upstream one.
        writer.write(request("GET", "/y"))
        assert (await read_response(reader)).status == status
    assert up.connections == 2, "an upstream connection that misbehaved was reused"


async def test_transfer_coding_other_than_chunked_is_502(raw_upstream, make_proxy):
    """llhttp undoes only the chunking: a gzip transfer coding cannot be relayed as is."""

    up = await raw_upstream(
        answers_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
    )
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        assert (await read_response(reader)).status == 502


async def test_long_pipeline_of_local_answers_is_answered_whole(upstream, make_proxy):
    """Two thousand preflights pipelined behind one forwarded GET: every one answered, in
    order (answering each from the previous one's completion used to nest too deep)."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    count = 2000
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/first") + preflight("/p") * count)
        assert (await read_response(reader, timeout=10)).status == 200
        for _ in range(count):
            assert (await read_response(reader, timeout=10)).status == 204


async def test_upstream_connection_paused_for_a_slow_client_is_not_pooled_paused(
    raw_upstream, make_proxy
):
    """A response already whole in the proxy while the client reads slowly: the upstream
    connection goes back to the pool reading again, so the next request on it is answered."""
    big = b"b" * (200 * 1024)  # arrives in one read, and overfills the slow client's pipe

    async def script(up: RawUpstream, reader, writer) -> None:
        while True:
            head = await up.read_request(reader)
            body = big if b" /big " in head else b"small"
            writer.write(answer("200 OK", body=body))
            await writer.drain()

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG + "timeouts: {{read: 2}}\n", upstream=up.url)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client on a slow link
    slow.connect(("127.0.0.1", proxy.port))
    slow.setblocking(False)
    slow_reader, slow_writer = await asyncio.open_connection(sock=slow, limit=1 << 24)

    def accepted() -> list[ClientConnection]:
        return [
            c
            for c in proxy.listener.connections
            if c.transport is not None
            and c.transport.get_extra_info("peername")[1] == slow.getsockname()[1]
        ]

    await eventually(accepted, what="the proxy accepted the slow client's connection")
    # The proxy's end of that connection gets a small send buffer too (loopback's would
    # otherwise swallow the whole body at once).
    (proxied,) = accepted()
    proxied.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        slow_writer.write(request("GET", "/big"))
        # The proxy has it all (the upstream connection is back in the pool); the client has
        # not read it yet.
        await eventually(
            lambda: any(proxy.proxy.pool.free.values()),
            what="the /big answer read whole and its upstream connection pooled",
        )
        async with connection(proxy.port) as (reader, writer):
            writer.write(request("GET", "/small"))
            response = await read_response(reader)
            assert (response.status, response.body) == (200, b"small")
        assert len((await read_response(slow_reader, timeout=10)).body) == len(big)
        assert up.connections == 1, "the second request did not reuse the pooled connection"
    finally:
        slow_writer.close()


async def test_refused_upload_on_a_closing_connection_is_not_reset(upstream, make_proxy):
    """A 403 to a large upload whose client asked to close: the proxy closes its sending side
    and drops what still arrives (lingering close) instead of resetting the connection under
    a client that is still sending, which can destroy the answer in flight."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    body = b"u" * (16 * MiB)
    head = request("POST", "/x", f"Origin: {EVIL}", f"Content-Length: {len(body)}", close=True)
    async with connection(proxy.port) as (reader, writer):
        writer.write(head)

        async def upload() -> None:
            for start in range(0, len(body), MiB):
                writer.write(body[start : start + MiB])
                await writer.drain()

        sending = asyncio.ensure_future(upload())
        response = await read_response(reader)
        await asyncio.wait_for(sending, 5)  # raises ConnectionResetError if the proxy reset
        assert response.status == 403
        assert await closed_within(reader, 5, reset_ok=False) == b""
    assert upstream.seen == []


async def test_refused_expect_continue_request_says_it_closes(upstream, make_proxy):
    """Refused before its body was asked for: the client never sends that body, so the
    connection cannot carry another request, and the answer says so."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    head = request("POST", "/x", f"Origin: {EVIL}", "Expect: 100-continue", "Content-Length: 10")
    async with connection(proxy.port) as (reader, writer):
        writer.write(head)
        response = await read_response(reader)
        assert response.status == 403
        assert response.header("Connection") == "close"
        assert await closed_within(reader, 2) == b""
    assert upstream.seen == []


async def test_no_100_continue_for_http10_clients(upstream, make_proxy):
    """RFC 9110 10.1.1: a server must not send 100 Continue to an HTTP/1.0 client."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    head = request("POST", "/x", "Expect: 100-continue", "Content-Length: 5", version="1.0")
    async with connection(proxy.port) as (reader, writer):
        writer.write(head)
        with contextlib.suppress(TimeoutError):  # an absence: nothing to wait for but time
            early = await asyncio.wait_for(reader.read(100), 0.3)
            pytest.fail(f"the proxy answered before the body: {early!r}")
        writer.write(b"hello")
        response = await read_response(reader)
    assert response.status == 200
    assert upstream.seen[0].body == b"hello"


DATES = [
    pytest.param((), id="upstream-without-date-gets-one"),
    pytest.param(("Date: Tue, 01 Jan 2030 00:00:00 GMT",), id="upstream-date-kept"),
]


@pytest.mark.parametrize("headers", DATES)
async def test_relayed_answer_carries_exactly_one_date(raw_upstream, make_proxy, headers):
    """RFC 9110 6.6.1: a recipient that forwards an answer without Date adds one."""

    up = await raw_upstream(answers_once(answer("200 OK", *headers, body=b"ok")))
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        response = await read_response(reader)
    (date,) = response.all("Date")
    if headers:
        assert date == "Tue, 01 Jan 2030 00:00:00 GMT"
    else:
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", date), date


async def test_reloaded_idle_timeout_applies_to_open_connections(upstream, make_proxy):
    """A reload's timeouts.idle applies at once, to connections already open too."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)  # idle: 75 s
    loop = asyncio.get_running_loop()
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        assert (await read_response(reader)).status == 200
        text = "listen: 127.0.0.1:0\n" + IDLE_CONFIG.format(upstream=upstream.url)
        settings, _ = parse_settings(text, "reloaded.yaml")
        proxy.apply(settings)
        started = loop.time()
        assert await closed_within(reader, 3) == b""
    assert loop.time() - started <= 2.0


async def test_memo_of_decisions_stays_bounded(upstream, make_proxy):
    """Unique Origins (or huge ones) cannot grow the memo past its size."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    memo_size = proxy_module.MEMO_SIZE
    origins = [f"https://o{n}.test" for n in range(memo_size + 100)]
    origins.append("https://" + "h" * 2000 + ".test")
    data = b"".join(preflight("/x", origin) for origin in origins)
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        for _ in origins:
            assert (await read_response(reader, timeout=10)).status == 403
    memo = proxy.proxy.memo
    assert 0 < len(memo.decisions) <= memo_size
    assert all(len(b"".join(key[3:])) <= proxy_module.MEMO_KEY_BYTES for key in memo.decisions)
