"""Origin parsing and matching, and path normalisation and patterns (docs/configuration.md)."""

from __future__ import annotations

import pytest

from corsproxy.config.load import parse_settings
from corsproxy.engine.origins import OriginError, OriginMatcher, is_exact, parse_origin, serialise
from corsproxy.engine.paths import (
    PathError,
    PatternError,
    compile_pattern,
    parse_target,
    path_parts,
)


@pytest.mark.parametrize(
    ("entry", "normalised"),
    [
        pytest.param("https://App.Example.COM", "https://app.example.com", id="lowercased"),
        pytest.param("HTTPS://app.example.com", "https://app.example.com", id="scheme-lowercased"),
        pytest.param(
            "https://app.example.com:443",
            "https://app.example.com",
            id="default-https-port-dropped",
        ),
        pytest.param(
            "http://app.example.com:80", "http://app.example.com", id="default-http-port-dropped"
        ),
        pytest.param(
            "http://app.example.com:8080", "http://app.example.com:8080", id="other-port-kept"
        ),
        pytest.param(
            "https://bücher.example", "https://xn--bcher-kva.example", id="idn-to-punycode"
        ),
        pytest.param("http://127.0.0.1:5173", "http://127.0.0.1:5173", id="ipv4"),
        pytest.param("http://[::1]:5173", "http://[::1]:5173", id="ipv6"),
    ],
)
def test_exact_origins_are_normalised(entry: str, normalised: str) -> None:
    pattern = parse_origin(entry)
    assert is_exact(pattern)
    assert serialise(pattern) == normalised


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("https://app.example.com/", id="trailing-slash"),
        pytest.param("https://app.example.com/path", id="path"),
        pytest.param("https://app.example.com?x", id="query"),
        pytest.param("https://app.example.com#x", id="fragment"),
        pytest.param("https://user@app.example.com", id="userinfo"),
        pytest.param("ftp://app.example.com", id="scheme-not-http"),
        pytest.param("app.example.com", id="no-scheme"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://a.*.example.com", id="star-not-leftmost"),
        pytest.param("https://*example.com", id="star-part-of-label"),
        pytest.param("https://app.example.com:99999", id="port-out-of-range"),
        pytest.param("https://app.example.com:x", id="port-not-number"),
        pytest.param("https://*.127.0.0.1", id="wildcard-before-ip"),
        pytest.param("https://[zz]", id="bad-ipv6"),
    ],
)
def test_bad_origins_are_refused(entry: str) -> None:
    with pytest.raises(OriginError):
        parse_origin(entry)


def matcher(*entries: str) -> OriginMatcher:
    exact, patterns = set(), []
    for entry in entries:
        pattern = parse_origin(entry)
        if is_exact(pattern):
            exact.add(serialise(pattern))
        else:
            patterns.append(pattern)
    return OriginMatcher(frozenset(exact), tuple(patterns))


WILDCARD_CASES = [
    ("https://*.example.com", "https://a.example.com", True, "one-label"),
    ("https://*.example.com", "https://a.b.example.com", True, "several-labels"),
    ("https://*.example.com", "https://example.com", False, "never-the-bare-domain"),
    ("https://*.example.com", "https://example.com.evil.test", False, "suffix-attack"),
    ("https://*.example.com", "https://evilexample.com", False, "no-dot-look-alike"),
    ("https://*.example.com", "http://a.example.com", False, "scheme-must-match"),
    ("https://*.example.com", "https://a.example.com:8443", False, "port-must-match"),
    ("https://*.example.com:8443", "https://a.example.com:8443", True, "explicit-port"),
    ("http://localhost:*", "http://localhost:5173", True, "any-port"),
    ("http://localhost:*", "http://localhost", True, "any-port-includes-default"),
    ("http://localhost:*", "http://localhost.evil.test:5173", False, "any-port-host-exact"),
    ("http://*.example.test:*", "http://a.example.test:9000", True, "wildcard-host-and-port"),
    ("https://app.example.com", "https://app.example.com", True, "exact"),
    ("https://app.example.com", "https://app.example.com:443", False, "exact-as-sent-only"),
    ("https://app.example.com", "null", False, "null-not-matched"),
    ("https://*.example.com", 'https://x,y"<>.example.com', False, "junk-host-never-matches"),
    ("https://*.example.com", "https://a..example.com", False, "empty-label-never-matches"),
]


