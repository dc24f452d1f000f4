# ruff: noqa: F811  (raw_upstream, imported below, is a fixture named as a parameter)
"""Hostile peers on both legs: request smuggling through the hop-by-hop rule, unbounded
trailers and response heads, waits without a deadline, and the answers the listener gives to
what it refuses. Each test names the rule; each failed before the fix it guards.

Clients are raw sockets and upstreams either the recording aiohttp server (an independent
parser: what it records is what an upstream would act on) or a bare scripted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct

import pytest
from procutil import eventually
from test_http1 import (  # noqa: F401  (raw_upstream is a fixture)
    APP,
    CONFIG,
    EVIL,
    MiB,
    RawUpstream,
    answers_once,
    closed_within,
    connection,
    raw_upstream,
    read_response,
    request,
)

# --- 1. one framing authority -----------------------------------------------------------------

SMUGGLED = (
    b"DELETE /api/secret HTTP/1.1\r\nHost: internal.example.com\r\n"
    b"Origin: https://evil.example\r\nContent-Length: 0\r\n\r\n"
)

LISTED_FRAMING = [
    pytest.param("Connection: Content-Length", id="connection-lists-content-length"),
    pytest.param("Connection: close, content-length", id="connection-close-and-content-length"),
    pytest.param("Connection: Host, Content-Length", id="connection-lists-host-and-length"),
    pytest.param("Connection: keep-alive, CONTENT-LENGTH", id="connection-lists-it-uppercase"),
]


@pytest.mark.parametrize("connection_header", LISTED_FRAMING)
async def test_connection_listed_content_length_cannot_smuggle_a_request(
    upstream, make_proxy, connection_header
):
    """RFC 9112 6.1 / RFC 9110 7.6.1: naming Content-Length in Connection never removes the
    proxy's framing; the body stays a body and the upstream parses exactly one request."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    head = request(
        "POST", "/public/a", connection_header, f"Content-Length: {len(SMUGGLED)}"
    ).removesuffix(b"\r\n")
    async with connection(proxy.port) as (reader, writer):
        writer.write(head + b"\r\n" + SMUGGLED)
        response = await read_response(reader)
    assert response.status == 200
    await eventually(lambda: len(upstream.seen) >= 1, what="the POST reached the upstream")
    assert [(s.method, s.raw_path) for s in upstream.seen] == [("POST", "/public/a")]
    (seen,) = upstream.seen
    assert seen.body == SMUGGLED
    assert seen.all("Content-Length") == [str(len(SMUGGLED))]


async def test_upstream_connection_listed_content_length_still_frames_the_answer(
    raw_upstream, make_proxy
):
    """The mirror case: an answer whose Connection lists Content-Length reaches the client
    with a Content-Length the proxy wrote, and the connection carries the next request."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length\r\n\r\nhello"

    async def script(up: RawUpstream, reader, writer) -> None:
        for _ in range(2):
            await up.read_request(reader)
            writer.write(data)
        await up.until_closed(reader)

    up = await raw_upstream(script)
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        for path in ("/a", "/b"):
            writer.write(request("GET", path))
            response = await read_response(reader)
            assert (response.status, response.body, response.framing) == (200, b"hello", "length")
            assert response.all("Content-Length") == ["5"]


NO_BODY_ANSWERS = [
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", "GET", id="204-cl"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", "GET", id="304-cl"),
]


@pytest.mark.parametrize(("data", "method"), NO_BODY_ANSWERS)
async def test_204_and_304_are_relayed_without_content_length(
    raw_upstream, make_proxy, data, method
):
    """RFC 9110 8.6: a 204 never carries Content-Length; a 304's would describe a body that
    is not there, so the proxy writes none."""
    up = await raw_upstream(answers_once(data, limit=3))
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request(method, "/x"))
        response = await read_response(reader, method)
        assert response.all("Content-Length") == [] and response.all("Transfer-Encoding") == []


# --- 2, 3. every read bounded -----------------------------------------------------------------


async def send_chunked_with_trailer(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, trailer_size: int
) -> bool:
    """A chunked upload whose trailer section is one field of ``trailer_size`` bytes;
    returns whether all of it could be sent before the proxy closed."""
    writer.write(request("POST", "/x", "Transfer-Encoding: chunked"))
    writer.write(b"5\r\nhello\r\n0\r\nX-Trailer: ")
    block = b"t" * 65536
    try:
        for _ in range(trailer_size // len(block)):
            if reader.at_eof():
                return False
            writer.write(block)
            await asyncio.wait_for(writer.drain(), 5)
        writer.write(b"\r\n\r\n")
    except (ConnectionError, TimeoutError):
        return False
    return True


async def test_request_trailer_section_is_bounded(upstream, make_proxy):
    """A trailer field that never ends is cut off after a bounded number of bytes (it was
    buffered whole: 256 MiB took 470 MiB of memory and 75 CPU-seconds), with a 4xx and a
    close rather than a forwarded 200."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        await send_chunked_with_trailer(writer, reader, 8 * MiB)
        try:
            answer = await closed_within(reader, 5)
        except ConnectionError:
            answer = b""  # a reset counts as closed
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:80]
    if answer:
        assert b"\r\nConnection: close\r\n" in answer.partition(b"\r\n\r\n")[0]


