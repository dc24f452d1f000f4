"""The browser model (corsproxy/engine/browser.py) against the Fetch Standard, rule by rule.

Every case's id names the Fetch rule it checks (https://fetch.spec.whatwg.org/):
"safelisted-header", "normalize-method", "forbidden-request-header", "unsafe-names",
"preflight-request", "cors-check", "preflight-fetch", "exposed-headers", "max-age", and
``walk``, the steps of one fetch() that explain and probe both drive ("main fetch").
Pure: no network, no event loop.
"""

from __future__ import annotations

import pytest

from corsproxy.engine import browser
from corsproxy.engine.browser import Request

ORIGIN = "https://app.test"
P = pytest.param

# --- Fetch "CORS-safelisted request-header": name AND value -----------------------------------

UNSAFE_BYTES = [b for b in range(0x20) if b != 0x09] + [ord(c) for c in '"():<>?@[\\]{}'] + [0x7F]

SAFELISTED = [
    P("Accept", "application/json", True, id="safelisted-header:accept-plain"),
    P("Accept", "text/html,*/*;q=0.8", True, id="safelisted-header:accept-list"),
    P("Accept", "a\tb", True, id="safelisted-header:accept-tab-is-not-unsafe"),
    P("Accept", "\xe9" * 100, True, id="safelisted-header:accept-non-ascii-byte-allowed"),
    *[
        P("Accept", f"a{chr(b)}b", False, id=f"safelisted-header:accept-unsafe-byte-0x{b:02x}")
        for b in UNSAFE_BYTES
    ],
    P("Accept-Language", "en-US,en;q=0.9", True, id="safelisted-header:accept-language-ok"),
    P("Accept-Language", "*", True, id="safelisted-header:accept-language-star"),
    P("Accept-Language", "en_US", False, id="safelisted-header:accept-language-underscore"),
    P("Accept-Language", "en/US", False, id="safelisted-header:accept-language-slash"),
    P("Accept-Language", "fr\xe9", False, id="safelisted-header:accept-language-non-ascii"),
    P("Content-Language", "de-CH", True, id="safelisted-header:content-language-ok"),
    P("Content-Language", "de!", False, id="safelisted-header:content-language-bang"),
    P("Content-Type", "text/plain", True, id="safelisted-header:content-type-text-plain"),
    P(
        "Content-Type",
        "application/x-www-form-urlencoded",
        True,
        id="safelisted-header:content-type-urlencoded",
    ),
    P(
        "Content-Type",
        "multipart/form-data; boundary=----x",
        True,
        id="safelisted-header:content-type-multipart-with-boundary",
    ),
    P(
        "Content-Type",
        "text/plain;charset=utf-8",
        True,
        id="safelisted-header:content-type-essence-ignores-parameters",
    ),
    P(
        "Content-Type",
        "TEXT/Plain; Charset=UTF-8",
        True,
        id="safelisted-header:content-type-essence-case-insensitive",
    ),
    P("Content-Type", "text/plain;", True, id="safelisted-header:content-type-empty-parameter"),
    P("Content-Type", "text/plain ;a=b", True, id="safelisted-header:content-type-ows-before-;"),
    P("Content-Type", "application/json", False, id="safelisted-header:content-type-json"),
    P("Content-Type", "text/html", False, id="safelisted-header:content-type-other-essence"),
    P(
        "Content-Type",
        'text/plain; charset="utf-8"',
        False,
        id="safelisted-header:content-type-quote-is-unsafe-byte",
    ),
    P(
        "Content-Type",
        "text/plain, application/json",
        False,
        id="safelisted-header:content-type-not-a-mime-type",
    ),
    P(
        "Content-Type",
        "text/plain\xa0",
        False,
        id="safelisted-header:content-type-nbsp-is-not-http-whitespace",
    ),
    P("Accept", "a" * 128, True, id="safelisted-header:value-128-bytes-ok"),
    P("Accept", "a" * 129, False, id="safelisted-header:value-129-bytes-too-long"),
    P(
        "Content-Type",
        "text/plain;a=" + "b" * 115,
        True,
        id="safelisted-header:content-type-128-bytes-ok",
    ),
    P(
        "Content-Type",
        "text/plain;a=" + "b" * 116,
        False,
        id="safelisted-header:content-type-129-bytes-too-long",
    ),
    P("Accept-Language", "e" * 129, False, id="safelisted-header:language-129-bytes-too-long"),
    P("Range", "bytes=0-", True, id="safelisted-header:range-open-end"),
    P("Range", "bytes=0-499", True, id="safelisted-header:range-start-end"),
    P("Range", "bytes=5-5", True, id="safelisted-header:range-start-equals-end"),
    P("Range", "bytes=500-499", False, id="safelisted-header:range-start-after-end"),
    P("Range", "bytes=-500", False, id="safelisted-header:range-suffix-not-safelisted"),
    P("Range", "bytes=0-1,3-4", False, id="safelisted-header:range-multiple-ranges"),
    P("Range", "Bytes=0-1", False, id="safelisted-header:range-unit-case-sensitive"),
    P("Range", "bytes =0-1", False, id="safelisted-header:range-no-whitespace"),
    P("Range", "items=0-1", False, id="safelisted-header:range-other-unit"),
    P("Range", "bytes=\xb2-", False, id="safelisted-header:range-ascii-digits-only"),
    P("Range", "bytes=0-\u0661", False, id="safelisted-header:range-ascii-digits-only-end"),
    P("X-Custom", "1", False, id="safelisted-header:other-name"),
    P("Authorization", "Bearer x", False, id="safelisted-header:authorization-never"),
    P("DPR", "2", False, id="safelisted-header:client-hints-no-longer"),
    P("Last-Event-ID", "1", False, id="safelisted-header:last-event-id-no-longer"),
]


