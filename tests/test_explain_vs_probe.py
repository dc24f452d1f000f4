"""`explain` (no network) and `probe` (a live request) must give the same walk.

A matrix of (config, origin, method, headers, credentials) cases runs through
``explain.explain`` with a config and through ``probe.probe`` against the real proxy started
from that same config (one proxy per config), in front of an upstream that answers every
request with permissive CORS headers of its own. Both return a ``browser.Walk``, compared
step by step: the same requests sent, the same statuses and CORS headers answered where the
proxy answers itself, the same verdict and reason. An enforced route must strip the
upstream's CORS headers (so the walks agree); a ``report_only`` route must pass them on (so
the live verdict follows the upstream, while ``explain`` judges the rules as if enforced and
says so).
"""

from __future__ import annotations

import asyncio
import itertools
import time

from aiohttp import web
from conftest import ProxyFactory, Upstream

from corsproxy.config.load import parse_settings
from corsproxy.engine import browser
from corsproxy.engine import headers as h
from corsproxy.engine.explain import LISTENER_METHODS, ProxyAnswer, explain
from corsproxy.engine.policy import Settings
from corsproxy.tools.probe import Reply, probe

PATH = "/api/orders"

CONFIGS = {
    "exact": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: [https://app.test, https://other.test]
  allow_methods: [GET, POST, PUT]
  allow_headers: [Content-Type, X-Token]
  expose_headers: [X-Request-ID]
""",
    "wildcard-credentials": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: ["https://*.app.test", "http://localhost:*"]
  allow_methods: [GET, POST, PATCH, DELETE]
  allow_headers: [Authorization, Content-Type]
  allow_credentials: true
  max_age: 600
""",
    "star-any": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: ["*"]
  allow_methods: ["*"]
  allow_headers: ["*"]
  expose_headers: ["*"]
""",
    "star-restricted": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: ["*"]
  allow_methods: [GET, PUT, patch]
  allow_headers: [X-Token]
""",
    "exact-credentials-reflect": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: [https://app.test, "null", {{regex: '^https://pr-[0-9]+\\.app\\.test$'}}]
  allow_methods: ["*"]
  allow_headers: ["*"]
  expose_headers: ["*"]
  allow_credentials: true
""",
    "forward-no-credentials": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: [https://app.test]
  allow_methods: [GET, PUT]
  allow_headers: [Content-Type]
  on_disallowed: forward
""",
    "report-only": """\
upstream: "{upstream}"
access_log: "off"
defaults:
  allow_origins: [https://app.test]
  allow_methods: [GET]
  report_only: true
""",
}

ORIGINS = (
    "https://app.test",
    "https://a.app.test",
    "https://pr-12.app.test",
    "https://evil.test",
    "http://localhost:5173",
    "null",
)
METHODS = ("GET", "POST", "PUT", "patch", "DELETE")
HEADER_SETS: tuple[tuple[tuple[str, str], ...], ...] = (
    (),
    (("Content-Type", "text/plain"),),
    (("Content-Type", "application/json"),),
    (("X-Token", "1"),),
    (("Authorization", "Bearer t"), ("Accept", "application/json")),
)
CREDENTIALS = (False, True)


async def permissive(request: web.BaseRequest) -> web.StreamResponse:
    """An upstream doing its own (over-permissive) CORS: it reflects whatever is asked."""
    out = {"X-Request-ID": "42"}
    origin = request.headers.get(h.ORIGIN)
    if origin is not None:
        out[h.AC_ALLOW_ORIGIN] = origin
        out[h.AC_ALLOW_CREDENTIALS] = "true"
        out[h.AC_EXPOSE_HEADERS] = "X-Request-ID"
    if request.method == "OPTIONS":
        out[h.AC_ALLOW_METHODS] = request.headers.get(h.AC_REQUEST_METHOD, "")
        out[h.AC_ALLOW_HEADERS] = request.headers.get(h.AC_REQUEST_HEADERS, "")
    return web.Response(text="ok", headers=out)


def requests() -> list[browser.Request]:
    return [
        browser.Request(origin, method, headers, credentials)
        for origin, method, headers, credentials in itertools.product(
            ORIGINS, METHODS, HEADER_SETS, CREDENTIALS
        )
    ]


def cors_headers(headers: browser.HeaderList) -> list[tuple[str, str]]:
    """What the browser's checks read of a response: Access-Control-* (and Vary)."""
    return [(n, v) for n, v in headers if n.lower().startswith("access-control-") or n == "Vary"]


def differences(
    explained: browser.Walk[ProxyAnswer], live: browser.Walk[Reply], enforced: bool
) -> list[str]:
    """Where two walks of one request part: always in what the browser sent; on an enforced
    route also in the verdict, its reason, and the answers the proxy makes itself."""
    out = []
    mine, theirs = [s.sent for s in explained.steps], [s.sent for s in live.steps]
    if not enforced:  # the walks may part at the preflight, never before
        mine, theirs = mine[: len(theirs)], theirs[: len(mine)]
    if mine != theirs:
        out.append(f"sent {mine} != {theirs}")
    if not enforced:
        return out
    if (explained.allowed, explained.reason) != (live.allowed, live.reason):
        out.append(
            f"verdict {explained.allowed} ({explained.reason}) != {live.allowed} ({live.reason})"
        )
    for ours, seen in zip(explained.steps, live.steps, strict=False):
        answer, got = ours.response, seen.response
        if answer.forwarded:
            if answer.expose_upstream:  # the proxy lists the upstream's names: not modelled
                continue
            if cors_headers(answer.headers) != cors_headers(got.headers):
                out.append(f"forwarded {answer.headers} != {got.headers}")
        elif (answer.status, cors_headers(answer.headers)) != (
            got.status,
            cors_headers(got.headers),
        ):
            out.append(f"answer {answer.status} {answer.headers} != {got}")
        if ours.max_age != seen.max_age:
            out.append(f"max_age {ours.max_age} != {seen.max_age}")
    return out


async def test_explain_agrees_with_probe_against_the_live_proxy(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    started = time.monotonic()
    upstream.handler = permissive
    upstream.read_body = False
    cases = requests()
    limit = asyncio.Semaphore(24)
    disagreements: list[str] = []
    checked = 0
    for name, text in CONFIGS.items():
        running = await make_proxy(text, upstream=upstream.url)
        settings, _ = parse_settings(text.format(upstream=upstream.url), f"{name}.yaml")
        host = f"127.0.0.1:{running.port}"
        url = f"http://{host}{PATH}"

        async def one(
            request: browser.Request,
            name: str = name,
            url: str = url,
            settings: Settings = settings,
            host: str = host,
        ) -> None:
            nonlocal checked
            ex = explain(settings, request, PATH, host)
            async with limit:
                live = await probe(url, request, timeout=10.0)
            checked += 1
            report_only = name == "report-only"
            assert ex.report_only is report_only
            found = differences(ex.walk, live.walk, enforced=not report_only)
            # report_only: the live verdict follows the upstream, which allows everything
            # that gets past the HTTP parser.
            reaches = browser.normalise_method(request.method) in LISTENER_METHODS
            if report_only and live.allowed is not reaches:
                found.append(f"report_only: live allowed={live.allowed}")
            if found:
                disagreements.append(f"{name}: {request}: " + "; ".join(found))

        await asyncio.gather(*(one(request) for request in cases))
        upstream.seen.clear()
    assert disagreements == [], "\n".join(disagreements[:20])
    assert checked == len(CONFIGS) * len(cases) >= 200
    assert time.monotonic() - started < 30


async def test_lowercase_method_is_refused_by_the_listener_and_explain_says_so(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """aiohttp's HTTP parser answers 400 to `patch` (browsers send it as written) before the
    proxy runs, whatever the rules say (method names are case-sensitive). `explain`
    models that, so the two agree; the fix it gives is to send `PATCH`."""
    text = CONFIGS["star-restricted"]
    running = await make_proxy(text, upstream=upstream.url)
    settings, _ = parse_settings(text.format(upstream=upstream.url), "star-restricted.yaml")
    request = browser.Request("https://app.test", "patch")
    host = f"127.0.0.1:{running.port}"
    ex = explain(settings, request, PATH, host)
    live = await probe(f"http://{host}{PATH}", request)
    assert ex.allowed is False and live.allowed is False
    assert differences(ex.walk, live.walk, enforced=True) == []
    assert ex.walk.actual is not None and ex.walk.actual.response.status == 400
    assert "HTTP parser refuses the method 'patch'" in ex.reason
    assert any("'PATCH'" in fix for fix in ex.fixes)


def test_the_matrix_has_both_verdicts() -> None:
    """A matrix where every case agreed trivially (all allowed, or all blocked) proves little."""
    outcomes: set[bool | None] = set()
    reasons: set[str] = set()
    for name, text in CONFIGS.items():
        if name == "report-only":
            continue
        settings, _ = parse_settings(text.format(upstream="http://127.0.0.1:9"), f"{name}.yaml")
        for request in requests():
            ex = explain(settings, request, PATH, "127.0.0.1:8080")
            outcomes.add(ex.allowed)
            reasons.add(ex.reason.split(" (")[0].split(":")[0])
    assert outcomes == {True, False}
    assert len(reasons) >= 4, reasons
