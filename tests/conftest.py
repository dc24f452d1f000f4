"""Shared fixtures: a real recording upstream and the real proxy, both on 127.0.0.1.

Also the ``--all`` option: plain ``python3 -m pytest`` deselects the tests marked ``slow``,
``browser`` and ``fuzz`` (unless ``-m`` is given), ``--all`` runs them too (what CI runs).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from corsproxy.config.load import parse_settings
from corsproxy.runtime.app import Running, start

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# What a run without ``-m`` leaves out; ``--all`` runs it too (docs/testing.md).
DEFAULT_MARKEXPR = "not slow and not browser and not fuzz"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        default=False,
        help="also run the tests marked slow, browser and fuzz (deselected by default)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # An explicit -m wins (`--all -m browser` means the browser tests); without one, the
    # default run leaves the slow ones out unless --all is given.
    if not config.option.markexpr and not config.getoption("--all"):
        config.option.markexpr = DEFAULT_MARKEXPR


@asynccontextmanager
async def serving(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[int]:
    """Serve ``handler`` with aiohttp's low-level server on 127.0.0.1 (port 0: any free one);
    yields the port. At exit, handlers still running (a stalled upstream, a held answer) are
    cancelled after 0.1 s instead of aiohttp's 60: waiting for them is no part of a test."""
    runner = web.ServerRunner(web.Server(handler, access_log=None), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """A real aiohttp server that records every request it gets.

    By default it answers 200 with body ``ok``; a test sets ``handler`` to answer otherwise
    (the handler runs after the request was recorded, body unread when ``read_body`` is
    False so streaming tests can consume it themselves).
    """

    url: str = ""
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    handler: Handler | None = None
    read_body: bool = True

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read() if self.read_body else b""
        self.seen.append(
            Seen(request.method, request.raw_path, list(request.headers.items()), body)
        )
        if self.handler is not None:
            return await self.handler(request)
        return web.Response(text="ok", headers={"X-Upstream": "yes"})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    async with serving(up.handle) as port:
        up.port = port
        up.url = f"http://127.0.0.1:{port}"
        yield up


ProxyFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """Start the real proxy from YAML text; ``{upstream}`` in the text is filled in."""
    running: list[Running] = []

    async def factory(yaml_text: str, **fill: str) -> Running:
        text = yaml_text.format(**fill) if fill else yaml_text
        if "listen:" not in text:
            text = "listen: 127.0.0.1:0\n" + text
        path = tmp_path / "corsproxy.yaml"
        path.write_text(text)
        settings, _ = parse_settings(text, str(path))
        proxy = await start(settings)
        running.append(proxy)
        return proxy

    yield factory
    for proxy in running:
        await proxy.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client: no cookies kept, no automatic headers that would blur assertions."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:
        yield session


async def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send exact bytes, return everything the server sent until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()


def parse_head(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a raw HTTP/1.1 response into status, headers and the rest."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return status, headers, rest
