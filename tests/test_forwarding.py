"""Paths and forwarding over real HTTP: what the upstream receives and what the client gets back.

Requests whose exact bytes matter go through raw sockets (an HTTP client would normalise
them first). Every table row names the rule it checks.
"""

from __future__ import annotations

import asyncio
import gzip
import re

import pytest
from aiohttp import web
from conftest import parse_head, raw_request


def get(target: str, *headers: str, method: str = "GET", host: str = "front.test") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


PATH_CONFIG = """
upstream: {upstream}
routes:
  - path: /public/**
    cors:
      allow_origins: ["*"]
  - path: /api/**
    cors:
      allow_origins: [https://app.test]
"""

# --- 3.1 path normalisation: what the upstream receives exactly ----------------------------

NORMALISED = [
    pytest.param("/public/../api/x", "/api/x", id="dot-dot-segment-removed"),
    pytest.param("/a/./b", "/a/b", id="dot-segment-removed"),
    pytest.param("/a/b/..", "/a/", id="trailing-dot-dot-keeps-slash"),
    pytest.param("/public/%2e%2e/api/x", "/api/x", id="encoded-dot-dot-decoded-then-removed"),
    pytest.param("/%7Euser", "/~user", id="tilde-escape-decoded"),
    pytest.param("/%7euser", "/~user", id="lowercase-hex-escape-decoded"),
    pytest.param("/%41bc%2D%5F", "/Abc-_", id="unreserved-escapes-decoded"),
    pytest.param("/caf%C3%A9", "/caf%C3%A9", id="utf8-escape-kept-exactly"),
    pytest.param("/caf%c3%a9", "/caf%c3%a9", id="lowercase-other-escape-kept-exactly"),
    pytest.param("/a%20b", "/a%20b", id="space-escape-kept"),
    pytest.param("/a%3Fb%23c", "/a%3Fb%23c", id="reserved-escapes-kept"),
    pytest.param("/x?a=%41&b=..&c", "/x?a=%41&b=..&c", id="query-byte-exact"),
    pytest.param(
        "/x?q=/../y&%7E=%2F&&sp=%20+;z", "/x?q=/../y&%7E=%2F&&sp=%20+;z", id="query-odd-bytes-exact"
    ),
    pytest.param("/a/../b?c=/../d", "/b?c=/../d", id="path-normalised-query-untouched"),
]


@pytest.mark.parametrize(("target", "expected"), NORMALISED)
async def test_upstream_receives_normalised_path(upstream, make_proxy, target, expected):
    proxy = await make_proxy(PATH_CONFIG, upstream=upstream.url)
    status, _, _ = parse_head(await raw_request(proxy.port, get(target)))
    assert status == 200
    assert [s.raw_path for s in upstream.seen] == [expected]


@pytest.mark.parametrize(
    ("origin", "status", "acao"),
    [
        pytest.param("https://any.test", 403, None, id="public-policy-not-borrowed"),
        pytest.param("https://app.test", 200, "https://app.test", id="api-policy-applies"),
    ],
)
async def test_path_judged_after_normalisation(upstream, make_proxy, origin, status, acao):
    """``/public/../api/x`` is judged by the /api/** route, not the laxer /public/** one."""
    proxy = await make_proxy(PATH_CONFIG, upstream=upstream.url)
    raw = await raw_request(proxy.port, get("/public/../api/x", f"Origin: {origin}"))
    got, headers, _ = parse_head(raw)
    assert got == status
    assert header_values(headers, "Access-Control-Allow-Origin") == ([acao] if acao else [])


BAD_PATHS = [
    pytest.param("/a%2Fb", id="encoded-slash-upper"),
    pytest.param("/a%2fb", id="encoded-slash-lower"),
    pytest.param("/public/..%2F..%2Fapi", id="encoded-slash-traversal"),
    pytest.param("/a%5Cb", id="encoded-backslash-upper"),
    pytest.param("/a%5cb", id="encoded-backslash-lower"),
    pytest.param("/a%00b", id="encoded-nul"),
    pytest.param("/../x", id="climb-above-root"),
    pytest.param("/a/../../x", id="climb-above-root-after-segment"),
    pytest.param("/%2e%2e/x", id="climb-with-encoded-dots"),
    pytest.param("/..", id="bare-dot-dot"),
    pytest.param("/public/..;/api/x", id="dot-dot-with-path-parameter"),
]