async def test_small_request_trailers_are_accepted_and_dropped(upstream, make_proxy):
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        assert await send_chunked_with_trailer(writer, reader, 0)
        assert (await read_response(reader)).status == 200
    (seen,) = upstream.seen
    assert seen.body == b"hello" and seen.header("X-Trailer") is None


def streamed_answer(head: bytes, size: int, block: bytes, tail: bytes = b"") -> callable:
    """An upstream that answers with ``head``, ``size`` bytes of ``block``s and ``tail``,
    stopping when the proxy closes; it records how much it managed to send."""

    async def script(up: RawUpstream, reader, writer) -> None:
        await up.read_request(reader)
        writer.write(head)
        sent = 0
        try:
            while sent < size:
                writer.write(block)
                sent += len(block)
                await asyncio.wait_for(writer.drain(), 10)
            writer.write(tail)
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        up.heads.append(b"sent %d" % sent)
        await up.until_closed(reader, 3)

    return script


UPSTREAM_HEADS = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
        id="one-70-KiB-field",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-N%d: v\r\n" % n for n in range(10_000))
        + b"Content-Length: 0\r\n\r\n",
        id="ten-thousand-fields",
    ),
    pytest.param(b"HTTP/1.1 200 " + b"r" * 1_000_000 + b"\r\n\r\n", id="a-1-MB-reason-phrase"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-N%d: v\r\n" % n for n in range(1200)) + b"\r\n",
        id="over-1000-fields-under-64-KiB",
    ),
]


@pytest.mark.parametrize("data", UPSTREAM_HEADS)
async def test_upstream_response_head_over_the_limit_is_502(raw_upstream, make_proxy, data):
    """A status line plus fields over 64 KiB (or over 1,000 fields) is refused like nginx's
    'upstream sent too big header': 502, the upstream connection closed, nothing relayed."""
    up = await raw_upstream(answers_once(data, limit=3))
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        response = await read_response(reader)
        assert response.status == 502
        assert response.header("X-Big") is None and response.header("X-N1") is None


async def test_endless_upstream_header_is_read_no_further_than_the_limit(raw_upstream, make_proxy):
    """A 64 MiB header field: the proxy stops reading at the 64 KiB head limit and closes,
    so the upstream cannot push more than a few socket buffers' worth."""
    up = await raw_upstream(
        streamed_answer(b"HTTP/1.1 200 OK\r\nX-Endless: ", 64 * MiB, b"v" * 65536)
    )
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        assert (await read_response(reader, timeout=15)).status == 502
    await eventually(lambda: any(h.startswith(b"sent ") for h in up.heads), 15)
    sent = int(next(h for h in up.heads if h.startswith(b"sent "))[5:])
    assert sent < 64 * MiB, "the proxy read the whole endless header"


