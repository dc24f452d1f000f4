"""Headless Chromium for end-to-end tests, driven by Playwright's async API.

Not a conftest.py: the other test modules import ``conftest`` by name (tests/conftest.py), so
a second conftest module would shadow it. Test modules here import the fixtures
(``*_fixture``, registered under their short names).

One browser per session, one fresh context per test (Chromium's preflight cache lives in the
context). Playwright runs on its own event loop in a background thread, so the tests' servers
(the recording upstream, the proxy, the page server) keep running on the test's own loop while
the browser talks to them; every Playwright call is shipped to that thread by ``Remote.call``.

Chromium resolves ``*.example.test``, ``example.test`` and ``*.evil.test`` to 127.0.0.1
(``--host-resolver-rules``), so a page at ``http://app.example.test:A`` calls the proxy at
``http://api.example.test:P``: real-looking origins, same site, different ports.

Without Chromium or Playwright the tests skip, saying how to install them; under ``CI=true``
that is a failure instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from aiohttp import web
from conftest import serving
from procutil import closed_port, eventually  # noqa: F401  (for the test modules here)

from corsproxy.runtime.app import Running

T = TypeVar("T")

CHROMIUM = os.environ.get("CORSPROXY_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install chromium && pip install playwright"
RESOLVER_RULES = (
    "MAP *.example.test 127.0.0.1, MAP example.test 127.0.0.1, "
    "MAP *.evil.test 127.0.0.1, MAP evil.test 127.0.0.1"
)
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules={RESOLVER_RULES}",
]
PAGE = b'<!doctype html><html><head><link rel="icon" href="data:,"></head><body>ok</body></html>'

# fetch() from the page: what JavaScript saw (status, body, the asked-for headers, or the error).
FETCH_JS = """async ({url, init, read}) => {
  try {
    const response = await fetch(url, init || {});
    const body = await response.text();
    const headers = {};
    for (const name of read || []) headers[name] = response.headers.get(name);
    return {ok: true, status: response.status, body, headers};
  } catch (error) {
    return {ok: false, error: String(error)};
  }
}"""


class Remote:
    """Playwright's own event loop, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """From synchronous code (session setup and teardown)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """From the test's loop, which keeps serving while the browser works."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Tab:
    """One page of a context; every call runs on the Playwright loop."""

    remote: Remote
    page: Any

    async def goto(self, url: str) -> None:
        await self.remote.call(self.page.goto(url))

    async def evaluate(self, script: str, arg: Any = None) -> Any:
        return await self.remote.call(self.page.evaluate(script, arg))

    async def fetch(
        self, url: str, init: dict[str, Any] | None = None, read: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        return await self.evaluate(FETCH_JS, {"url": url, "init": init, "read": list(read)})


@dataclass
class Context:
    remote: Remote
    context: Any

    async def tab(self, url: str | None = None) -> Tab:
        tab = Tab(self.remote, await self.remote.call(self.context.new_page()))
        if url is not None:
            await tab.goto(url)
        return tab

    async def add_cookies(self, cookies: list[dict[str, Any]]) -> None:
        await self.remote.call(self.context.add_cookies(cookies))


@dataclass
class Chromium:
    remote: Remote
    browser: Any
    playwright: Any

    @contextlib.asynccontextmanager
    async def context(self) -> AsyncIterator[Context]:
        context = await self.remote.call(self.browser.new_context())
        try:
            yield Context(self.remote, context)
        finally:
            await self.remote.call(context.close())


def _unavailable(why: str) -> None:
    message = f"browser tests need Chromium and Playwright: {why}; install: {INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_shared: list[Any] = [None, 0]  # (Chromium, users): one browser even when two modules import it


@pytest.fixture(scope="session", name="chromium_session")
def session_fixture() -> Iterator[Chromium]:
    if _shared[0] is None:
        _shared[0] = _launch()
    _shared[1] += 1
    try:
        yield _shared[0]
    finally:
        _shared[1] -= 1
        if _shared[1] == 0:
            _close(_shared[0])
            _shared[0] = None


def _launch() -> Chromium:
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    remote = Remote()
    manager = async_playwright()
    try:
        playwright = remote.run(manager.start())
        browser = remote.run(
            playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        )
    except Exception as exc:
        remote.close()
        _unavailable(f"Chromium did not start: {exc}")
        raise
    return Chromium(remote, browser, playwright)


def _close(chromium: Chromium) -> None:
    try:
        chromium.remote.run(chromium.browser.close())
        chromium.remote.run(chromium.playwright.stop())
    finally:
        chromium.remote.close()


@pytest.fixture(name="chromium")
async def chromium_fixture(chromium_session: Chromium) -> Chromium:
    return chromium_session


@pytest.fixture(name="ctx")
async def ctx_fixture(chromium: Chromium) -> AsyncIterator[Context]:
    """A fresh browser context for one test: empty cookie jar, empty preflight cache."""
    async with chromium.context() as context:
        yield context


@dataclass
class Pages:
    """Serves an empty HTML page at every path, under any host name Chromium maps here."""

    port: int = 0

    def origin(self, host: str = "app.example.test") -> str:
        return f"http://{host}:{self.port}"

    def url(self, host: str = "app.example.test", path: str = "/") -> str:
        return self.origin(host) + path


async def _page(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=PAGE, content_type="text/html", headers={"Cache-Control": "no-store"})


@pytest.fixture(name="pages")
async def pages_fixture() -> AsyncIterator[Pages]:
    async with serving(_page) as port:
        yield Pages(port)


# ``eventually`` (procutil): the proxy counts and logs a request just after its response went
# out, so the browser can be told the answer a moment before; tests poll for the count.


def counted(proxy: Running, kind: str, decision: str | None = None) -> int:
    """The proxy's ``corsproxy_requests_total`` for one CORS kind (and decision)."""
    total = 0.0
    for metric in proxy.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name != "corsproxy_requests_total" or sample.labels["kind"] != kind:
                continue
            if decision is None or sample.labels["decision"] == decision:
                total += sample.value
    return int(total)