@pytest.mark.parametrize("target", BAD_PATHS)
async def test_bad_path_is_400_and_not_forwarded(upstream, make_proxy, target):
    proxy = await make_proxy(PATH_CONFIG, upstream=upstream.url)
    status, _, _ = parse_head(await raw_request(proxy.port, get(target)))
    assert status == 400
    assert upstream.seen == []


async def test_bad_path_preflight_is_400_not_answered(upstream, make_proxy):
    """A bad path is refused before any CORS answer, preflights included."""
    proxy = await make_proxy(PATH_CONFIG, upstream=upstream.url)
    raw = await raw_request(
        proxy.port,
        get(
            "/api/a%2Fb",
            "Origin: https://app.test",
            "Access-Control-Request-Method: GET",
            method="OPTIONS",
        ),
    )
    status, headers, _ = parse_head(raw)
    assert status == 400
    assert header_values(headers, "Access-Control-Allow-Origin") == []
    assert upstream.seen == []


# --- 3.1 route matching ---------------------------------------------------------------------

# Each route points at the same upstream with its own prefix: the prefix tells which matched.
ROUTES_CONFIG = """
upstream: {upstream}/default
routes:
  - path: /api/**
    upstream: {upstream}/r-api
  - path: /one/*
    upstream: {upstream}/r-star
  - path: /mid/*/end
    upstream: {upstream}/r-mid
  - path: /first/**
    upstream: {upstream}/r-first
  - path: /first/a
    upstream: {upstream}/r-never
  - path: /h/**
    host: Api.Example.COM
    upstream: {upstream}/r-host
  - path: /h/**
    upstream: {upstream}/r-nohost
"""

MATCHING = [
    pytest.param("/api", None, "/r-api/api", id="double-star-matches-zero-segments"),
    pytest.param("/api/", None, "/r-api/api/", id="double-star-matches-trailing-slash"),
    pytest.param("/api/a/b", None, "/r-api/api/a/b", id="double-star-matches-many-segments"),
    pytest.param("/apix", None, "/default/apix", id="literal-segment-matches-exactly"),
    pytest.param("/API/x", None, "/default/API/x", id="literal-segment-case-sensitive"),
    pytest.param("/one/a", None, "/r-star/one/a", id="star-matches-one-segment"),
    pytest.param("/one/", None, "/default/one/", id="star-needs-non-empty-segment"),
    pytest.param("/one", None, "/default/one", id="star-needs-a-segment"),
    pytest.param("/one/a/b", None, "/default/one/a/b", id="star-matches-only-one-segment"),
    pytest.param("/mid/x/end", None, "/r-mid/mid/x/end", id="star-in-the-middle"),
    pytest.param("/mid//end", None, "/default/mid/end", id="empty-segment-merged-not-star"),
    pytest.param("//api/x", None, "/r-api/api/x", id="double-slash-cannot-dodge-a-route"),
    pytest.param("/h/x", "api.example.com.", "/r-host/h/x", id="host-trailing-dot-same-host"),
    pytest.param("/first/a", None, "/r-first/first/a", id="first-match-wins"),
    pytest.param("/h/x", "api.example.com", "/r-host/h/x", id="host-route-matches"),
    pytest.param("/h/x", "API.EXAMPLE.com", "/r-host/h/x", id="host-case-insensitive"),
    pytest.param("/h/x", "api.example.com:8443", "/r-host/h/x", id="host-port-ignored"),
    pytest.param("/h/x", "other.example.com", "/r-nohost/h/x", id="other-host-next-route"),
]


@pytest.mark.parametrize(("path", "host", "expected"), MATCHING)
async def test_route_matching(upstream, make_proxy, path, host, expected):
    proxy = await make_proxy(ROUTES_CONFIG, upstream=upstream.url)
    raw = await raw_request(proxy.port, get(path, host=host or "front.test"))
    assert parse_head(raw)[0] == 200
    assert [s.raw_path for s in upstream.seen] == [expected]


@pytest.mark.parametrize("prefix", ["/v1", "/v1/"], ids=["prefix", "prefix-trailing-slash"])
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/x", "/v1/x", id="one-slash"),
        pytest.param("/x/y?q=1", "/v1/x/y?q=1", id="deeper-with-query"),
        pytest.param("/", "/v1/", id="root"),
    ],
)
async def test_upstream_prefix_join(upstream, make_proxy, prefix, path, expected):
    proxy = await make_proxy("upstream: {upstream}" + prefix + "\n", upstream=upstream.url)
    assert parse_head(await raw_request(proxy.port, get(path)))[0] == 200
    assert [s.raw_path for s in upstream.seen] == [expected]