@pytest.mark.parametrize(("name", "value", "expected"), SAFELISTED)
def test_safelisted_request_header(name: str, value: str, expected: bool) -> None:
    assert browser.is_safelisted_request_header(name, value) is expected
    assert browser.is_safelisted_request_header(name.lower(), value) is expected


# --- Fetch "normalize" a method, "CORS-safelisted method", "forbidden method" ----------------

METHODS = [
    P("get", "GET", False, id="normalize-method:get-uppercased"),
    P("Post", "POST", False, id="normalize-method:post-uppercased-safelisted"),
    P("head", "HEAD", False, id="normalize-method:head-uppercased"),
    P("delete", "DELETE", True, id="normalize-method:delete-uppercased"),
    P("Put", "PUT", True, id="normalize-method:put-uppercased"),
    P("options", "OPTIONS", True, id="normalize-method:options-uppercased-not-safelisted"),
    P("patch", "patch", True, id="normalize-method:patch-stays-lowercase"),
    P("Patch", "Patch", True, id="normalize-method:patch-case-kept"),
    P("PATCH", "PATCH", True, id="normalize-method:patch-uppercase"),
    P("propfind", "propfind", True, id="normalize-method:other-method-kept"),
]


@pytest.mark.parametrize(("asked", "sent", "preflight"), METHODS)
def test_method_normalised_and_safelisted(asked: str, sent: str, preflight: bool) -> None:
    planned = browser.plan(Request(ORIGIN, asked))
    assert planned.method == sent
    assert planned.preflight is preflight
    if preflight:
        assert (("Access-Control-Request-Method", sent)) in planned.preflight_headers(ORIGIN)
        assert any(sent in reason for reason in planned.reasons)


@pytest.mark.parametrize(
    "method",
    [
        P("TRACE", id="forbidden-method:trace"),
        P("connect", id="forbidden-method:connect-any-case"),
        P("Track", id="forbidden-method:track-any-case"),
    ],
)
def test_forbidden_method_sends_nothing(method: str) -> None:
    planned = browser.plan(Request(ORIGIN, method, (("X-A", "1"),)))
    assert planned.forbidden_method
    assert not planned.preflight
    assert planned.headers == ()


# --- Fetch "forbidden request-header": dropped by fetch(), never in ACRH ---------------------

FORBIDDEN = [
    P("Cookie", "a=b", id="forbidden-request-header:cookie"),
    P("Host", "evil.test", id="forbidden-request-header:host"),
    P("Origin", "https://evil.test", id="forbidden-request-header:origin"),
    P("Referer", "https://x.test/", id="forbidden-request-header:referer"),
    P("Content-Length", "5", id="forbidden-request-header:content-length"),
    P("Accept-Encoding", "gzip", id="forbidden-request-header:accept-encoding"),
    P("Access-Control-Request-Method", "PUT", id="forbidden-request-header:acrm"),
    P("Set-Cookie", "a=b", id="forbidden-request-header:set-cookie"),
    P("Sec-Fetch-Mode", "cors", id="forbidden-request-header:sec-prefix"),
    P("Proxy-Authorization", "x", id="forbidden-request-header:proxy-prefix"),
    P("X-HTTP-Method-Override", "TRACE", id="forbidden-request-header:override-trace"),
    P("x-http-method", "GET, connect", id="forbidden-request-header:override-list-with-connect"),
    P("X-Method-Override", " track ", id="forbidden-request-header:override-normalised-value"),
]