async def test_upstream_trailer_section_is_bounded(raw_upstream, make_proxy):
    """Upstream trailers past the bound end the exchange: the client's connection is cut
    before the last chunk, so a body is never taken for whole, and nothing is relayed."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
    # The trailer does end (after 8 MiB): relayed whole, it would look like a fine answer.
    up = await raw_upstream(streamed_answer(head, 8 * MiB, b"t" * 65536, tail=b"\r\n\r\n"))
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await read_response(reader, timeout=15)


# --- 4, 5. every wait on a deadline -------------------------------------------------------------

SLOW_READ = CONFIG + "timeouts: {{read: 0.5, send: 0.5, idle: 5}}\n"


async def test_read_timeout_starts_once_the_upload_is_sent(upstream, make_proxy):
    """nginx's proxy_read_timeout: an upload slower than timeouts.read is not a slow
    upstream. 896 KiB paced over about 1.6 s with read: 0.5 gets the upstream's 200."""
    proxy = await make_proxy(SLOW_READ, upstream=upstream.url)
    body_size = 896 * 1024  # the recording upstream takes at most 1 MiB
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("POST", "/up", f"Content-Length: {body_size}"))
        block = b"u" * (body_size // 8)
        for _ in range(8):
            writer.write(block)
            await writer.drain()
            await asyncio.sleep(0.2)  # the scenario: a client uploading at its own pace
        response = await read_response(reader)
    assert response.status == 200
    assert len(upstream.seen[0].body) == body_size


def small_receive_buffer_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def test_client_that_never_reads_is_dropped_after_timeouts_send(
    raw_upstream, make_proxy, capsys
):
    """A client that accepts no bytes of its answer for timeouts.send is disconnected and the
    upstream connection released (it held both forever, the read timer re-arming itself
    every 10 ms while paused)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (256 * MiB)
    up = await raw_upstream(streamed_answer(head, 256 * MiB, b"d" * 65536))
    proxy = await make_proxy(SLOW_READ, upstream=up.url)
    sock = small_receive_buffer_socket()
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(request("GET", "/big"))
        await eventually(lambda: not proxy.listener.connections, 5, "client connection closed")
        # The upstream's writes fail once the proxy closes its connection (well before the
        # upstream's own 10 s drain limit).
        await eventually(lambda: any(h.startswith(b"sent ") for h in up.heads), 8)
    finally:
        writer.transport.abort()
    await eventually(lambda: "timeouts.send" in capsys.readouterr().out, 5, "the log says why")


# --- 6, 7. clear answers ------------------------------------------------------------------------

REFUSED = [
    pytest.param(
        request("POST", "/x", "Transfer-Encoding: chunked") + b"zz\r\nabc\r\n0\r\n\r\n",
        400,
        id="invalid-chunk-size",
    ),
    pytest.param(
        request("POST", "/x", "Transfer-Encoding: chunked") + b"3\r\nabcXX0\r\n\r\n",
        400,
        id="no-crlf-after-chunk-data",
    ),
    pytest.param(
        request("POST", "/x", "Transfer-Encoding: chunked") + b"3\nabc\r\n0\r\n\r\n",
        400,
        id="bare-lf-in-chunk-framing",
    ),
    pytest.param(
        request("POST", "/x", "Transfer-Encoding: gzip, chunked") + b"3\r\nabc\r\n0\r\n\r\n",
        501,
        id="gzip-then-chunked-is-501",
    ),
    pytest.param(
        request("POST", "/x", "Transfer-Encoding: identity") + b"abc", 501, id="identity-is-501"
    ),
    pytest.param(
        request("POST", "/x", "Transfer-Encoding: xchunked") + b"abc", 501, id="xchunked-is-501"
    ),
    pytest.param(request("GET", "/x", version="2.0"), 505, id="http-2.0-is-505"),
    pytest.param(request("GET", "/x", version="0.9"), 400, id="http-0.9-version-is-400"),
    pytest.param(request("GET", "/x", version="1.2"), 505, id="http-1.2-is-505"),
    pytest.param(request("CONNECT", "/public/x"), 405, id="connect-with-a-path-is-405"),
    pytest.param(request("CONNECT", "api.test:443"), 405, id="connect-authority-form-is-405"),
    pytest.param(request("TRACE", "/x"), 405, id="trace-is-405"),
    pytest.param(request("TRACK", "/x"), 400, id="track-unknown-to-llhttp-is-400"),
    pytest.param(
        request("GET", "/x", *[f"X-F{n}: " + "v" * 7000 for n in range(10)]),
        431,
        id="head-over-64-KiB-in-fields-under-8-KiB",
    ),
]


@pytest.mark.parametrize(("data", "status"), REFUSED)
async def test_refused_requests_get_a_clear_answer_and_close(
    upstream, make_proxy, capsys, data, status
):
    """Malformed framing: 400; a transfer coding other than chunked: 501; a version other
    than 1.0/1.1: 505; CONNECT, TRACE and TRACK: 405 with Allow; a head over 64 KiB: 431.
    Each with Connection: close, logged like any answer, and nothing forwarded."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    capsys.readouterr()
    async with connection(proxy.port) as (reader, writer):
        writer.write(data)
        response = await read_response(reader)
        assert response.status == status
        assert response.header("Connection") == "close"
        if status == 405:
            assert "GET" in (response.header("Allow") or "")
        assert await closed_within(reader, 2) == b""
    assert upstream.seen == []
    await eventually(
        lambda: f'"status":{status}' in capsys.readouterr().out, 5, "an access-log line"
    )


async def test_http09_request_line_is_never_served(upstream, make_proxy):
    """HTTP/0.9 has no headers and no status line: never served as HTTP/1.1."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(b"GET /public/a\r\n\r\n")
        answer = await closed_within(reader, 5)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.seen == []


async def test_pipelined_request_behind_a_closing_answer_is_dropped_quietly(
    upstream, make_proxy, caplog
):
    """A 400 (no Host) with a second request in the same packet: the client gets its 400
    and the connection closes; the log gets no traceback (it got two per request)."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    caplog.set_level(logging.INFO, "corsproxy")
    async with connection(proxy.port) as (reader, writer):
        writer.write(b"GET /public/a HTTP/1.1\r\n\r\n" + request("GET", "/second"))
        assert (await read_response(reader)).status == 400
        assert await closed_within(reader, 2) == b""
    assert upstream.seen == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_header_names_with_underscores_are_not_forwarded(upstream, make_proxy):
    """nginx's underscores_in_headers off: many backends read _ as -, so Transfer_Encoding
    or X_Forwarded_Host would reopen framing and spoofing tricks."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(
            request("GET", "/x", "Transfer_Encoding: chunked", "X_Forwarded_Host: evil.test")
        )
        assert (await read_response(reader)).status == 200
    (seen,) = upstream.seen
    names = {name.lower() for name, _ in seen.headers}
    assert not {n for n in names if "_" in n}
    assert seen.header("X-Forwarded-Host") == "front.test"


async def test_refused_upload_still_arriving_is_answered_with_connection_close(
    upstream, make_proxy
):
    """A 403 to an upload whose body has not all arrived: the body cannot be told from a next
    request, so the answer says Connection: close (then a lingering close)."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("POST", "/x", f"Origin: {EVIL}", f"Content-Length: {MiB}"))
        writer.write(b"u" * 1000)
        response = await read_response(reader)
        assert response.status == 403
        assert response.header("Connection") == "close"
    assert upstream.seen == []


async def test_refusals_are_counted_like_any_answer(upstream, make_proxy):
    """The listener's own 431 for a header line that never ends goes through the same path
    as every answer: counted in corsproxy_requests_total (it was neither logged nor counted)."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    registry = proxy.metrics.registry

    def refused() -> float:
        total = 0.0
        for metric in registry.collect():
            if metric.name == "corsproxy_requests":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return total

    before = refused()
    async with connection(proxy.port) as (reader, writer):
        writer.write(b"GET /x HTTP/1.1\r\nHost: front.test\r\nX-Endless: " + b"v" * MiB)
        assert (await read_response(reader)).status == 431
    await eventually(lambda: refused() == before + 1, 5, "the 431 counted")


async def test_allowed_origin_sees_the_refusal_log_line(upstream, make_proxy, capsys):
    """The access-log line of a listener refusal says why, in the proxy's own words."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    capsys.readouterr()
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("TRACE", "/x", f"Origin: {APP}"))
        assert (await read_response(reader)).status == 405
    lines: list[dict] = []

    def logged() -> bool:
        lines.extend(json.loads(x) for x in capsys.readouterr().out.splitlines() if x)
        return any(line["status"] == 405 for line in lines)

    await eventually(logged, 5)
    (line,) = [line for line in lines if line["status"] == 405]
    assert line["method"] == "TRACE" and "TRACE" in line["reason"]