# --- 5 headers --------------------------------------------------------------------------------

REQUEST_HOP_BY_HOP = [
    "Connection: close, X-Listed",
    "X-Listed: 1",
    "Keep-Alive: timeout=5",
    "TE: trailers",
    "Trailer: X-Trail",
    "Upgrade: foo/1",
    "Proxy-Authorization: Basic Zm9vOmJhcg==",
    "Proxy-Connection: keep-alive",
    "X-Kept: yes",
]


async def test_hop_by_hop_request_headers_dropped(upstream, make_proxy):
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    data = ("GET /x HTTP/1.1\r\nHost: front.test\r\n" + "\r\n".join(REQUEST_HOP_BY_HOP)).encode()
    assert parse_head(await raw_request(proxy.port, data + b"\r\n\r\n"))[0] == 200
    seen = upstream.seen[0]
    names = {k.lower() for k, _ in seen.headers}
    for name in ("x-listed", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"):
        assert name not in names, f"hop-by-hop {name} forwarded"
    assert "proxy-connection" not in names
    for value in seen.all("Connection"):
        assert value.lower() == "keep-alive", f"client's Connection forwarded: {value}"
    assert seen.header("X-Kept") == "yes"


async def test_hop_by_hop_response_headers_dropped(upstream, make_proxy):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            text="ok",
            headers={
                "Connection": "X-Listed-Resp",
                "X-Listed-Resp": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Trailer": "X-Trail",
                "Upgrade": "foo/1",
                "X-Kept": "yes",
            },
        )

    upstream.handler = handler
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    status, headers, body = parse_head(await raw_request(proxy.port, get("/x")))
    assert status == 200
    assert body == b"ok"
    names = {k.lower() for k, _ in headers}
    for name in ("x-listed-resp", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in names, f"hop-by-hop {name} returned to the client"
    for value in header_values(headers, "Connection"):
        assert "x-listed-resp" not in value.lower()
    assert header_values(headers, "X-Kept") == ["yes"]


FORWARDED = [
    pytest.param(
        "",
        [],
        {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "f.test"},
        id="set-when-absent",
    ),
    pytest.param(
        "",
        ["X-Forwarded-For: 203.0.113.7"],
        {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"},
        id="for-appended-to-existing",
    ),
    pytest.param(
        "",
        ["X-Forwarded-For: 203.0.113.7", "X-Forwarded-For: 198.51.100.2"],
        {"X-Forwarded-For": "203.0.113.7, 198.51.100.2, 127.0.0.1"},
        id="for-appended-to-several",
    ),
    pytest.param(
        "",
        ["X-Forwarded-Proto: https", "X-Forwarded-Host: evil.test"],
        {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "f.test"},
        id="client-values-replaced-without-trust_forwarded",
    ),
    pytest.param(
        "trust_forwarded: true\n",
        ["X-Forwarded-Proto: https", "X-Forwarded-Host: site.test"],
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "site.test"},
        id="trusted-values-passed-on",
    ),
]


async def test_client_x_forwarded_host_dropped_without_host(upstream, make_proxy):
    """HTTP/1.0 without Host: the client's own X-Forwarded-Host claim never passes on."""
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    raw = await raw_request(proxy.port, b"GET /x HTTP/1.0\r\nX-Forwarded-Host: evil.test\r\n\r\n")
    assert parse_head(raw)[0] == 200
    assert upstream.seen[0].all("X-Forwarded-Host") == []


@pytest.mark.parametrize(("extra", "sent", "expected"), FORWARDED)
async def test_x_forwarded_headers(upstream, make_proxy, extra, sent, expected):
    proxy = await make_proxy(extra + "upstream: {upstream}\n", upstream=upstream.url)
    assert parse_head(await raw_request(proxy.port, get("/x", *sent, host="f.test")))[0] == 200
    seen = upstream.seen[0]
    for name, value in expected.items():
        assert seen.all(name) == [value], (name, seen.all(name))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("", "upstream", id="upstream-host-by-default"),
        pytest.param("preserve_host: true\n", "front.test:1234", id="preserve_host"),
    ],
)
async def test_host_header(upstream, make_proxy, extra, expected):
    proxy = await make_proxy(extra + "upstream: {upstream}\n", upstream=upstream.url)
    raw = await raw_request(proxy.port, get("/x", host="front.test:1234"))
    assert parse_head(raw)[0] == 200
    want = f"127.0.0.1:{upstream.port}" if expected == "upstream" else expected
    assert upstream.seen[0].all("Host") == [want]