@pytest.mark.parametrize(("name", "value"), FORBIDDEN)
def test_forbidden_request_header_dropped(name: str, value: str) -> None:
    planned = browser.plan(Request(ORIGIN, "GET", ((name, value), ("Accept", "text/plain"))))
    assert planned.dropped == (name,)
    assert planned.headers == (("Accept", "text/plain"),)
    assert not planned.preflight  # a dropped header cannot cause a preflight
    assert planned.unsafe_names == ()


@pytest.mark.parametrize(
    "value",
    [
        P("PATCH", id="forbidden-request-header:override-allowed-method"),
        P("GETTRACE", id="forbidden-request-header:override-not-a-forbidden-method"),
        P('",TRACE",', id="forbidden-request-header:override-quoted-comma"),
    ],
)
def test_method_override_with_allowed_value_is_sent_and_unsafe(value: str) -> None:
    planned = browser.plan(Request(ORIGIN, "POST", (("X-HTTP-Method-Override", value),)))
    assert planned.dropped == ()
    assert planned.unsafe_names == ("x-http-method-override",)
    assert planned.preflight


# --- Fetch "CORS-unsafe request-header names" and the CORS-preflight request ----------------

UNSAFE_NAMES = [
    P(
        (("X-Zeta", "1"), ("X-Alpha", "2"), ("Content-Type", "application/json")),
        "content-type,x-alpha,x-zeta",
        id="unsafe-names:lowercase-sorted-comma-no-space",
    ),
    P((("X-A", "1"), ("x-a", "2")), "x-a", id="unsafe-names:duplicates-once"),
    P(
        (("Accept", "text/plain"), ("X-B", "1")),
        "x-b",
        id="unsafe-names:safelisted-names-left-out",
    ),
    P((("Authorization", "Bearer t"),), "authorization", id="unsafe-names:authorization"),
    P((("Range", "bytes=-5"),), "range", id="unsafe-names:suffix-range"),
    P((("Accept", "a" * 129),), "accept", id="unsafe-names:128-byte-value-limit"),
    P(
        tuple(("Accept", "a" * 128) for _ in range(8)),
        None,
        id="unsafe-names:1024-bytes-total-still-safe",
    ),
    P(
        (*(("Accept", "a" * 128) for _ in range(8)), ("Content-Language", "e")),
        "accept,content-language",
        id="unsafe-names:over-1024-bytes-makes-safelisted-unsafe",
    ),
    P(
        (*(("Accept", "\xe9" * 128) for _ in range(8)),),
        None,
        id="unsafe-names:1024-limit-counts-bytes-not-utf8",
    ),
    P(
        (("Content-Type", "  text/plain\t"),),
        None,
        id="unsafe-names:values-normalised-before-checks",
    ),
]


@pytest.mark.parametrize(("headers", "acrh"), UNSAFE_NAMES)
def test_unsafe_names_and_access_control_request_headers(
    headers: tuple[tuple[str, str], ...], acrh: str | None
) -> None:
    planned = browser.plan(Request(ORIGIN, "GET", headers, credentials=True))
    assert planned.preflight is (acrh is not None)
    sent = dict(planned.preflight_headers(ORIGIN))
    assert sent.get("Access-Control-Request-Headers") == acrh
    if acrh:
        assert planned.unsafe_names == tuple(acrh.split(","))


def test_preflight_request_headers_exact() -> None:
    """Fetch "CORS-preflight fetch" steps 1-5: Origin, Accept */*, ACRM, ACRH; no credentials."""
    request = Request(
        ORIGIN, "put", (("X-A", "1"), ("Authorization", "Bearer t"), ("Cookie", "c=1")), True
    )
    planned = browser.plan(request)
    assert planned.preflight_headers(ORIGIN) == (
        ("Origin", ORIGIN),
        ("Accept", "*/*"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "authorization,x-a"),
    )
    assert planned.headers == (("X-A", "1"), ("Authorization", "Bearer t"))


