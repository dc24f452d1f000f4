"""What happens to a request, over real HTTP: the real proxy in front of a recording upstream.

Every table row names the rule it checks. ``assert_cors`` compares the WHOLE set of
Access-Control-* headers plus Vary, so a header the rule does not call for fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

import pytest
from aiohttp import web
from conftest import parse_head, raw_request
from procutil import closed_port
from yarl import URL

APP = "https://app.test"
EVIL = "https://evil.test"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

# Headers the upstream sends on every answer in this file: they must never reach the client
# unless the route leaves the upstream's headers alone (report_only, passthrough).
UPSTREAM_CORS = {
    "Access-Control-Allow-Origin": "https://upstream.test",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Expose-Headers": "X-Secret",
    "Access-Control-Allow-Methods": "DELETE",
}

CONFIG = """
upstream: {upstream}
defaults:
  allow_origins: [https://app.test]
routes:
  - path: /cred/**
    cors:
      allow_origins: [https://app.test]
      allow_methods: [GET, PUT]
      allow_headers: [X-Token, Content-Type]
      expose_headers: [X-Request-ID]
      allow_credentials: true
      max_age: 600
      allow_private_network: true
  - path: /plain/**
    cors:
      allow_origins: [https://app.test]
      allow_methods: [GET, POST]
  - path: /ok200/**
    cors:
      allow_origins: [https://app.test]
      preflight_status: 200
  - path: /star/**
    cors:
      allow_origins: ["*"]
      allow_methods: ["*"]
      allow_headers: ["*"]
      expose_headers: ["*"]
  - path: /reflect/**
    cors:
      allow_origins: [https://app.test]
      allow_methods: ["*"]
      allow_headers: ["*"]
      expose_headers: ["*"]
      allow_credentials: true
  - path: /forward/**
    cors:
      allow_origins: [https://app.test]
      on_disallowed: forward
  - path: /report/**
    cors:
      allow_origins: [https://app.test]
      report_only: true
  - path: /legacy/**
    cors: passthrough
"""

# Lists compared member by member (methods case-sensitive, header names not).
_LIST_HEADERS = {
    "access-control-allow-methods": False,
    "access-control-allow-headers": True,
    "access-control-expose-headers": True,
    "vary": True,
}


def _items(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(headers.items()) if hasattr(headers, "items") else list(headers)


def _members(value: str, fold: bool) -> list[str]:
    names = [item.strip() for item in value.split(",") if item.strip()]
    return [name.lower() for name in names] if fold else names


def assert_cors(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    expected: Mapping[str, str | set[str]],
) -> None:
    """Assert the whole set of Access-Control-* headers plus Vary, each sent exactly once.

    A ``set`` value means "a comma list of exactly these names, in any order".
    """
    got: dict[str, list[str]] = {}
    for name, value in _items(headers):
        lower = name.lower()
        if lower.startswith("access-control-") or lower == "vary":
            got.setdefault(lower, []).append(value)
    want = {name.lower(): value for name, value in expected.items()}
    assert sorted(got) == sorted(want), f"CORS headers differ: got {got}, want {want}"
    for name, value in want.items():
        values = got[name]
        assert len(values) == 1, f"{name} sent {len(values)} times: {values}"
        if isinstance(value, set):
            assert set(_members(values[0], True)) == {v.lower() for v in value}, (name, values)
        elif name in _LIST_HEADERS:
            fold = _LIST_HEADERS[name]
            assert _members(values[0], fold) == _members(value, fold), (name, values[0], value)
        else:
            assert values[0] == value, (name, values[0], value)


def assert_one_line_reason(content_type: str, body: bytes, words: Iterable[str]) -> None:
    assert content_type.startswith("text/plain"), content_type
    text = body.decode()
    line = text.removesuffix("\n")
    assert line, "empty refusal body"
    assert "\n" not in line and "\r" not in line, f"not one line: {text!r}"
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not named in {line!r}"


async def cors_upstream_handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(
        text="ok", headers={**UPSTREAM_CORS, "X-Upstream": "yes", "X-Request-ID": "42"}
    )


@pytest.fixture
async def proxy(upstream, make_proxy):
    upstream.handler = cors_upstream_handler
    return await make_proxy(CONFIG, upstream=upstream.url)


# --- 4.1 not a CORS request ------------------------------------------------------------

NOT_CORS = [
    pytest.param(False, {}, True, id="no-origin-is-not-cors"),
    pytest.param(
        False,
        {"Host": "site.test:8080", "Origin": "http://site.test:8080"},
        True,
        id="same-origin-by-host-header",
    ),
    pytest.param(
        False,
        {"Host": "site.test:80", "Origin": "http://site.test"},
        True,
        id="same-origin-default-port-in-host-counts-as-none",
    ),
    pytest.param(
        False,
        {"Host": "SITE.test", "Origin": "http://site.test"},
        True,
        id="same-origin-host-case-insensitive",
    ),
    pytest.param(
        False,
        {"Host": "site.test:8080", "Origin": "http://site.test"},
        False,
        id="other-port-is-cross-origin",
    ),
    pytest.param(
        False,
        {"Host": "site.test", "Origin": "https://site.test"},
        False,
        id="other-scheme-than-listener-is-cross-origin",
    ),
    pytest.param(
        False,
        {
            "Host": "127.0.0.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "site.test",
            "Origin": "https://site.test",
        },
        False,
        id="forwarded-headers-ignored-without-trust_forwarded",
    ),
    pytest.param(
        True,
        {
            "Host": "127.0.0.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "site.test",
            "Origin": "https://site.test",
        },
        True,
        id="trust_forwarded-proto-and-host-make-same-origin",
    ),
    pytest.param(
        True,
        {
            "Host": "127.0.0.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "site.test:443",
            "Origin": "https://site.test",
        },
        True,
        id="trust_forwarded-default-https-port-counts-as-none",
    ),
    pytest.param(
        True,
        {"Host": "site.test", "X-Forwarded-Proto": "https", "Origin": "https://site.test"},
        True,
        id="trust_forwarded-proto-only-host-from-host-header",
    ),
    pytest.param(
        True,
        {
            "Host": "site.test",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "other.test",
            "Origin": "https://site.test",
        },
        False,
        id="trust_forwarded-host-replaces-host-header",
    ),
]


@pytest.mark.parametrize(("trust", "headers", "same_origin"), NOT_CORS)
async def test_not_cors_classification(upstream, make_proxy, client, trust, headers, same_origin):
    upstream.handler = cors_upstream_handler
    text = ("trust_forwarded: true\n" if trust else "") + CONFIG
    proxy = await make_proxy(text, upstream=upstream.url)
    async with client.get(proxy.url + "/plain/x", headers=headers) as r:
        body = await r.read()
        if same_origin:
            # Forwarded; the upstream's Access-Control-* removed, only Vary: Origin added.
            assert r.status == 200
            assert body == b"ok"
            assert len(upstream.seen) == 1
        else:
            # Judged as cross-origin: the origin is not allowed, so it is refused.
            assert r.status == 403
            assert_one_line_reason(r.headers["Content-Type"], body, ["origin"])
            assert upstream.seen == []
        assert_cors(r.headers, {"Vary": "Origin"})


# --- 4.2 preflight, allowed ---------------------------------------------------------------

PREFLIGHT_ALLOWED = [
    pytest.param(
        "/cred/x",
        {"Access-Control-Request-Method": "PUT"},
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "GET, PUT",
            "Access-Control-Max-Age": "600",
            "Vary": PREFLIGHT_VARY,
        },
        id="credentials-and-max-age-no-allow-headers-when-none-requested",
    ),
    pytest.param(
        "/cred/x",
        {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-token,content-type",
        },
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "GET, PUT",
            "Access-Control-Allow-Headers": "X-Token, Content-Type",
            "Access-Control-Max-Age": "600",
            "Vary": PREFLIGHT_VARY,
        },
        id="requested-headers-answered-with-configured-list",
    ),
    pytest.param(
        "/cred/x",
        {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-TOKEN"},
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "GET, PUT",
            "Access-Control-Allow-Headers": "X-Token, Content-Type",
            "Access-Control-Max-Age": "600",
            "Vary": PREFLIGHT_VARY,
        },
        id="requested-header-names-case-insensitive",
    ),
    pytest.param(
        "/cred/x",
        {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Private-Network": "true",
        },
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "GET, PUT",
            "Access-Control-Max-Age": "600",
            "Access-Control-Allow-Private-Network": "true",
            "Vary": PREFLIGHT_VARY,
        },
        id="private-network-asked-and-allowed",
    ),
    pytest.param(
        "/plain/x",
        {"Access-Control-Request-Method": "POST"},
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Methods": "GET, POST",
            "Vary": PREFLIGHT_VARY,
        },
        id="no-credentials-no-max-age-headers-when-not-configured",
    ),
    pytest.param(
        "/ok200/x",
        {"Access-Control-Request-Method": "GET"},
        200,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Methods": "GET, HEAD, POST",
            "Vary": PREFLIGHT_VARY,
        },
        id="preflight_status-used-and-builtin-methods",
    ),
    pytest.param(
        "/star/x",
        {
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "x-foo, authorization",
        },
        204,
        {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "PATCH",
            "Access-Control-Allow-Headers": "x-foo, authorization",
            "Vary": PREFLIGHT_VARY,
        },
        id="star-route-literal-star-origin-reflects-method-and-headers",
    ),
    pytest.param(
        "/reflect/x",
        {
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization,x-b",
        },
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "DELETE",
            "Access-Control-Allow-Headers": "authorization, x-b",
            "Vary": PREFLIGHT_VARY,
        },
        id="star-methods-and-headers-reflected-with-credentials",
    ),
]


@pytest.mark.parametrize(("path", "headers", "status", "expected"), PREFLIGHT_ALLOWED)
async def test_preflight_allowed(proxy, upstream, client, path, headers, status, expected):
    origin = "https://any.test" if path.startswith("/star") else APP
    async with client.options(proxy.url + path, headers={"Origin": origin, **headers}) as r:
        assert r.status == status
        assert await r.read() == b""
        assert_cors(r.headers, expected)
    assert upstream.seen == [], "a preflight must never reach the upstream"


# --- 4.2 preflight, refused ---------------------------------------------------------------

PREFLIGHT_REFUSED = [
    pytest.param(
        "/cred/x",
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
        ["origin", EVIL],
        id="origin-not-allowed",
    ),
    pytest.param(
        "/cred/x",
        {"Origin": APP, "Access-Control-Request-Method": "DELETE"},
        ["method", "DELETE"],
        id="method-not-allowed",
    ),
    pytest.param(
        "/cred/x",
        {"Origin": APP, "Access-Control-Request-Method": "get"},
        ["method", "get"],
        id="method-names-case-sensitive",
    ),
    pytest.param(
        "/cred/x",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-token, x-evil",
        },
        ["header", "x-evil"],
        id="one-requested-header-not-allowed-is-named",
    ),
    pytest.param(
        "/plain/x",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Private-Network": "true",
        },
        ["private network"],
        id="private-network-asked-not-allowed",
    ),
    pytest.param(
        "/forward/x",
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
        ["origin"],
        id="on_disallowed-forward-never-forwards-a-preflight",
    ),
]


@pytest.mark.parametrize(("path", "headers", "words"), PREFLIGHT_REFUSED)
async def test_preflight_refused(proxy, upstream, client, path, headers, words):
    async with client.options(proxy.url + path, headers=headers) as r:
        assert r.status == 403
        assert_one_line_reason(r.headers["Content-Type"], await r.read(), words)
        assert_cors(r.headers, {"Vary": PREFLIGHT_VARY})
    assert upstream.seen == [], "a preflight must never reach the upstream"


# --- 4.3 actual requests ------------------------------------------------------------------

# The names an upstream aiohttp server sends with cors_upstream_handler, minus its
# Access-Control-* ones: what "expose_headers: ['*'] with credentials" must list.
UPSTREAM_NAMES = {"Content-Type", "Content-Length", "Date", "Server", "X-Upstream", "X-Request-ID"}

ACTUAL = [
    pytest.param(
        "GET",
        "/plain/x",
        APP,
        200,
        {"Access-Control-Allow-Origin": APP, "Vary": "Origin"},
        id="allowed-origin-gets-acao-and-upstream-cors-stripped",
    ),
    pytest.param(
        "GET",
        "/cred/x",
        APP,
        200,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": "X-Request-ID",
            "Vary": "Origin",
        },
        id="allowed-with-credentials-and-configured-expose-headers",
    ),
    pytest.param(
        "GET",
        "/plain/x",
        None,
        200,
        {"Vary": "Origin"},
        id="no-origin-upstream-cors-stripped-vary-origin-added",
    ),
    pytest.param(
        "GET",
        "/star/x",
        "https://any.test",
        200,
        {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "*"},
        id="star-route-literal-star-no-vary-expose-star-without-credentials",
    ),
    pytest.param(
        "GET",
        "/star/x",
        "null",
        200,
        {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "*"},
        id="star-route-allows-null-origin",
    ),
    pytest.param("GET", "/star/x", None, 200, {}, id="star-route-no-origin-no-vary"),
    pytest.param(
        "GET",
        "/reflect/x",
        APP,
        200,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": UPSTREAM_NAMES,
            "Vary": "Origin",
        },
        id="expose-star-with-credentials-lists-upstream-header-names",
    ),
    pytest.param(
        "OPTIONS",
        "/reflect/x",
        APP,
        200,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": UPSTREAM_NAMES,
            "Vary": "Origin",
        },
        id="options-without-request-method-is-an-actual-request",
    ),
    pytest.param(
        "GET",
        "/plain/x",
        EVIL,
        403,
        {"Vary": "Origin"},
        id="origin-not-allowed-rejected",
    ),
    pytest.param(
        "DELETE",
        "/plain/x",
        APP,
        403,
        {"Vary": "Origin"},
        id="method-not-allowed-rejected",
    ),
    pytest.param(
        "GET",
        "/forward/x",
        EVIL,
        200,
        {"Vary": "Origin"},
        id="on_disallowed-forward-forwards-without-cors-headers",
    ),
    pytest.param(
        "GET",
        "/forward/x",
        APP,
        200,
        {"Access-Control-Allow-Origin": APP, "Vary": "Origin"},
        id="on_disallowed-forward-allowed-origin-normal",
    ),
]


@pytest.mark.parametrize(("method", "path", "origin", "status", "expected"), ACTUAL)
async def test_actual_request(proxy, upstream, client, method, path, origin, status, expected):
    headers = {"Origin": origin} if origin else {}
    async with client.request(method, proxy.url + path, headers=headers) as r:
        body = await r.read()
        assert r.status == status
        assert_cors(r.headers, expected)
        if status == 403:
            word = "origin" if origin == EVIL else method
            assert_one_line_reason(r.headers["Content-Type"], body, [word])
            assert upstream.seen == [], "a rejected request must not be forwarded"
        else:
            assert body == b"ok"
            assert [s.method for s in upstream.seen] == [method]
            assert r.headers["X-Request-ID"] == "42"


VARY_MERGE = [
    pytest.param(["Accept-Encoding"], "Accept-Encoding, Origin", id="origin-appended"),
    pytest.param(["origin"], "origin", id="no-duplicate-case-insensitive"),
    pytest.param(["Accept-Encoding, Origin"], "Accept-Encoding, Origin", id="already-there"),
    pytest.param(["Accept", "Cookie"], "Accept, Cookie, Origin", id="several-vary-headers-merged"),
    pytest.param(["*"], "*", id="vary-star-left-alone"),
]


@pytest.mark.parametrize("origin", [APP, None], ids=["allowed-origin", "no-origin"])
@pytest.mark.parametrize(("upstream_vary", "expected_vary"), VARY_MERGE)
async def test_vary_merged_with_upstream(
    upstream, make_proxy, client, upstream_vary, expected_vary, origin
):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(text="ok")
        for value in upstream_vary:
            response.headers.add("Vary", value)
        return response

    upstream.handler = handler
    proxy = await make_proxy(CONFIG, upstream=upstream.url)
    headers = {"Origin": origin} if origin else {}
    async with client.get(proxy.url + "/plain/x", headers=headers) as r:
        assert r.status == 200
        expected = {"Vary": expected_vary}
        if origin:
            expected["Access-Control-Allow-Origin"] = origin
        assert_cors(r.headers, expected)


async def test_two_origin_headers_get_400(proxy, upstream):
    raw = await raw_request(
        proxy.port,
        b"GET /plain/x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.test\r\n"
        b"Origin: https://evil.test\r\nConnection: close\r\n\r\n",
    )
    status, headers, _ = parse_head(raw)
    assert status == 400
    assert not [k for k, _ in headers if k.lower().startswith("access-control-")]
    assert upstream.seen == []


# --- report_only and passthrough: the upstream's own headers stand ---------------------------

UNTOUCHED = [
    pytest.param(
        "OPTIONS",
        "/report/x",
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
        id="report_only-forwards-refusable-preflight",
    ),
    pytest.param(
        "OPTIONS",
        "/report/x",
        {"Origin": APP, "Access-Control-Request-Method": "GET"},
        id="report_only-forwards-allowable-preflight",
    ),
    pytest.param("GET", "/report/x", {"Origin": EVIL}, id="report_only-forwards-disallowed"),
    pytest.param("GET", "/report/x", {"Origin": APP}, id="report_only-allowed-untouched"),
    pytest.param("GET", "/report/x", {}, id="report_only-no-origin-untouched"),
    pytest.param(
        "OPTIONS",
        "/legacy/x",
        {"Origin": EVIL, "Access-Control-Request-Method": "PUT"},
        id="passthrough-forwards-preflight",
    ),
    pytest.param("GET", "/legacy/x", {"Origin": EVIL}, id="passthrough-upstream-cors-stands"),
    pytest.param("GET", "/legacy/x", {}, id="passthrough-no-origin-untouched"),
]


@pytest.mark.parametrize(("method", "path", "headers"), UNTOUCHED)
async def test_upstream_decides(proxy, upstream, client, method, path, headers):
    async with client.request(method, proxy.url + path, headers=headers) as r:
        assert r.status == 200
        assert await r.read() == b"ok"
        assert_cors(r.headers, UPSTREAM_CORS)
    assert len(upstream.seen) == 1
    seen = upstream.seen[0]
    assert seen.method == method
    for name, value in headers.items():
        assert seen.header(name) == value, f"{name} not forwarded as sent"


# --- errors the proxy makes itself ---------------------------------------------------------

ERROR_CONFIG = {
    "bad-path-400": ("upstream: {upstream}\n", "/a%2Fb"),
    "no-route-404": ("routes:\n  - path: /api/**\n    upstream: {upstream}\n", "/nothing"),
    "unreachable-502": ("upstream: http://127.0.0.1:{closed}\n", "/x"),
    "slow-504": ("upstream: {upstream}\ntimeouts:\n  read: 0.3\n", "/x"),
}
ERROR_STATUS = {"bad-path-400": 400, "no-route-404": 404, "unreachable-502": 502, "slow-504": 504}
ERROR_POLICY = """defaults:
  allow_origins: [https://app.test]
  allow_credentials: true
  on_disallowed: forward
"""


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        pytest.param(
            APP,
            {
                "Access-Control-Allow-Origin": APP,
                "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin",
            },
            id="allowed-origin-gets-cors-headers",
        ),
        pytest.param(EVIL, {"Vary": "Origin"}, id="disallowed-origin-gets-none"),
    ],
)
@pytest.mark.parametrize("case", list(ERROR_CONFIG))
async def test_proxy_made_errors(upstream, make_proxy, client, case, origin, expected):
    release = asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        # Never raise TimeoutError here: aiohttp's server would answer 504 itself.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 10)
        return web.Response(text="late")

    upstream.handler = slow
    closed = closed_port()
    template, path = ERROR_CONFIG[case]
    proxy = await make_proxy(template + ERROR_POLICY, upstream=upstream.url, closed=str(closed))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        url = URL(proxy.url + path, encoded=True)
        async with client.get(url, headers={"Origin": origin}) as r:
            body = (await r.read()).decode()
            assert r.status == ERROR_STATUS[case]
            assert_cors(r.headers, expected)
    finally:
        release.set()
    assert loop.time() - started < 3, "the proxy must give up after timeouts.read"
    for port in (upstream.port, closed):
        assert f"127.0.0.1:{port}" not in body and str(port) not in body, body
    if case == "bad-path-400":
        assert upstream.seen == []