async def test_duplicated_request_headers_all_arrive(upstream, make_proxy):
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    raw = await raw_request(proxy.port, get("/x", "X-Custom: a", "X-Custom: b"))
    assert parse_head(raw)[0] == 200
    assert upstream.seen[0].all("X-Custom") == ["a", "b"]


@pytest.mark.parametrize(
    "location",
    ["/elsewhere", "http://127.0.0.1:1/elsewhere"],
    ids=["relative-location", "absolute-location"],
)
async def test_redirect_passed_not_followed(upstream, make_proxy, location):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    upstream.handler = handler
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    status, headers, _ = parse_head(await raw_request(proxy.port, get("/x")))
    assert status == 302
    assert header_values(headers, "Location") == [location]
    assert [s.raw_path for s in upstream.seen] == ["/x"]


async def test_upstream_connection_pooled(upstream, make_proxy):
    peers: list[int] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        return web.Response(text="ok")

    upstream.handler = handler
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    # A fresh client connection each time (closed after): only the proxy's pool can reuse.
    for _ in range(5):
        assert parse_head(await raw_request(proxy.port, get("/x")))[0] == 200
    assert len(peers) == 5
    assert len(set(peers)) == 1, f"upstream saw several connections: {peers}"


# --- 5 never an open proxy ------------------------------------------------------------------

OPEN_PROXY = [
    pytest.param(
        get("http://evil.invalid:1/x", host="evil.invalid:1"), "/x", id="absolute-form-target"
    ),
    pytest.param(get("http://evil.invalid:1", host="evil.invalid:1"), "/", id="absolute-no-path"),
    pytest.param(get("https://evil.invalid/x?q=1"), "/x?q=1", id="absolute-form-https"),
    pytest.param(get("/x", host="evil.invalid:1"), "/x", id="host-header-elsewhere"),
    pytest.param(get("/x", host="169.254.169.254"), "/x", id="host-header-metadata-address"),
    pytest.param(get("//evil.invalid/x"), "/evil.invalid/x", id="scheme-relative-path"),
    pytest.param(
        get("/x", "X-Forwarded-Host: evil.invalid:1", "Forwarded: host=evil.invalid"),
        "/x",
        id="forwarded-headers-elsewhere",
    ),
]


@pytest.mark.parametrize(("data", "expected"), OPEN_PROXY)
async def test_never_an_open_proxy(upstream, make_proxy, data, expected):
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    status, _, body = parse_head(await raw_request(proxy.port, data))
    assert status == 200
    assert body == b"ok"
    assert [s.raw_path for s in upstream.seen] == [expected]
    assert upstream.seen[0].header("Host") == f"127.0.0.1:{upstream.port}"


async def test_connect_method_not_tunnelled(upstream, make_proxy):
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    data = (
        b"CONNECT evil.invalid:443 HTTP/1.1\r\nHost: evil.invalid:443\r\nConnection: close\r\n\r\n"
    )
    status, _, _ = parse_head(await raw_request(proxy.port, data))
    assert 400 <= status < 500
    assert upstream.seen == []


# --- 5 bodies -------------------------------------------------------------------------------


async def test_body_with_content_length_forwarded(upstream, make_proxy):
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    payload = b"hello \x00\xff world"
    data = get("/x", f"Content-Length: {len(payload)}", method="POST") + payload
    assert parse_head(await raw_request(proxy.port, data))[0] == 200
    seen = upstream.seen[0]
    assert seen.method == "POST"
    assert seen.body == payload
    assert seen.header("Content-Length") == str(len(payload))


async def test_chunked_body_forwarded(upstream, make_proxy):
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    chunks = b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    data = get("/x", "Transfer-Encoding: chunked", method="PUT") + chunks
    assert parse_head(await raw_request(proxy.port, data))[0] == 200
    assert upstream.seen[0].method == "PUT"
    assert upstream.seen[0].body == b"hello world"


