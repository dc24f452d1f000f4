"""Bodies stream through the proxy and `timeouts.read` bounds each wait (configuration.md).

The 1 GiB tests run the proxy as a separate process so its resident memory can be
watched while the transfer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp import web
from conftest import parse_head, raw_request
from procutil import eventually, free_port, running, wait_port

MiB = 1 << 20
GiB = 1 << 30
BLOCK = MiB
MAX_GROWTH = 100 * MiB
TRANSFER_TIMEOUT = 120  # seconds; a transfer takes a few seconds when it streams

# 1 MiB of random bytes; block i of a stream is this block with i written over its first
# 8 bytes, so a lost, repeated or reordered block changes the checksum.
_BASE = random.Random(20240601).randbytes(BLOCK)


def block(i: int) -> bytes:
    return i.to_bytes(8, "big") + _BASE[8:]


def blocks(total: int) -> tuple[int, ...]:
    assert total % BLOCK == 0
    return tuple(range(total // BLOCK))


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread (the event loop is busy
    moving bytes, so a coroutine would be starved)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def figures(label: str, sampler: RssSampler, nbytes: int, seconds: float) -> str:
    text = (
        f"{label}: {nbytes / MiB:.0f} MiB in {seconds:.2f} s = {nbytes / MiB / seconds:.0f} MiB/s; "
        f"proxy RSS baseline {sampler.baseline / MiB:.1f} MiB, peak {sampler.peak / MiB:.1f} MiB, "
        f"growth {sampler.growth / MiB:.1f} MiB ({sampler.samples} samples)"
    )
    print("\n" + text)
    return text


@pytest.fixture
def proxy_process(tmp_path: Path, upstream):
    """The proxy as a separate process (`python -m corsproxy serve -c FILE`)."""
    port = free_port()
    config = tmp_path / "corsproxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"upstream: {upstream.url}\n"
        "access_log: off\n"
        "defaults: {allow_origins: [https://app.test]}\n"
    )
    with running(["serve", "-c", str(config)], tmp_path / "proxy") as proc:
        wait_port(port, proc=proc.popen)
        proc.url = f"http://127.0.0.1:{port}"
        yield proc
        assert proc.popen.poll() is None, f"proxy died: {proc.stderr()}"


async def warm_up(session: aiohttp.ClientSession, url: str) -> None:
    """One small request each way so pools and buffers exist before the baseline is taken."""
    async with session.post(url + "/warm", data=b"x" * 4096) as resp:
        await resp.read()


@pytest.mark.slow
async def test_upload_1gib_streams_in_bounded_memory(upstream, proxy_process) -> None:
    upstream.read_body = False
    received: dict[str, int] = {}

    async def sink(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/warm":
            await request.read()
            return web.Response(text="warm")
        count, crc = 0, 0
        async for chunk in request.content.iter_any():
            count += len(chunk)
            crc = zlib.crc32(chunk, crc)
        received.update(bytes=count, crc=crc)  # the whole body was read before answering
        return web.json_response(received)

    upstream.handler = sink
    sent = {"bytes": 0, "crc": 0}

    async def body() -> AsyncIterator[bytes]:
        for i in blocks(GiB):
            chunk = block(i)
            sent["bytes"] += len(chunk)
            sent["crc"] = zlib.crc32(chunk, sent["crc"])
            yield chunk

    async with aiohttp.ClientSession() as session:
        await warm_up(session, proxy_process.url)
        with RssSampler(proxy_process.pid) as sampler:
            started = time.monotonic()
            async with (
                asyncio.timeout(TRANSFER_TIMEOUT),
                session.post(proxy_process.url + "/upload", data=body()) as resp,
            ):
                status, answer = resp.status, await resp.json()
            elapsed = time.monotonic() - started
    text = figures("upload", sampler, sent["bytes"], elapsed)
    assert status == 200, text
    assert sent["bytes"] == GiB, text
    assert answer == {"bytes": GiB, "crc": sent["crc"]}, text
    assert sampler.samples >= 10, text
    assert sampler.growth < MAX_GROWTH, text


@pytest.mark.slow
async def test_download_1gib_streams_in_bounded_memory(upstream, proxy_process) -> None:
    expected_crc = 0

    async def source(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal expected_crc
        if request.path == "/warm":
            return web.Response(text="warm")
        response = web.StreamResponse()
        response.content_length = GiB
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        for i in blocks(GiB):
            chunk = block(i)
            expected_crc = zlib.crc32(chunk, expected_crc)
            await response.write(chunk)
        await response.write_eof()
        return response

    upstream.handler = source
    count, crc = 0, 0
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        await warm_up(session, proxy_process.url)
        with RssSampler(proxy_process.pid) as sampler:
            started = time.monotonic()
            async with (
                asyncio.timeout(TRANSFER_TIMEOUT),
                session.get(proxy_process.url + "/download") as resp,
            ):
                status, length = resp.status, resp.headers.get("Content-Length")
                async for chunk in resp.content.iter_any():
                    count += len(chunk)
                    crc = zlib.crc32(chunk, crc)
            elapsed = time.monotonic() - started
    text = figures("download", sampler, count, elapsed)
    assert status == 200, text
    assert length == str(GiB), text
    assert count == GiB, text
    assert crc == expected_crc, text
    assert sampler.samples >= 10, text
    assert sampler.growth < MAX_GROWTH, text


# --- server-sent events, chunked and Content-Length bodies ---------------------------------

PLAIN = "upstream: {upstream}\ndefaults: {{allow_origins: [https://app.test]}}\n"
SLOW_READ = "upstream: {upstream}\ntimeouts: {{read: 1}}\n"


async def test_sse_events_are_flushed_one_by_one(upstream, make_proxy, client) -> None:
    sent_at: list[float] = []
    events = 5

    async def sse(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for i in range(events):
            if i:
                await asyncio.sleep(0.3)  # the scenario: events spaced in time
            sent_at.append(time.monotonic())
            await response.write(f"id: {i}\ndata: event {i}\n\n".encode())
        await response.write_eof()
        return response

    upstream.handler = sse
    proxy = await make_proxy(PLAIN, upstream=upstream.url)
    received: list[bytes] = []
    received_at: list[float] = []
    headers = {"Origin": "https://app.test", "Accept": "text/event-stream"}
    async with client.get(proxy.url + "/events", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.test"
        for _ in range(events):
            received.append(await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5))
            received_at.append(time.monotonic())
        assert await resp.content.read() == b""
    assert received == [f"id: {i}\ndata: event {i}\n\n".encode() for i in range(events)]
    for i in range(events - 1):
        # Each event is in the client's hands before the upstream even sends the next one.
        assert received_at[i] < sent_at[i + 1], f"event {i} was held back until event {i + 1}"


def dechunk(raw: bytes) -> tuple[bytes, list[int]]:
    """Decode a chunked body; returns the data and the chunk sizes (the last one is 0)."""
    data, sizes = b"", []
    while True:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        sizes.append(size)
        if size == 0:
            assert raw.startswith(b"\r\n"), "no CRLF after the last chunk"
            return data, sizes
        data, raw = data + raw[:size], raw[size:]
        assert raw.startswith(b"\r\n"), "chunk not followed by CRLF"
        raw = raw[2:]


async def test_chunked_response_is_streamed(upstream, make_proxy, client) -> None:
    """The upstream holds back its second chunk until the client has the first one: a proxy
    that waited for the whole body would deadlock here."""
    first_arrived = asyncio.Event()

    async def chunked(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first;")
        await asyncio.wait_for(first_arrived.wait(), 5)
        await response.write(b"second;")
        await response.write(b"third")
        await response.write_eof()
        return response

    upstream.handler = chunked
    proxy = await make_proxy(PLAIN, upstream=upstream.url)
    async with client.get(proxy.url + "/chunked") as resp:
        assert resp.status == 200
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in resp.headers
        first = await asyncio.wait_for(resp.content.readexactly(6), 5)
        assert first == b"first;"
        first_arrived.set()
        rest = await asyncio.wait_for(resp.read(), 5)
    assert first + rest == b"first;second;third"


async def test_chunked_response_is_chunked_on_the_wire(upstream, make_proxy) -> None:
    async def chunked(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"a" * 10, b"b" * 20, b"c" * 30):
            await response.write(part)
            await asyncio.sleep(0.02)  # the scenario: parts written apart
        await response.write_eof()
        return response

    upstream.handler = chunked
    proxy = await make_proxy(PLAIN, upstream=upstream.url)
    raw = await raw_request(
        proxy.port, b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_head(raw)
    names = {k.lower(): v for k, v in headers}
    assert status == 200
    assert names.get("transfer-encoding") == "chunked"
    assert "content-length" not in names
    data, sizes = dechunk(body)
    assert data == b"a" * 10 + b"b" * 20 + b"c" * 30
    assert sizes[-1] == 0


async def test_content_length_response_keeps_its_length(upstream, make_proxy) -> None:
    length = 3 * MiB + 17

    async def sized(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = length
        await response.prepare(request)
        for offset in range(0, length, MiB):
            await response.write(_BASE[: min(MiB, length - offset)])
            await asyncio.sleep(0.01)  # the scenario: a paced upstream
        await response.write_eof()
        return response

    upstream.handler = sized
    proxy = await make_proxy(PLAIN, upstream=upstream.url)
    raw = await raw_request(
        proxy.port, b"GET /sized HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_head(raw)
    names = {k.lower(): v for k, v in headers}
    assert status == 200
    assert names.get("content-length") == str(length)
    assert "transfer-encoding" not in names
    expected = b"".join(_BASE[: min(MiB, length - o)] for o in range(0, length, MiB))
    assert body == expected


async def test_request_body_is_streamed_to_the_upstream(upstream, make_proxy, client) -> None:
    """The client holds back its second part until the upstream has the first one."""
    upstream.read_body = False
    first_arrived = asyncio.Event()
    got: list[bytes] = []

    async def sink(request: web.BaseRequest) -> web.StreamResponse:
        got.append(await asyncio.wait_for(request.content.readexactly(6), 5))
        first_arrived.set()
        got.append(await asyncio.wait_for(request.content.read(), 5))
        return web.Response(text="done")

    async def body() -> AsyncIterator[bytes]:
        yield b"first;"
        await asyncio.wait_for(first_arrived.wait(), 5)
        yield b"second"

    upstream.handler = sink
    proxy = await make_proxy(PLAIN, upstream=upstream.url)
    async with client.post(proxy.url + "/up", data=body()) as resp:
        assert resp.status == 200
        assert await resp.text() == "done"
    assert got == [b"first;", b"second"]
    assert upstream.seen[0].header("Transfer-Encoding") == "chunked"


async def test_request_content_length_is_kept(upstream, make_proxy, client) -> None:
    payload = _BASE[: 2 * MiB + 5]
    proxy = await make_proxy(PLAIN, upstream=upstream.url)
    async with client.put(proxy.url + "/put", data=payload) as resp:
        assert resp.status == 200
        await resp.read()
    seen = upstream.seen[0]
    assert seen.header("Content-Length") == str(len(payload))
    assert seen.header("Transfer-Encoding") is None
    assert seen.body == payload


# --- timeouts.read bounds each wait, not the whole response ----------------------------------


async def test_slow_steady_stream_outlives_the_read_timeout(upstream, make_proxy, client) -> None:
    """A chunk every 0.3 s for 2 s with `read: 1`: every wait is short, so it completes."""
    parts = [f"part {i}\n".encode() for i in range(7)]

    async def trickle(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.3)  # the scenario: events spaced in time
            await response.write(part)
        await response.write_eof()
        return response

    upstream.handler = trickle
    proxy = await make_proxy(SLOW_READ, upstream=upstream.url)
    started = time.monotonic()
    async with client.get(proxy.url + "/trickle") as resp:
        assert resp.status == 200
        body = await resp.read()
    elapsed = time.monotonic() - started
    assert body == b"".join(parts)
    assert elapsed >= 1.7, "the stream should have taken about 1.8 s"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_stall_mid_body_cuts_the_client_connection(
    upstream, make_proxy, client, framing: str
) -> None:
    """The upstream stalls 2 s mid-body with `read: 1`: the client must see a broken body
    (never a clean, short one), and see it after about one second."""
    release = asyncio.Event()
    head, tail = b"h" * 1000, b"t" * 1000

    async def stall(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        if framing == "chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = len(head) + len(tail)
        await response.prepare(request)
        await response.write(head)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 2)
        try:
            await response.write(tail)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the proxy gave up on us, as it should
        return response

    upstream.handler = stall
    proxy = await make_proxy(SLOW_READ, upstream=upstream.url)
    started = time.monotonic()
    got = b""
    try:
        async with asyncio.timeout(5), client.get(proxy.url + "/stall") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    got += chunk
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert got == head
    assert 0.8 <= elapsed < 1.9, f"cut after {elapsed:.2f}s, expected about 1 s"


async def test_slow_response_head_gets_504(upstream, make_proxy, client) -> None:
    release = asyncio.Event()

    async def late(request: web.BaseRequest) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 2)
        return web.Response(text="too late")

    upstream.handler = late
    proxy = await make_proxy(SLOW_READ, upstream=upstream.url)
    started = time.monotonic()
    try:
        async with client.get(proxy.url + "/late") as resp:
            status = resp.status
            await resp.read()
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert status == 504
    assert 0.8 <= elapsed < 1.9, f"answered after {elapsed:.2f}s, expected about 1 s"


def upstream_error_count(proxy) -> float:
    return counted(proxy.metrics.upstream_errors)


def counted(counter) -> float:
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def request_count(proxy) -> float:
    """Requests the proxy has finished with (counted with their upstream error, if any)."""
    return counted(proxy.metrics.requests)


async def test_stall_mid_body_is_a_timeout_without_traceback(
    upstream, make_proxy, client, caplog
) -> None:
    async def stall(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(2)  # the scenario: a stall longer than timeouts.read
        return response

    upstream.handler = stall
    proxy = await make_proxy(SLOW_READ, upstream=upstream.url)
    async with client.get(proxy.url + "/stall") as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await eventually(lambda: request_count(proxy) >= 1, what="the request counted")
    assert upstream_error_count(proxy) == 1
    assert [r for r in caplog.records if r.exc_info] == []


async def test_client_leaving_mid_body_is_not_an_upstream_error(
    upstream, make_proxy, caplog
) -> None:
    async def endless(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(200):
                await response.write(b"y" * 65536)
                await asyncio.sleep(0.005)  # the scenario: a paced upstream
        return response

    upstream.handler = endless
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.read(100)
    writer.close()
    await eventually(lambda: request_count(proxy) >= 1, what="the request counted")
    assert upstream_error_count(proxy) == 0
    assert [r for r in caplog.records if r.exc_info] == []
