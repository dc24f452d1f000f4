"""The admin listener's live page in headless Chromium, against a real
``python -m corsproxy`` process: routes in order, a refusal with its reason and fix within
2 s without a reload, counters that move, the suggested rules of the traffic seen,
a refused config file under reloads, markup in an Origin shown as text (in the suggestion
too), no Cookie/Authorization value anywhere. The last test takes the screenshot of the
demo; with CORSPROXY_UPDATE_SCREENSHOT=1 it writes docs/images/admin-page.png."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from browserkit import chromium_fixture, ctx_fixture, session_fixture  # noqa: F401
from procutil import REPO, accepts, free_port, running

pytestmark = pytest.mark.browser

SECRETS = ("cookie-secret-4711", "token-secret-0815")
CONFIG = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: http://127.0.0.1:{dead}
access_log: off
defaults:
  allow_origins: [https://app.example.com]
routes:
  - name: public
    path: /public/**
    cors:
      allow_origins: ["*"]
  - name: api
    path: /api/**
    cors:
      allow_methods: [GET, POST, PUT]
      allow_headers: [Content-Type]
  - name: legacy
    path: /legacy/**
    cors: passthrough
"""


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def preflight(origin: bytes, headers: bytes = b"X-Trace-Id", path: bytes = b"/api/x") -> bytes:
    lines = [
        b"OPTIONS %s HTTP/1.1" % path,
        b"Host: api.example.test",
        b"Origin: " + origin,
        b"Access-Control-Request-Method: PUT",
        b"Access-Control-Request-Headers: " + headers,
        b"Cookie: session=cookie-secret-4711",
        b"Authorization: Bearer token-secret-0815",
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def wait_for(check, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def listening(*ports: int) -> Callable[[], Awaitable[bool]]:
    """A check for ``wait_for``: every port accepts connections."""

    async def check() -> bool:
        return all(accepts(port) for port in ports)

    return check


ROUTE_NAMES = (
    "() => [...document.querySelectorAll('#routes tbody tr td:nth-child(2)')]"
    ".map(t => t.textContent)"
)
TEXT_OF = "(sel) => document.querySelector(sel).textContent"


async def test_live_page_shows_refusals_reloads_and_never_a_secret(ctx, tmp_path: Path) -> None:
    port, admin, dead = free_port(), free_port(), free_port()
    path = tmp_path / "corsproxy.yaml"
    path.write_text(CONFIG.format(port=port, admin=admin, dead=dead))
    with running(["serve", "-c", str(path)], tmp_path / "out") as proc:
        await wait_for(listening(admin, port), 15, "the proxy and its admin listener")
        tab = await ctx.tab(f"http://127.0.0.1:{admin}/")

        async def names():
            found = await tab.evaluate(ROUTE_NAMES)
            return found if found else None

        assert await wait_for(names, 5, "routes listed") == ["public", "api", "legacy", "default"]
        before = await tab.evaluate(TEXT_OF, "#meta")

        await asyncio.to_thread(raw, port, preflight(b"https://app.example.com"))

        async def refusal():
            text = await tab.evaluate(TEXT_OF, "#refusals tbody")
            return text if "X-Trace-Id" in text else None

        text = await wait_for(refusal, 2.0, "the refusal on the page")
        assert "header 'x-trace-id' is not allowed" in text
        assert "add X-Trace-Id to routes[1].cors.allow_headers" in text
        after = await tab.evaluate(TEXT_OF, "#meta")
        assert re.search(r"(\d+) requests", after).group(1) != re.search(  # counters move
            r"(\d+) requests", before
        ).group(1)

        async def rejected_total():
            cells = await tab.evaluate(TEXT_OF, "#live tbody")
            return "1" in cells

        await wait_for(rejected_total, 2.0, "the live counters")

        # The suggested rules: what `corsproxy suggest` would print for this traffic.
        await tab.evaluate("() => document.getElementById('suggest-refresh').click()")

        async def suggested():
            text = await tab.evaluate(TEXT_OF, "#suggest-yaml")
            return text if "- https://app.example.com  # 1 request" in text else None

        text = await wait_for(suggested, 5.0, "the suggestion on the page")
        assert "- x-trace-id  # 1 request" in text and "- PUT  # 1 request" in text
        assert text.startswith("# Suggested by corsproxy's admin page from the last hour")
        section = await tab.evaluate(TEXT_OF, "#suggestion")
        assert "A suggestion to review" in section and "1 cross-origin requests counted" in section
        assert f"written into {path}" in section

        # Markup in an Origin is text, never markup.
        markup = b'<img src=x id="injected"><script id="evil">1</script>'
        await asyncio.to_thread(raw, port, preflight(markup, b"X-Other"))

        async def shown():
            text = await tab.evaluate(TEXT_OF, "#refusals tbody")
            return text if '<script id="evil">' in text else None

        await wait_for(shown, 2.0, "the markup origin as text")
        await tab.evaluate("() => document.getElementById('suggest-refresh').click()")

        async def risky():
            text = await tab.evaluate(TEXT_OF, "#suggest-yaml")
            return text if 'id=\\"evil\\">' in text else None

        await wait_for(risky, 5.0, "the markup origin in the suggestion, as text")
        assert await tab.evaluate("() => document.querySelectorAll('#injected, #evil').length") == 0
        assert await tab.evaluate("() => document.scripts.length") == 1

        # A broken config: the reload is refused, its errors listed as `check` prints them.
        path.write_text(CONFIG.format(port=port, admin=admin, dead=dead) + "  - name: 7\n")

        async def reload_failed():
            text = await tab.evaluate(TEXT_OF, "#reloads")
            return text if "failure" in text else None

        text = await wait_for(reload_failed, 10.0, "the refused reload")
        assert re.search(re.escape(str(path)) + r":\d+: routes\[3\][\w.\[\]]*: error: ", text), text

        page = await tab.evaluate("() => document.documentElement.outerHTML")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/state.json", timeout=5) as r:
            state = r.read().decode()
        for secret in SECRETS:
            assert secret not in page and secret not in state
        assert json.loads(state)["totals"]["refused"] == 2
        assert "Traceback" not in proc.stderr()


async def test_screenshot_of_the_demo(ctx, tmp_path: Path) -> None:
    """The page from `corsproxy demo` with its own config (docs/images/admin-page.png)."""
    port, admin = free_port(), free_port()
    text = (REPO / "config" / "corsproxy.yaml").read_text()
    text = text.replace("admin: 127.0.0.1:9901", f"admin: 127.0.0.1:{admin}")
    path = tmp_path / "corsproxy.yaml"
    path.write_text(text)
    args = ["demo", "-c", str(path), "--listen", f"127.0.0.1:{port}"]
    with running(args, tmp_path / "out"):
        await wait_for(listening(admin, port), 15, "the demo and its admin listener")
        tab = await ctx.tab(f"http://127.0.0.1:{admin}/")
        await tab.remote.call(tab.page.set_viewport_size({"width": 1200, "height": 900}))
        get = b"GET %s HTTP/1.1\r\nHost: localhost\r\nOrigin: %s\r\nConnection: close\r\n\r\n"
        for second in range(6):
            for _ in range(3 + second):
                await asyncio.to_thread(
                    raw, port, get % (b"/api/orders", b"https://app.example.com")
                )
                await asyncio.to_thread(
                    raw, port, get % (b"/public/logo", b"https://x.example.org")
                )
            await asyncio.to_thread(
                raw, port, preflight(b"https://app.example.com", path=b"/api/a")
            )
            await asyncio.to_thread(raw, port, get % (b"/api/orders", b"https://evil.example.net"))
            await asyncio.sleep(1)
        await asyncio.to_thread(raw, port, get % (b"/legacy/x", b"https://app.example.com"))

        async def ready():
            return "X-Trace-Id" in await tab.evaluate(TEXT_OF, "#refusals tbody")

        await wait_for(ready, 5, "refusals shown")

        async def counted():  # every request sent is on the page, and the suggestion loaded
            meta = await tab.evaluate(TEXT_OF, "#meta")
            return "79 requests" in meta and await tab.evaluate(TEXT_OF, "#suggest-yaml")

        await tab.evaluate("() => document.getElementById('suggest-refresh').click()")
        await wait_for(counted, 5, "all 79 requests counted")
        # Written into the docs only when asked (a test run leaves the checkout clean).
        if os.environ.get("CORSPROXY_UPDATE_SCREENSHOT"):
            out = REPO / "docs" / "images" / "admin-page.png"
        else:
            out = tmp_path / "admin-page.png"
        await tab.remote.call(tab.page.screenshot(path=str(out)))
        assert out.stat().st_size < 400_000