def test_preflight_request_without_unsafe_headers_has_no_acrh() -> None:
    planned = browser.plan(Request(ORIGIN, "DELETE"))
    assert [n for n, _ in planned.preflight_headers(ORIGIN)] == [
        "Origin",
        "Accept",
        "Access-Control-Request-Method",
    ]


# --- Fetch "CORS check" ------------------------------------------------------------------------

CORS_CHECK = [
    P(ORIGIN, False, [("Access-Control-Allow-Origin", ORIGIN)], "", id="cors-check:exact-match"),
    P(ORIGIN, False, [], "no Access-Control-Allow-Origin", id="cors-check:absent"),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", "https://APP.test")],
        "not the page's origin",
        id="cors-check:byte-compare-wrong-case",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", ORIGIN + "/")],
        "not the page's origin",
        id="cors-check:byte-compare-trailing-slash",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", ORIGIN + ":443")],
        "not the page's origin",
        id="cors-check:byte-compare-default-port",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", "http://app.test")],
        "not the page's origin",
        id="cors-check:byte-compare-scheme",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Origin", ORIGIN)],
        "several values",
        id="cors-check:two-headers-combined-fail",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", f"{ORIGIN}, https://b.test")],
        "several values",
        id="cors-check:list-in-one-header-fails",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Origin", "*")],
        "several values",
        id="cors-check:two-stars-fail",
    ),
    P(ORIGIN, False, [("Access-Control-Allow-Origin", "")], "is ''", id="cors-check:empty"),
    P(ORIGIN, False, [("Access-Control-Allow-Origin", "*")], "", id="cors-check:star-no-creds"),
    P(
        ORIGIN,
        True,
        [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Credentials", "true")],
        "'*'",
        id="cors-check:star-with-credentials-fails",
    ),
    P("null", False, [("Access-Control-Allow-Origin", "null")], "", id="cors-check:null-origin"),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", "null")],
        "not the page's origin",
        id="cors-check:null-is-not-an-origin",
    ),
    P(
        ORIGIN,
        True,
        [("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "true")],
        "",
        id="cors-check:credentials-acac-true",
    ),
    P(
        ORIGIN,
        True,
        [("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "True")],
        "Access-Control-Allow-Credentials is 'True'",
        id="cors-check:credentials-acac-True-case-sensitive",
    ),
    P(
        ORIGIN,
        True,
        [("Access-Control-Allow-Origin", ORIGIN)],
        "Access-Control-Allow-Credentials is absent",
        id="cors-check:credentials-acac-absent",
    ),
    P(
        ORIGIN,
        True,
        [
            ("Access-Control-Allow-Origin", ORIGIN),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Credentials", "true"),
        ],
        "Access-Control-Allow-Credentials",
        id="cors-check:credentials-acac-twice",
    ),
    P(
        ORIGIN,
        False,
        [("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "True")],
        "",
        id="cors-check:acac-ignored-without-credentials",
    ),
    P(
        ORIGIN,
        False,
        [("access-control-allow-origin", ORIGIN)],
        "",
        id="cors-check:header-name-case-insensitive",
    ),
]


@pytest.mark.parametrize(("origin", "credentials", "headers", "why"), CORS_CHECK)
def test_cors_check(origin: str, credentials: bool, headers: list, why: str) -> None:
    verdict = browser.cors_check(Request(origin, credentials=credentials), headers)
    assert verdict.ok is (why == ""), verdict
    assert why in verdict.reason
    assert "CORS check" in verdict.rule


# --- Fetch "CORS-preflight fetch": judging the preflight response -----------------------------


def acao(*extra: tuple[str, str], credentials: bool = False) -> list[tuple[str, str]]:
    out = [("Access-Control-Allow-Origin", ORIGIN)]
    if credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    return out + list(extra)


ACAM = "Access-Control-Allow-Methods"
ACAH = "Access-Control-Allow-Headers"
XA = (("X-A", "1"),)
AUTH = (("Authorization", "Bearer t"),)

PREFLIGHT = [
    P("PUT", XA, False, 200, acao((ACAM, "PUT"), (ACAH, "x-a")), "", id="preflight-fetch:200"),
    P("PUT", XA, False, 204, acao((ACAM, "PUT"), (ACAH, "x-a")), "", id="preflight-fetch:204"),
    P("PUT", XA, False, 299, acao((ACAM, "PUT"), (ACAH, "x-a")), "", id="preflight-fetch:299"),
    *[
        P(
            "PUT",
            XA,
            False,
            status,
            acao((ACAM, "PUT"), (ACAH, "x-a")),
            "not an ok status",
            id=f"preflight-fetch:status-{status}-not-ok",
        )
        for status in (300, 301, 302, 307, 403, 404, 500)
    ],
    P(
        "PUT",
        XA,
        False,
        204,
        [(ACAM, "PUT"), (ACAH, "x-a")],
        "preflight: no Access-Control-Allow-Origin",
        id="preflight-fetch:cors-check-on-preflight",
    ),
    P(
        "PUT",
        XA,
        True,
        204,
        acao((ACAM, "PUT"), (ACAH, "x-a")),
        "Access-Control-Allow-Credentials",
        id="preflight-fetch:credentials-need-acac-on-preflight",
    ),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, "GET, POST")),
        "method PUT is not in Access-Control-Allow-Methods",
        id="preflight-fetch:method-not-listed",
    ),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, "")),
        "Access-Control-Allow-Methods",
        id="preflight-fetch:empty-acam-lists-nothing",
    ),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, "put")),
        "method PUT is not in",
        id="preflight-fetch:method-compare-case-sensitive",
    ),
    P(
        "patch",
        (),
        False,
        204,
        acao((ACAM, "PATCH")),
        "method patch is not in",
        id="preflight-fetch:patch-not-matched-by-PATCH",
    ),
    P("patch", (), False, 204, acao((ACAM, "patch")), "", id="preflight-fetch:patch-listed"),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, "GET"), (ACAM, "PUT")),
        "",
        id="preflight-fetch:method-lists-from-two-headers",
    ),
    P("DELETE", (), False, 204, acao((ACAM, "*")), "", id="preflight-fetch:method-star-no-creds"),
    P(
        "DELETE",
        (),
        True,
        204,
        acao((ACAM, "*"), credentials=True),
        "'*' does not count with credentials",
        id="preflight-fetch:method-star-literal-with-creds",
    ),
    P(
        "DELETE",
        (),
        True,
        204,
        acao((ACAM, "DELETE"), credentials=True),
        "",
        id="preflight-fetch:method-listed-with-creds",
    ),
    P(
        "POST",
        XA,
        False,
        204,
        acao((ACAH, "x-a")),
        "",
        id="preflight-fetch:safelisted-method-need-not-be-listed",
    ),
    P(
        "GET",
        XA,
        False,
        204,
        acao((ACAM, "PUT"), (ACAH, "x-a")),
        "",
        id="preflight-fetch:safelisted-method-need-not-be-listed-get",
    ),
    P(
        "GET",
        XA,
        False,
        204,
        acao((ACAM, "GET")),
        "header x-a is not in Access-Control-Allow-Headers",
        id="preflight-fetch:header-not-listed",
    ),
    P("GET", XA, False, 204, acao((ACAH, "X-A")), "", id="preflight-fetch:header-case-insensitive"),
    P(
        "GET",
        (("X-A", "1"), ("X-B", "2")),
        False,
        204,
        acao((ACAH, "x-a"), (ACAH, "x-b")),
        "",
        id="preflight-fetch:header-lists-from-two-headers",
    ),
    P("GET", XA, False, 204, acao((ACAH, "*")), "", id="preflight-fetch:header-star-no-creds"),
    P(
        "GET",
        XA,
        True,
        204,
        acao((ACAH, "*"), credentials=True),
        "'*' does not count with credentials",
        id="preflight-fetch:header-star-literal-with-creds",
    ),
    P(
        "GET",
        AUTH,
        False,
        204,
        acao((ACAH, "*")),
        "authorization must be listed by name",
        id="preflight-fetch:authorization-never-covered-by-star",
    ),
    P(
        "GET",
        AUTH,
        False,
        204,
        acao((ACAH, "*, Authorization")),
        "",
        id="preflight-fetch:authorization-listed-with-star",
    ),
    P(
        "GET",
        AUTH,
        True,
        204,
        acao((ACAH, "authorization"), credentials=True),
        "",
        id="preflight-fetch:authorization-listed-with-creds",
    ),
    P(
        "POST",
        (("Content-Type", "application/json"),),
        False,
        204,
        acao((ACAH, "x-a")),
        "header content-type is not in",
        id="preflight-fetch:unsafe-content-type-must-be-listed",
    ),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, "GET PUT")),
        "not a token",
        id="preflight-fetch:invalid-method-token-fails",
    ),
    P(
        "GET",
        XA,
        False,
        204,
        acao((ACAH, "x-a; y")),
        "not a token",
        id="preflight-fetch:invalid-header-token-fails",
    ),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, "PUT\xa0")),
        "not a token",
        id="preflight-fetch:nbsp-is-not-ows",
    ),
    P(
        "PUT",
        (),
        False,
        204,
        acao((ACAM, " GET,,\tPUT , ")),
        "",
        id="preflight-fetch:empty-list-elements-and-ows-ok",
    ),
    P(
        "GET",
        (("Accept", "text/plain"), ("X-A", "1")),
        False,
        204,
        acao((ACAH, "x-a")),
        "",
        id="preflight-fetch:safelisted-header-need-not-be-listed",
    ),
]