async def _no_body_upstream(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/204":
        return web.Response(status=204)
    if request.path == "/304":
        return web.Response(status=304, headers={"ETag": '"v1"'})
    return web.Response(text="a body that must not be sent")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("HEAD", "/x", 200, id="head"),
        pytest.param("GET", "/204", 204, id="no-content-204"),
        pytest.param("GET", "/304", 304, id="not-modified-304"),
    ],
)
async def test_responses_without_body(upstream, make_proxy, method, path, status):
    upstream.handler = _no_body_upstream
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    # Two requests on one connection: a stray body byte would corrupt the second answer.
    data = get(path, method=method).replace(b"Connection: close\r\n", b"") + get("/x")
    raw = await raw_request(proxy.port, data)
    got, headers, rest = parse_head(raw)
    assert got == status
    assert rest.startswith(b"HTTP/1.1 200 "), f"bytes after a bodiless response: {rest[:40]!r}"
    assert "chunked" not in " ".join(header_values(headers, "Transfer-Encoding")).lower()
    if status == 304:
        assert header_values(headers, "ETag") == ['"v1"']


async def test_gzip_passed_through_untouched(upstream, make_proxy, client):
    compressed = gzip.compress(b"hello world " * 200)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    upstream.handler = handler
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    async with client.get(proxy.url + "/x", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.read() == compressed
    assert upstream.seen[0].all("Accept-Encoding") == ["gzip"]
    # A client that asks for no encoding gets none asked for on its behalf.
    assert parse_head(await raw_request(proxy.port, get("/x")))[0] == 200
    assert upstream.seen[1].all("Accept-Encoding") == []


async def test_no_content_type_added(upstream, make_proxy):
    # aiohttp's server always adds a Content-Type to a body: this upstream is a bare socket.
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndata")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await make_proxy(f"upstream: http://127.0.0.1:{port}\n")
        status, headers, body = parse_head(await raw_request(proxy.port, get("/x")))
    finally:
        server.close()
        await server.wait_closed()
    assert status == 200
    assert body == b"data"
    assert header_values(headers, "Content-Type") == []


async def test_set_cookie_passed_through(upstream, make_proxy):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    upstream.handler = handler
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    _, headers, _ = parse_head(await raw_request(proxy.port, get("/x")))
    assert header_values(headers, "Set-Cookie") == ["a=1; Path=/; HttpOnly", "b=2; Path=/"]


async def test_no_cookie_leak_between_clients(upstream, make_proxy):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(text="ok")
        if request.path == "/login":
            response.headers.add("Set-Cookie", "session=alice; Path=/")
        return response

    upstream.handler = handler
    proxy = await make_proxy("upstream: {upstream}\n", upstream=upstream.url)
    _, headers, _ = parse_head(await raw_request(proxy.port, get("/login")))
    assert header_values(headers, "Set-Cookie") == ["session=alice; Path=/"]
    # Alice sends her cookie back; it arrives once and unchanged.
    await raw_request(proxy.port, get("/me", "Cookie: session=alice"))
    # Another client, no cookie: the upstream must not see Alice's.
    await raw_request(proxy.port, get("/me"))
    assert [s.all("Cookie") for s in upstream.seen] == [[], ["session=alice"], []]


@pytest.mark.parametrize(
    ("method", "body", "status", "attempts"),
    [
        pytest.param("GET", b"", 200, 2, id="bodiless-get-resent-once"),
        pytest.param("DELETE", b"", 200, 2, id="bodiless-delete-resent-once"),
        pytest.param("POST", b"", 502, 1, id="post-never-replayed"),
        pytest.param("PUT", b"payload", 502, 1, id="streamed-body-never-replayed"),
    ],
)
async def test_upstream_closing_without_answer(make_proxy, client, method, body, status, attempts):
    """A pooled connection the upstream closes on the next request, before answering it."""
    heads: list[bytes] = []
    connections = 0
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first_connection = connections == 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                heads.append(head)
                if first_connection and len(heads) == 2:
                    return  # the stale connection: closed without an answer
                writer.write(ok)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await make_proxy(f"upstream: http://127.0.0.1:{port}\n")
        async with client.get(proxy.url + "/warm") as response:
            assert response.status == 200  # leaves one pooled upstream connection
        async with client.request(method, proxy.url + "/x", data=body or None) as response:
            assert response.status == status
        assert len(heads) - 1 == attempts
    finally:
        server.close()
        await server.wait_closed()