# --- found by review: deadlines on every wait, lost data never passed off as whole ----------

SEND = CONFIG + "timeouts: {{read: 5, send: 0.5, idle: 5}}\n"


async def small_buffer_server(script) -> tuple[asyncio.Server, str]:
    """A scripted upstream whose sockets have a 4 KiB receive buffer (set on the listening
    socket, so accepted ones inherit it): it pushes back after a few KiB on any machine."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(script, sock=sock)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_upstream_that_stops_reading_an_upload_gets_504_after_timeouts_send(make_proxy):
    """nginx's proxy_send_timeout: an upstream that accepts no bytes of the request body for
    timeouts.send fails the exchange (504), instead of holding both connections forever."""
    stop = asyncio.Event()

    async def never_reads(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await stop.wait()  # the scenario: an upstream that reads nothing more
        writer.close()

    server, url = await small_buffer_server(never_reads)
    proxy = await make_proxy(SEND, upstream=url)
    try:
        async with connection(proxy.port) as (reader, writer):
            writer.write(request("POST", "/up", f"Content-Length: {256 * MiB}"))

            async def upload() -> None:
                with contextlib.suppress(ConnectionError):
                    for _ in range(256):
                        writer.write(b"u" * MiB)
                        await writer.drain()

            sending = asyncio.ensure_future(upload())
            try:
                response = await read_response(reader, timeout=10)
            finally:
                sending.cancel()
            assert response.status == 504
            assert response.header("Connection") == "close"
    finally:
        stop.set()
        server.close()


async def test_closed_connection_whose_client_reads_nothing_is_released(upstream, make_proxy):
    """A response smaller than the write buffer's high-water mark never pauses writing, so
    no send timer ran; a Connection: close answer to a client that reads nothing kept the
    connection forever. Now a close with bytes still queued gets timeouts.send."""

    async def sized(request):
        from aiohttp import web

        return web.Response(body=b"b" * int(request.query["n"]))

    upstream.handler = sized
    proxy = await make_proxy(SEND, upstream=upstream.url)
    writers = []
    loop = asyncio.get_running_loop()
    sizes = [50_000 * 2**k for k in range(8)]  # 50 KB to 6.4 MB: some tail fits the buffer
    for size in sizes:
        sock = small_receive_buffer_socket()
        await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(request("GET", f"/x?n={size}", close=True))
        writers.append(writer)
    try:
        await eventually(lambda: len(upstream.seen) == len(sizes), 5, "requests reached upstream")
        await eventually(lambda: not proxy.listener.connections, 6, "every connection released")
    finally:
        for writer in writers:
            writer.transport.abort()


async def test_upstream_reset_mid_body_is_never_a_whole_body(raw_upstream, make_proxy):
    """A body delimited by the upstream's close ends only at an orderly close: a reset cuts
    the client's connection instead of sending the last chunk of a truncated body."""

    async def resets(up: RawUpstream, reader, writer) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial-body-")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    up = await raw_upstream(resets)
    proxy = await make_proxy(CONFIG, upstream=up.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x"))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await read_response(reader)


async def test_underscore_fields_count_toward_the_field_limit(upstream, make_proxy):
    """Dropped fields are still fields: 5,000 of them are 431, not a 200."""
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    async with connection(proxy.port) as (reader, writer):
        writer.write(request("GET", "/x", *[f"x_{n}: v" for n in range(5000)]))
        assert (await read_response(reader)).status == 431
    assert upstream.seen == []


async def test_slow_client_still_reading_is_not_cut_by_timeouts_send(raw_upstream, make_proxy):
    """timeouts.send is for a client that accepts no bytes: one that keeps reading, however
    slowly, keeps its connection (the timer is re-armed while the buffer drains)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * MiB)
    up = await raw_upstream(streamed_answer(head, 64 * MiB, b"d" * 65536))
    proxy = await make_proxy(SEND, upstream=up.url)
    sock = small_receive_buffer_socket()
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    received = 0
    try:
        writer.write(request("GET", "/big"))
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.5  # five times timeouts.send
        while loop.time() < until:
            data = await asyncio.wait_for(reader.read(512), 2)
            assert data, "the proxy closed a connection whose client was reading"
            received += len(data)
            await asyncio.sleep(0.05)  # the scenario: a reader of about 10 KB/s
    finally:
        writer.transport.abort()
    assert received > 5_000