@pytest.mark.parametrize(("method", "headers", "creds", "status", "response", "why"), PREFLIGHT)
def test_judge_preflight(
    method: str,
    headers: tuple[tuple[str, str], ...],
    creds: bool,
    status: int,
    response: list[tuple[str, str]],
    why: str,
) -> None:
    request = Request(ORIGIN, method, headers, creds)
    planned = browser.plan(request)
    assert planned.preflight
    verdict = browser.judge_preflight(request, planned, status, response)
    assert verdict.ok is (why == ""), verdict
    assert why in verdict.reason


# --- Fetch "CORS-filtered response": which headers JavaScript can read -------------------------

RESPONSE = [
    ("Content-Type", "text/plain"),
    ("Content-Length", "2"),
    ("Cache-Control", "no-cache"),
    ("Expires", "0"),
    ("Last-Modified", "x"),
    ("Pragma", "no-cache"),
    ("Content-Language", "en"),
    ("X-Request-ID", "7"),
    ("ETag", '"e"'),
    ("Set-Cookie", "s=1"),
    ("Set-Cookie2", "s=1"),
]
SAFELISTED_RESPONSE = [
    "content-type",
    "content-length",
    "cache-control",
    "expires",
    "last-modified",
    "pragma",
    "content-language",
]

READABLE = [
    P(False, None, [], id="exposed-headers:safelisted-only-by-default"),
    P(False, "X-Request-ID", ["x-request-id"], id="exposed-headers:listed-name"),
    P(False, "x-request-id, etag", ["x-request-id", "etag"], id="exposed-headers:case-insensitive"),
    P(True, "X-Request-ID", ["x-request-id"], id="exposed-headers:listed-name-with-creds"),
    P(
        False,
        "*",
        ["x-request-id", "etag", "access-control-expose-headers"],
        id="exposed-headers:star-without-credentials-all",
    ),
    P(True, "*", [], id="exposed-headers:star-literal-with-credentials"),
    P(False, "Set-Cookie, Set-Cookie2", [], id="exposed-headers:set-cookie-never"),
    P(False, "x-request-id; etag", [], id="exposed-headers:invalid-list-ignored"),
]


