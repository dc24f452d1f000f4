"""What a real browser lets a page do through the proxy.

Each test asserts both sides: what the page's JavaScript saw (status, readable headers, or
the error) and what the upstream received. The page lives at ``http://<host>.example.test:A``
(the page server), the proxy at ``http://api.example.test:P``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import WSMsgType, web
from browserkit import (  # noqa: F401
    chromium_fixture,
    closed_port,
    counted,
    ctx_fixture,
    eventually,
    pages_fixture,
    session_fixture,
)

pytestmark = pytest.mark.browser

API = "api.example.test"


def api(proxy, path: str) -> str:
    return f"http://{API}:{proxy.port}{path}"


def direct(upstream, path: str) -> str:
    """The upstream itself, by a name Chromium maps to 127.0.0.1 (control fetches)."""
    return f"http://upstream.example.test:{upstream.port}{path}"


def blocked(result: dict) -> bool:
    return result == {"ok": False, "error": "TypeError: Failed to fetch"}


async def proxy_for(make_proxy, upstream, pages, cors: str, origin: str | None = None):
    allowed = origin or pages.origin("app.example.test")
    text = f"upstream: {upstream.url}\ndefaults:\n  allow_origins: ['{allowed}']\n" + "".join(
        f"  {line}\n" for line in cors.splitlines() if line
    )
    return await make_proxy(text)


async def test_allowed_get_is_readable_and_only_exposed_headers_show(
    upstream, make_proxy, pages, ctx
) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(text="orders", headers={"X-Exposed": "e1", "X-Hidden": "h1"})

    upstream.handler = handler
    proxy = await proxy_for(make_proxy, upstream, pages, "expose_headers: [X-Exposed]")
    tab = await ctx.tab(pages.url())
    got = await tab.fetch(api(proxy, "/orders?a=1"), read=("x-exposed", "x-hidden"))
    assert got == {
        "ok": True,
        "status": 200,
        "body": "orders",
        "headers": {"x-exposed": "e1", "x-hidden": None},
    }
    assert [(s.method, s.raw_path) for s in upstream.seen] == [("GET", "/orders?a=1")]
    assert upstream.seen[0].header("Origin") == pages.origin()


@pytest.mark.parametrize("on_disallowed", ["reject", "forward"])
async def test_disallowed_origin_fetch_fails(
    upstream, make_proxy, pages, ctx, on_disallowed: str
) -> None:
    proxy = await proxy_for(make_proxy, upstream, pages, f"on_disallowed: {on_disallowed}")
    tab = await ctx.tab(pages.url("other.example.test"))
    got = await tab.fetch(api(proxy, "/orders"))
    assert blocked(got), got
    if on_disallowed == "reject":
        assert upstream.seen == []
        assert counted(proxy, "actual", "rejected") == 1
    else:
        assert [(s.method, s.header("Origin")) for s in upstream.seen] == [
            ("GET", pages.origin("other.example.test"))
        ]


async def test_put_preflight_answered_by_proxy_and_cached_for_max_age(
    upstream, make_proxy, pages, ctx
) -> None:
    proxy = await proxy_for(
        make_proxy,
        upstream,
        pages,
        "allow_methods: [GET, PUT]\nallow_headers: [Content-Type, Authorization]\nmax_age: 600",
    )
    tab = await ctx.tab(pages.url())
    init = {
        "method": "PUT",
        "headers": {"Content-Type": "application/json", "Authorization": "Bearer t0k"},
        "body": json.dumps({"n": 1}),
    }
    first = await tab.fetch(api(proxy, "/orders/7"), init)
    assert first == {"ok": True, "status": 200, "body": "ok", "headers": {}}
    await eventually(lambda: counted(proxy, "preflight") == 1)
    # Past Chromium's 5 s default cache time: only Access-Control-Max-Age keeps it cached.
    # Not a wait for an effect: the time passing is the scenario (a browser marker test).
    await asyncio.sleep(5.5)
    second = await tab.fetch(api(proxy, "/orders/7"), init)
    assert second["ok"] and second["status"] == 200, second
    assert counted(proxy, "preflight") == 1
    assert counted(proxy, "preflight", "allowed") == 1
    assert [s.method for s in upstream.seen] == ["PUT", "PUT"]  # no OPTIONS upstream
    for seen in upstream.seen:
        assert seen.header("Authorization") == "Bearer t0k"
        assert seen.header("Content-Type") == "application/json"
        assert json.loads(seen.body) == {"n": 1}


@pytest.mark.parametrize(
    "init",
    [
        {"method": "PUT", "headers": {"X-Not-Allowed": "1"}, "body": "x"},
        {"method": "DELETE"},
    ],
    ids=["header-not-allowed", "method-not-allowed"],
)
async def test_preflight_refused_and_upstream_never_sees_the_request(
    upstream, make_proxy, pages, ctx, init: dict
) -> None:
    proxy = await proxy_for(
        make_proxy, upstream, pages, "allow_methods: [GET, PUT]\nallow_headers: [Content-Type]"
    )
    tab = await ctx.tab(pages.url())
    got = await tab.fetch(api(proxy, "/orders/7"), init)
    assert blocked(got), got
    assert upstream.seen == []
    assert counted(proxy, "preflight") == 1
    assert counted(proxy, "actual") == 0


async def test_credentialed_cookie_flows_from_allowed_origin(
    upstream, make_proxy, pages, ctx
) -> None:
    proxy = await proxy_for(make_proxy, upstream, pages, "allow_credentials: true")
    await ctx.add_cookies([{"name": "session", "value": "s3cr3t", "domain": API, "path": "/"}])
    tab = await ctx.tab(pages.url())
    got = await tab.fetch(api(proxy, "/me"), {"credentials": "include"})
    assert got == {"ok": True, "status": 200, "body": "ok", "headers": {}}
    assert upstream.seen[0].header("Cookie") == "session=s3cr3t"
    assert upstream.seen[0].header("Origin") == pages.origin()


async def reflect_any_origin(request: web.BaseRequest) -> web.Response:
    """The classic mistake: any origin, with credentials."""
    origin = request.headers.get("Origin", "*")
    return web.Response(
        text="secret",
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
        },
    )


async def upstream_star(request: web.BaseRequest) -> web.Response:
    return web.Response(text="secret", headers={"Access-Control-Allow-Origin": "*"})


@pytest.mark.parametrize(
    ("handler", "credentials"),
    [(reflect_any_origin, "include"), (upstream_star, "omit")],
    ids=["upstream-reflects-origin-with-credentials", "upstream-sends-star"],
)
async def test_upstream_cors_headers_are_neutralised_for_disallowed_origin(
    upstream, make_proxy, pages, ctx, handler, credentials: str
) -> None:
    upstream.handler = handler
    proxy = await proxy_for(
        make_proxy, upstream, pages, "allow_credentials: true\non_disallowed: forward"
    )
    evil = pages.url("app.example.test.evil.test")
    await ctx.add_cookies([{"name": "session", "value": "s1", "domain": API, "path": "/"}])
    tab = await ctx.tab(evil)
    # Control: straight to the upstream, the browser lets the evil page read.
    control = await tab.fetch(direct(upstream, "/me"), {"credentials": credentials})
    assert control["ok"] and control["body"] == "secret", control
    got = await tab.fetch(api(proxy, "/me"), {"credentials": credentials})
    assert blocked(got), got
    assert [s.raw_path for s in upstream.seen] == ["/me", "/me"]  # forwarded, then stripped
    assert upstream.seen[1].header("Origin") == pages.origin("app.example.test.evil.test")


async def test_upstream_500_and_proxy_502_are_readable_statuses(
    upstream, make_proxy, pages, ctx
) -> None:
    async def fail(request: web.BaseRequest) -> web.Response:
        return web.Response(status=500, text="boom")

    upstream.handler = fail
    allowed = pages.origin()
    proxy = await make_proxy(
        f"upstream: {upstream.url}\n"
        f"defaults: {{allow_origins: ['{allowed}']}}\n"
        "timeouts: {connect: 2}\n"
        "routes:\n"
        f"  - {{path: /down/**, upstream: 'http://127.0.0.1:{closed_port()}'}}\n"
    )
    tab = await ctx.tab(pages.url())
    got = await tab.fetch(api(proxy, "/broken"))
    assert got == {"ok": True, "status": 500, "body": "boom", "headers": {}}
    down = await tab.fetch(api(proxy, "/down/x"))
    assert down["ok"] and down["status"] == 502, down
    assert [s.raw_path for s in upstream.seen] == ["/broken"]


@pytest.mark.parametrize(
    ("host", "readable"),
    [
        ("a.example.test", True),
        ("b.c.example.test", True),
        ("example.test.evil.test", False),
        ("example.test", False),
    ],
)
async def test_wildcard_subdomain_origins(
    upstream, make_proxy, pages, ctx, host: str, readable: bool
) -> None:
    proxy = await proxy_for(
        make_proxy, upstream, pages, "", origin=f"http://*.example.test:{pages.port}"
    )
    tab = await ctx.tab(pages.url(host))
    got = await tab.fetch(api(proxy, "/w"))
    if readable:
        assert got == {"ok": True, "status": 200, "body": "ok", "headers": {}}
        assert [s.header("Origin") for s in upstream.seen] == [pages.origin(host)]
    else:
        assert blocked(got), got
        assert upstream.seen == []


WEBSOCKET_JS = """async (url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  const timer = setTimeout(() => resolve({ok: false, error: 'timeout'}), 5000);
  ws.onopen = () => ws.send('ping');
  ws.onmessage = (event) => {
    clearTimeout(timer);
    ws.close();
    resolve({ok: true, data: event.data});
  };
  ws.onerror = () => { clearTimeout(timer); resolve({ok: false, error: 'error'}); };
})"""


@pytest.mark.parametrize("host", ["app.example.test", "evil.example.test"])
async def test_websocket_from_the_page(upstream, make_proxy, pages, ctx, host: str) -> None:
    upgrades = []

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        upgrades.append(request.headers.get("Origin"))
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    upstream.handler = echo
    proxy = await proxy_for(make_proxy, upstream, pages, "")
    tab = await ctx.tab(pages.url(host))
    got = await tab.evaluate(WEBSOCKET_JS, f"ws://{API}:{proxy.port}/ws")
    if host == "app.example.test":
        assert got == {"ok": True, "data": "echo:ping"}
        assert upgrades == [pages.origin()]
    else:
        assert got == {"ok": False, "error": "error"}
        assert upstream.seen == [] and upgrades == []
        assert counted(proxy, "websocket", "rejected") == 1


BIG_WEBSOCKET_JS = """async ({url, size}) => {
  const open = () => new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['chat.v1', 'chat.v2']);
    ws.binaryType = 'arraybuffer';
    const timer = setTimeout(() => reject(new Error('timeout')), 10000);
    ws.onopen = () => { clearTimeout(timer); resolve(ws); };
    ws.onerror = () => { clearTimeout(timer); reject(new Error('error')); };
  });
  try {
    const ws = await open();
    const payload = new Uint8Array(size);
    for (let i = 0; i < size; i++) payload[i] = i % 251;
    const reply = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timeout')), 20000);
      ws.onmessage = (event) => { clearTimeout(timer); resolve(event.data); };
      ws.onerror = () => { clearTimeout(timer); reject(new Error('error')); };
      ws.send(payload);
    });
    const back = new Uint8Array(reply);
    let same = back.length === size;
    for (let i = 0; same && i < size; i += 4099) same = back[i] === (i % 251);
    const protocol = ws.protocol;
    ws.close(4001, 'bye');
    const second = await open();
    second.close();
    return {ok: true, protocol, length: back.length, same};
  } catch (error) {
    return {ok: false, error: String(error)};
  }
}"""


async def test_websocket_tunnel_carries_subprotocol_big_message_and_cookie(
    upstream, make_proxy, pages, ctx
) -> None:
    """Through the tunnel, Chromium gets the subprotocol the upstream chose, a 10 MiB
    message both ways, and the cookie the upstream's 101 set (its next handshake sends it)."""
    handshakes: list[str | None] = []
    closes: list[int | None] = []

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        handshakes.append(request.headers.get("Cookie"))
        ws = web.WebSocketResponse(protocols=("chat.v2",), max_msg_size=0)
        ws.set_cookie("ws_session", "t0ken", path="/")
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        closes.append(ws.close_code)
        return ws

    upstream.handler = echo
    proxy = await proxy_for(make_proxy, upstream, pages, "")
    tab = await ctx.tab(pages.url())
    size = 10 * 1024 * 1024
    got = await tab.evaluate(BIG_WEBSOCKET_JS, {"url": f"ws://{API}:{proxy.port}/ws", "size": size})
    assert got == {"ok": True, "protocol": "chat.v2", "length": size, "same": True}
    assert handshakes[0] is None and handshakes[1] == "ws_session=t0ken"
    await eventually(lambda: len(closes) == 2)
    assert closes[0] == 4001  # the page's own close code, end to end


@pytest.mark.parametrize(
    ("handler", "readable"),
    [(None, False), (upstream_star, True)],
    ids=["upstream-without-cors", "upstream-sends-star"],
)
async def test_report_only_leaves_the_upstreams_own_behaviour(
    upstream, make_proxy, pages, ctx, capsys, handler, readable: bool
) -> None:
    upstream.handler = handler
    proxy = await proxy_for(make_proxy, upstream, pages, "report_only: true")
    tab = await ctx.tab(pages.url("evil.example.test"))
    got = await tab.fetch(api(proxy, "/r"))
    if readable:
        assert got == {"ok": True, "status": 200, "body": "secret", "headers": {}}
    else:
        assert blocked(got), got
    assert [s.raw_path for s in upstream.seen] == ["/r"]
    await eventually(lambda: counted(proxy, "actual", "would_reject") == 1)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    logged = [(e["path"], e["decision"], e["origin"]) for e in lines]
    assert logged == [("/r", "would_reject", pages.origin("evil.example.test"))]