@pytest.mark.parametrize(
    ("entry", "origin", "expected"),
    [case[:3] for case in WILDCARD_CASES],
    ids=[case[3] for case in WILDCARD_CASES],
)
def test_origin_matching(entry: str, origin: str, expected: bool) -> None:
    assert matcher(entry).matches(origin) is expected


TARGETS = [
    ("/public/../api/x", "/api/x", None, "dot-dot-removed"),
    ("/a/./b/.", "/a/b/", None, "dot-removed-trailing-slash-kept"),
    ("/a/b/..", "/a/", None, "trailing-dot-dot"),
    ("/%7Euser/%41%62", "/~user/Ab", None, "unreserved-decoded"),
    ("/caf%C3%A9/%20x", "/caf%C3%A9/%20x", None, "other-escapes-kept-exactly"),
    ("/a/%2E%2E/x", "/x", None, "encoded-dots-are-dot-segments"),
    ("/x?a=%41&b=..&c", "/x", "a=%41&b=..&c", "query-kept-exactly"),
    ("/x?", "/x", "", "empty-query-kept"),
    ("/api//x", "/api/x", None, "empty-segments-merged"),
    ("//api/x//", "/api/x/", None, "leading-and-trailing-empty-segments-merged"),
    ("/api/x;v=1", "/api/x;v=1", None, "path-parameters-kept"),
    ("http://evil.invalid:1/x?y", "/x", "y", "absolute-form-authority-dropped"),
    ("http://evil.invalid", "/", None, "absolute-form-no-path"),
    ("/x#frag", "/x", None, "fragment-dropped"),
]


@pytest.mark.parametrize(
    ("raw", "path", "query"), [t[:3] for t in TARGETS], ids=[t[3] for t in TARGETS]
)
def test_targets_are_normalised(raw: str, path: str, query: str | None) -> None:
    target = parse_target(raw)
    assert (target.path, target.query) == (path, query)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("/a%2Fb", id="encoded-slash"),
        pytest.param("/a%2fb", id="encoded-slash-lowercase"),
        pytest.param("/a%5Cb", id="encoded-backslash"),
        pytest.param("/a%5cb", id="encoded-backslash-lowercase"),
        pytest.param("/a%00b", id="encoded-nul"),
        pytest.param("/a\\b", id="literal-backslash"),
        pytest.param("/..", id="climbs-above-root"),
        pytest.param("/a/../../x", id="climbs-above-root-later"),
        pytest.param("/%2E%2E/x", id="encoded-climb"),
        pytest.param("/a%zz", id="malformed-escape"),
        pytest.param("/public/..;/api", id="dot-dot-with-parameter"),
        pytest.param("/public/.;x/api", id="dot-with-parameter"),
        pytest.param("*", id="asterisk-form"),
        pytest.param("ftp://x/y", id="absolute-form-other-scheme"),
    ],
)
def test_bad_targets_get_400(raw: str) -> None:
    with pytest.raises(PathError):
        parse_target(raw)