@pytest.mark.parametrize(("creds", "expose", "extra"), READABLE)
def test_readable_headers(creds: bool, expose: str | None, extra: list[str]) -> None:
    headers = list(RESPONSE)
    if expose is not None:
        headers.append(("Access-Control-Expose-Headers", expose))
    readable = [
        n.lower() for n in browser.readable_headers(Request(ORIGIN, credentials=creds), headers)
    ]
    assert sorted(readable) == sorted(SAFELISTED_RESPONSE + extra)
    assert "set-cookie" not in readable and "set-cookie2" not in readable


# --- Fetch "CORS-preflight fetch" max-age, and the browsers' caps -----------------------------

MAX_AGE = [
    P([], (5, 5, 5), id="max-age:default-5"),
    P([("Access-Control-Max-Age", "600")], (600, 600, 600), id="max-age:as-sent"),
    P([("Access-Control-Max-Age", "0")], (0, 0, 0), id="max-age:zero-no-cache"),
    P([("Access-Control-Max-Age", "7201")], (7201, 7200, 7201), id="max-age:chromium-cap-7200"),
    P(
        [("Access-Control-Max-Age", "86401")],
        (86401, 7200, 86400),
        id="max-age:firefox-cap-86400",
    ),
    P([("Access-Control-Max-Age", "-1")], (5, 5, 5), id="max-age:negative-is-default"),
    P([("Access-Control-Max-Age", "ten")], (5, 5, 5), id="max-age:not-a-number-is-default"),
    P([("Access-Control-Max-Age", "\xb2")], (5, 5, 5), id="max-age:ascii-digits-only"),
    P(
        [("Access-Control-Max-Age", "60"), ("Access-Control-Max-Age", "60")],
        (5, 5, 5),
        id="max-age:single-header-only",
    ),
]


@pytest.mark.parametrize(("headers", "expected"), MAX_AGE)
def test_preflight_max_age(headers: list[tuple[str, str]], expected: tuple[int, int, int]) -> None:
    assert browser.preflight_max_age(headers) == expected


# --- Fetch "main fetch": the walk explain and probe both drive --------------------------------

ACAO = "Access-Control-Allow-Origin"


class Server:
    """Answers each request the walk sends from a table, and keeps what it was sent."""

    def __init__(self, *answers: browser.Response) -> None:
        self.answers = list(answers)
        self.sent: list[browser.Sent] = []

    def __call__(self, sent: browser.Sent) -> browser.Response:
        self.sent.append(sent)
        return self.answers.pop(0)


def run(
    request: Request, *answers: browser.Response, same_origin: bool = False
) -> tuple[browser.Walk[browser.Response], Server]:
    server = Server(*answers)
    walked = browser.drive(browser.walk(request, same_origin), server)
    assert server.answers == [], "every answer given was asked for"
    return walked, server


def test_walk_simple_request_sends_one_request_and_checks_it() -> None:
    walked, server = run(Request(ORIGIN), browser.Response(200, ((ACAO, ORIGIN), ("X-A", "1"))))
    assert [s.method for s in server.sent] == ["GET"]
    assert server.sent[0].headers == (("Origin", ORIGIN),)
    assert walked.preflight is None and walked.actual is not None
    assert walked.allowed is True and walked.stage == "actual" and walked.reason == ""
    assert walked.actual.readable == ()  # X-A is not exposed


def test_walk_failed_preflight_sends_nothing_more() -> None:
    walked, server = run(Request(ORIGIN, "PUT"), browser.Response(403))
    assert [s.method for s in server.sent] == ["OPTIONS"] and server.sent[0].preflight
    assert walked.actual is None and walked.stage == "preflight"
    assert walked.reason == "preflight: no Access-Control-Allow-Origin header in the response"


def test_walk_passed_preflight_then_actual_with_max_age() -> None:
    ok = ((ACAO, ORIGIN), ("Access-Control-Allow-Methods", "PUT"), ("Access-Control-Max-Age", "9"))
    walked, server = run(
        Request(ORIGIN, "PUT"), browser.Response(204, ok), browser.Response(200, ((ACAO, ORIGIN),))
    )
    assert [s.method for s in server.sent] == ["OPTIONS", "PUT"]
    assert walked.preflight is not None and walked.preflight.max_age == (9, 9, 9)
    assert walked.allowed is True and len(walked.steps) == 2


def test_walk_forbidden_method_sends_nothing() -> None:
    walked, server = run(Request(ORIGIN, "TRACE"))
    assert server.sent == [] and walked.steps == () and walked.stage == "fetch"
    assert walked.allowed is False and "forbidden method TRACE" in walked.reason


def test_walk_unknown_answers_cannot_tell() -> None:
    unknown = browser.Response(None, known=False)
    walked, server = run(Request(ORIGIN, "PUT"), unknown, unknown)
    assert [s.method for s in server.sent] == ["OPTIONS", "PUT"]
    assert walked.allowed is None and walked.verdict is None


def test_walk_same_origin_checks_nothing() -> None:
    walked, server = run(Request(ORIGIN, "PUT"), browser.Response(200), same_origin=True)
    assert [s.method for s in server.sent] == ["PUT"]  # no preflight
    assert server.sent[0].headers == (("Origin", ORIGIN),)  # Origin: not GET or HEAD
    assert walked.allowed is True and walked.same_origin


def test_walk_reports_a_redirect_it_does_not_follow() -> None:
    headers = ((ACAO, ORIGIN), ("Location", "https://next.test/"))
    walked, _ = run(Request(ORIGIN), browser.Response(302, headers))
    assert walked.allowed is False and walked.redirect == "https://next.test/"
    assert walked.verdict is not None and walked.verdict.rule == "Fetch 'HTTP-redirect fetch'"