PATTERNS = [
    ("/api/**", "/api", True, "double-star-matches-zero-segments"),
    ("/api/**", "/api/", True, "double-star-matches-empty-tail"),
    ("/api/**", "/api/a/b", True, "double-star-matches-many"),
    ("/api/**", "/apix", False, "literal-is-whole-segment"),
    ("/api/**", "/API/x", False, "case-sensitive"),
    ("/api/*", "/api/x", True, "star-one-segment"),
    ("/api/*", "/api/x/y", False, "star-not-two-segments"),
    ("/api/*", "/api/", False, "star-not-empty-segment"),
    ("/api/*/items", "/api/7/items", True, "star-in-middle"),
    ("/**", "/", True, "root-double-star"),
    ("/", "/", True, "root-exact"),
    ("/", "/x", False, "root-exact-only"),
    ("/café/**", "/caf%C3%A9/x", True, "pattern-percent-encoded-like-browsers"),
    ("/café/**", "/caf%c3%a9/x", True, "escape-case-ignored-when-matching"),
    ("/a|b/[c]/**", "/a|b/[c]/x", True, "pattern-keeps-what-browsers-send-raw"),
    ("/a b/**", "/a%20b", True, "pattern-space-encoded-like-browsers"),
]


@pytest.mark.parametrize(
    ("pattern", "path", "expected"), [p[:3] for p in PATTERNS], ids=[p[3] for p in PATTERNS]
)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(path) is expected


@pytest.mark.parametrize("pattern", ["api", "/a/**/b", "/a*", "/a/../b", "/a?x"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(pattern)


def test_pattern_coverage_for_shadowing() -> None:
    assert compile_pattern("/api/**").covers(compile_pattern("/api/x"))
    assert compile_pattern("/api/**").covers(compile_pattern("/api/*/y/**"))
    assert compile_pattern("/*/x").covers(compile_pattern("/a/x"))
    assert not compile_pattern("/api/x").covers(compile_pattern("/api/**"))
    assert not compile_pattern("/api/*").covers(compile_pattern("/api/x/y"))


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        pytest.param("a.test", ("a.test", None), id="host-only"),
        pytest.param("a.test:8080", ("a.test", "8080"), id="host-and-port"),
        pytest.param("a.test:", ("a.test", ""), id="empty-port-kept-for-the-caller"),
        pytest.param("[::1]:80", ("[::1]", "80"), id="ipv6-keeps-brackets"),
        pytest.param("[::1]", ("[::1]", None), id="ipv6-without-port"),
        pytest.param("[::1", None, id="unbalanced-bracket"),
        pytest.param("[::1]x", None, id="junk-after-bracket"),
    ],
)
def test_split_authority(authority: str, expected: tuple[str, str | None] | None) -> None:
    from corsproxy.engine.origins import split_authority

    assert split_authority(authority) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("API.Example.com:8443", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("api.example.com.:80", "api.example.com"),
        ("[::1]:8080", "[::1]"),
        ("", ""),
    ],
)
def test_routing_host(host: str, expected: str) -> None:
    from corsproxy.engine.origins import routing_host

    assert routing_host(host) == expected


# --- the route table's index keeps first-match-wins ----------------------------------------

INDEXED_ROUTES = """\
upstream: http://127.0.0.1:9
routes:
  - {path: "/api/admin/**", cors: passthrough}
  - {path: "/*/health"}
  - {path: "/api/**", host: api.test}
  - {path: "/api/*/items"}
  - {path: "/**", host: other.test}
  - {path: "/api/**"}
  - {path: "/static/*"}
  - {path: "/"}
  - {path: "/caf%C3%A9/**"}
"""


def linear_match(table, host: str, path: str):
    parts = path_parts(path)
    return next((r for r in table.routes if r.matches(host, parts)), table.fallback)


@pytest.mark.parametrize("host", ["front.test", "api.test", "other.test"])
@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/",
        "/api/admin",
        "/api/admin/x",
        "/api/x/items",
        "/api/x/items/y",
        "/api/health",
        "/web/health",
        "/static/a.css",
        "/static/",
        "/static/a/b",
        "/caf%c3%a9/menu",
        "/caf%C3%A9",
        "/unknown/path",
        "/health",
    ],
)
def test_route_index_agrees_with_a_first_match_scan(host: str, path: str) -> None:
    settings, _ = parse_settings(INDEXED_ROUTES, "routes.yaml")
    table = settings.table
    assert table.match(host, path) is linear_match(table, host, path)
