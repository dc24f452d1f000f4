"""Config validation and compilation (docs/configuration.md): errors by key path and line,
merging, defaults."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from corsproxy.config.load import load_settings, parse_settings
from corsproxy.config.tree import ConfigInvalid, Diagnostic
from corsproxy.engine.policy import Settings


def load(text: str, filename: str = "c.yaml") -> tuple[Settings, list[Diagnostic]]:
    return parse_settings(textwrap.dedent(text), filename)


def errors_of(text: str) -> list[tuple[int, str]]:
    """(line, key path) of every error; messages are checked only where they matter."""
    with pytest.raises(ConfigInvalid) as caught:
        load(text)
    return [
        (int(d.where.rpartition(":")[2]), d.path)
        for d in caught.value.diagnostics
        if d.severity == "error"
    ]


def warnings_of(text: str) -> list[tuple[int, str]]:
    _, warnings = load(text)
    return [(int(d.where.rpartition(":")[2]), d.path) for d in warnings]


ERROR_CASES = [
    ("unknown-top-key", "upstrem: http://a\n", [(1, "upstrem")]),
    (
        "unknown-cors-key",
        "upstream: http://a\ndefaults:\n  allow_orgins: []\n",
        [(3, "defaults.allow_orgins")],
    ),
    (
        "star-with-credentials-points-at-star",
        """\
        upstream: http://a
        defaults:
          allow_credentials: true
          allow_origins:
            - https://a.test
            - "*"
        """,
        [(6, "defaults.allow_origins[1]")],
    ),
    (
        "star-in-defaults-credentials-in-route",
        """\
        upstream: http://a
        defaults:
          allow_origins: ["*"]
        routes:
          - path: /x
            cors: {allow_credentials: true}
        """,
        [(3, "defaults.allow_origins[0]")],
    ),
    (
        "origin-trailing-slash",
        "upstream: http://a\ndefaults:\n  allow_origins: [https://a.test/]\n",
        [(3, "defaults.allow_origins[0]")],
    ),
    (
        "origin-path",
        "upstream: http://a\ndefaults:\n  allow_origins:\n    - https://a.test/x\n",
        [(4, "defaults.allow_origins[0]")],
    ),
    (
        "origin-bad-scheme",
        "upstream: http://a\ndefaults:\n  allow_origins: [ftp://a.test]\n",
        [(3, "defaults.allow_origins[0]")],
    ),
    (
        "bad-regex",
        "upstream: http://a\ndefaults:\n  allow_origins:\n    - regex: '(x'\n",
        [(4, "defaults.allow_origins[0].regex")],
    ),
    (
        "forbidden-method",
        "upstream: http://a\ndefaults:\n  allow_methods: [GET, TRACE]\n",
        [(3, "defaults.allow_methods[1]")],
    ),
    (
        "set-cookie-exposed",
        "upstream: http://a\ndefaults:\n  expose_headers: [set-cookie]\n",
        [(3, "defaults.expose_headers[0]")],
    ),
    (
        "header-not-token",
        "upstream: http://a\ndefaults:\n  allow_headers: ['x y']\n",
        [(3, "defaults.allow_headers[0]")],
    ),
    (
        "max-age-negative",
        "upstream: http://a\ndefaults:\n  max_age: -1\n",
        [(3, "defaults.max_age")],
    ),
    (
        "preflight-status-not-2xx",
        "upstream: http://a\ndefaults:\n  preflight_status: 302\n",
        [(3, "defaults.preflight_status")],
    ),
    (
        "on-disallowed-bad",
        "upstream: http://a\ndefaults:\n  on_disallowed: drop\n",
        [(3, "defaults.on_disallowed")],
    ),
    (
        "bool-expected",
        "upstream: http://a\ndefaults:\n  allow_credentials: 'yes please'\n",
        [(3, "defaults.allow_credentials")],
    ),
    # YAML 1.1 read a bare yes/on as true: a silent true while "yes" was an error.
    (
        "bool-bare-yes",
        "upstream: http://a\ndefaults:\n  allow_credentials: yes\n",
        [(3, "defaults.allow_credentials")],
    ),
    ("bool-bare-on", "upstream: http://a\npreserve_host: on\n", [(2, "preserve_host")]),
    (
        "bool-bare-off-in-route",
        "upstream: http://a\nroutes:\n  - path: /x\n    cors: {report_only: off}\n",
        [(4, "routes[0].cors.report_only")],
    ),
    ("upstream-not-http", "upstream: ftp://a\n", [(1, "upstream")]),
    ("bad-upstream-reported-once", "upstream: ftp://a\nroutes:\n  - path: /x\n", [(1, "upstream")]),
    ("upstream-with-query", "upstream: http://a/?x=1\n", [(1, "upstream")]),
    ("upstream-empty-host", "upstream: 'http://:80'\n", [(1, "upstream")]),
    ("upstream-space-in-host", "upstream: 'http://exa mple'\n", [(1, "upstream")]),
    ("upstream-space-in-prefix", "upstream: 'http://a/v 1'\n", [(1, "upstream")]),
    ("upstream-bad-ipv6", "upstream: 'https://[zz]'\n", [(1, "upstream")]),
    ("listen-bad", "upstream: http://a\nlisten: 8080\n", [(2, "listen")]),
    ("workers-bad", "upstream: http://a\nworkers: 0\n", [(2, "workers")]),
    ("timeout-bad", "upstream: http://a\ntimeouts: {read: 0}\n", [(2, "timeouts.read")]),
    ("access-log-bad", "upstream: http://a\naccess_log: xml\n", [(2, "access_log")]),
    (
        "tls-unreadable",
        "upstream: http://a\ntls: {cert: nope.pem, key: nope.key}\n",
        [(2, "tls.cert"), (2, "tls.key")],
    ),
    ("route-without-path", "upstream: http://a\nroutes:\n  - cors: {}\n", [(3, "routes[0].path")]),
    (
        "route-bad-pattern",
        "upstream: http://a\nroutes:\n  - path: /a/**/b\n",
        [(3, "routes[0].path")],
    ),
    ("route-without-any-upstream", "routes:\n  - path: /a\n", [(2, "routes[0]")]),
    (
        "cors-not-mapping",
        "upstream: http://a\nroutes:\n  - path: /a\n    cors: open\n",
        [(4, "routes[0].cors")],
    ),
    ("duplicate-key", "upstream: http://a\nupstream: http://b\n", [(2, "upstream")]),
    ("top-level-not-mapping", "- a\n- b\n", [(1, "yaml")]),
    ("yaml-syntax", "upstream: [http://a\n", [(2, "yaml")]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors_name_line_and_key_path(text: str, expected: list[tuple[int, str]]) -> None:
    assert errors_of(text) == expected


def test_every_error_is_reported_at_once() -> None:
    text = """\
        upstream: http://a
        defaults:
          allow_orgins: []
          allow_methods: [TRACE]
        routes:
          - path: /x
            cors:
              allow_origins: [https://a.test/]
              expose_headers: [Set-Cookie]
        """
    assert errors_of(text) == [
        (3, "defaults.allow_orgins"),
        (4, "defaults.allow_methods[0]"),
        (8, "routes[0].cors.allow_origins[0]"),
        (9, "routes[0].cors.expose_headers[0]"),
    ]


def test_duplicate_key_does_not_hide_other_errors() -> None:
    text = "upstream: http://a\ndefaults:\n  max_age: 1\n  max_age: 2\n  on_disallowed: x\n"
    assert errors_of(text) == [(4, "defaults.max_age"), (5, "defaults.on_disallowed")]


def test_misspelt_upstream_is_one_error_not_one_per_route() -> None:
    text = "upstrem: http://a\nroutes:\n  - path: /a\n  - path: /b\n"
    assert errors_of(text) == [(1, "upstrem")]


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        pytest.param("defaults:\n  allow_origins: [*]\n", 'write "*" in quotes', id="bare-star"),
        pytest.param(
            "defaults:\n  allow_origins: [null]\n", 'write "null" in quotes', id="bare-null"
        ),
        pytest.param("defaults:\n  allow_credentials: yes\n", "write true or false", id="bool-yes"),
        pytest.param("trust_forwarded: no\n", "write true or false", id="bool-no"),
        pytest.param(
            "routes:\n  - path: /a\n    cors: passthru\n",
            "did you mean 'passthrough'",
            id="passthru",
        ),
    ],
)
def test_yaml_pitfalls_get_a_hint(text: str, hint: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load("upstream: http://a\n" + text)
    assert hint in str(caught.value)


def test_unknown_key_gets_did_you_mean() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load("upstream: http://a\ndefaults:\n  allow_orgins: []\n")
    assert str(caught.value.diagnostics[0]) == (
        "c.yaml:3: defaults.allow_orgins: error: unknown key 'allow_orgins'; "
        "did you mean 'allow_origins'?"
    )


WARNING_CASES = [
    ("max-age-above-chromium", "defaults:\n  max_age: 7201\n", [(3, "defaults.max_age")]),
    ("max-age-above-firefox", "defaults:\n  max_age: 86401\n", [(3, "defaults.max_age")]),
    ("max-age-at-cap-is-fine", "defaults:\n  max_age: 7200\n", []),
    (
        "http-origin-with-credentials",
        """\
        defaults:
          allow_credentials: true
          allow_origins: [http://app.example.com, https://b.example.com]
        """,
        [(4, "defaults.allow_origins[0]")],
    ),
    (
        "loopback-http-with-credentials-is-fine",
        """\
        defaults:
          allow_credentials: true
          allow_origins: [http://localhost:*, http://127.0.0.1:5173]
        """,
        [],
    ),
    (
        "regex-unanchored-and-dot",
        "defaults:\n  allow_origins:\n    - regex: 'https://a.b'\n",
        [(4, "defaults.allow_origins[0].regex"), (4, "defaults.allow_origins[0].regex")],
    ),
    (
        "regex-anchored-escaped-is-fine",
        "defaults:\n  allow_origins:\n    - regex: '^https://a\\.b$'\n",
        [],
    ),
    ("route-shadowed", "routes:\n  - path: /api/**\n  - path: /api/x\n", [(4, "routes[1].path")]),
    (
        "route-shadowed-line-is-the-path-line",
        "routes:\n  - path: /api/**\n  - name: x\n    path: /api/x\n",
        [(5, "routes[1].path")],
    ),
    (
        "loopback-ipv6-without-port-is-fine",
        "defaults:\n  allow_credentials: true\n  allow_origins: ['http://[::1]']\n",
        [],
    ),
    (
        "localhost-look-alike-wildcard-warns",
        "defaults:\n  allow_credentials: true\n  allow_origins: ['http://*.evillocalhost']\n",
        [(4, "defaults.allow_origins[0]")],
    ),
    (
        "route-other-host-not-shadowed",
        "routes:\n  - path: /api/**\n    host: a.test\n  - path: /api/x\n",
        [],
    ),
    ("lowercase-method", "defaults:\n  allow_methods: [get]\n", [(3, "defaults.allow_methods[0]")]),
    (
        "null-origin-lets-sandboxed-iframes-in",
        "defaults:\n  allow_origins: [https://a.test, 'null']\n",
        [(3, "defaults.allow_origins[1]")],
    ),
    (
        "private-network-with-star",
        "defaults:\n  allow_origins: ['*']\n  allow_private_network: true\n",
        [(4, "defaults.allow_private_network")],
    ),
    (
        "private-network-with-null",
        "defaults:\n  allow_origins: ['null']\n  allow_private_network: true\n",
        [(3, "defaults.allow_origins[0]"), (4, "defaults.allow_private_network")],
    ),
    (
        "private-network-with-subdomain-wildcard",
        "defaults:\n  allow_origins: ['https://*.a.test']\n  allow_private_network: true\n",
        [(4, "defaults.allow_private_network")],
    ),
    (
        "private-network-with-any-port",
        "defaults:\n  allow_origins: ['https://a.test:*']\n  allow_private_network: true\n",
        [(4, "defaults.allow_private_network")],
    ),
    (
        "private-network-with-regex",
        """\
        defaults:
          allow_origins: [{regex: '^https://a\\.test$'}]
          allow_private_network: true
        """,
        [(4, "defaults.allow_private_network")],
    ),
    (
        "private-network-line-is-the-key-not-the-origins",
        """\
        defaults:
          allow_private_network: true
        routes:
          - path: /x
            cors: {allow_origins: ['*']}
        """,
        [(3, "defaults.allow_private_network")],
    ),
    (
        "private-network-with-exact-origins-is-fine",
        "defaults:\n  allow_origins: [https://a.test]\n  allow_private_network: true\n",
        [],
    ),
    (
        "private-network-with-loopback-wildcards-is-fine",
        """\
        defaults:
          allow_origins: ['http://localhost:*', 'http://*.localhost', 'http://127.0.0.1:*']
          allow_private_network: true
        """,
        [],
    ),
    (
        "allow-headers-forbidden-names",
        """\
        defaults:
          allow_headers: [Cookie, X-Token, sec-fetch-mode, Proxy-Authorization, Host]
        """,
        [
            (3, "defaults.allow_headers[0]"),
            (3, "defaults.allow_headers[2]"),
            (3, "defaults.allow_headers[3]"),
            (3, "defaults.allow_headers[4]"),
        ],
    ),
    (
        # Each is safelisted only for some values (a long or odd value is preflighted).
        "allow-headers-value-dependent-safelisted-names-are-fine",
        """\
        defaults:
          allow_headers: [Accept, Accept-Language, Content-Language, Content-Type, Range]
        """,
        [],
    ),
    (
        "expose-headers-safelisted-names",
        "defaults:\n  expose_headers: [Content-Length, X-Request-ID, cache-control]\n",
        [(3, "defaults.expose_headers[0]"), (3, "defaults.expose_headers[2]")],
    ),
    ("expose-headers-etag-is-fine", "defaults:\n  expose_headers: [ETag]\n", []),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES]
)
def test_warnings(text: str, expected: list[tuple[int, str]]) -> None:
    assert warnings_of("upstream: http://a\n" + textwrap.dedent(text)) == expected


@pytest.mark.parametrize(
    ("origins", "reason"),
    [
        pytest.param("['*']", "lets any site in", id="star"),
        pytest.param("['null']", "sandboxed iframe", id="null"),
        pytest.param("['https://*.a.test']", "prefer exact origins", id="wildcard"),
    ],
)
def test_private_network_warning_says_how_bad(origins: str, reason: str) -> None:
    _, warnings = load(
        f"upstream: http://a\ndefaults:\n  allow_origins: {origins}\n"
        "  allow_private_network: true\n"
    )
    messages = [d.message for d in warnings if d.path == "defaults.allow_private_network"]
    assert len(messages) == 1 and reason in messages[0]


def test_builtin_defaults() -> None:
    settings, _ = load("upstream: http://a\n")
    policy = settings.table.fallback.policy
    assert policy is not None
    assert policy.origins.empty
    assert policy.methods_value == "GET, HEAD, POST"
    assert policy.headers == frozenset() and policy.expose_value is None
    assert policy.allow_credentials is False and policy.max_age is None
    assert policy.allow_private_network is False and policy.on_disallowed == "reject"
    assert policy.preflight_status == 204 and policy.report_only is False
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 8080)


def test_route_key_replaces_defaults_key_whole() -> None:
    settings, _ = load(
        """\
        upstream: http://a
        defaults:
          allow_origins: [https://a.test]
          allow_methods: [GET, PUT]
          max_age: 60
        routes:
          - path: /x/**
            cors:
              allow_methods: [DELETE]
        """
    )
    route = settings.table.routes[0]
    assert route.policy is not None
    assert route.policy.methods == frozenset({"DELETE"})  # replaced, not merged
    assert route.policy.origins.exact == frozenset({"https://a.test"})  # inherited
    assert route.policy.max_age == 60


def test_routes_first_match_wins_and_unmatched_use_defaults() -> None:
    settings, _ = load(
        """\
        upstream: http://default:1/v1/
        routes:
          - path: /api/**
            host: API.example.com
            upstream: http://orders:4000
            name: orders
          - path: /api/**
          - path: /legacy/**
            cors: passthrough
        """
    )
    table = settings.table
    assert table.match("api.example.com", "/api/x").name == "orders"
    assert table.match("other.test", "/api/x").name == "/api/**"
    assert table.match("api.example.com", "/nothing").name == "default"
    assert table.match("x", "/legacy/a").policy is None
    default = table.match("x", "/nothing").upstream
    assert default is not None and default.target("/x?y") == "http://default:1/v1/x?y"


def test_no_upstream_and_no_routes_warns() -> None:
    _, warnings = load("defaults: {allow_origins: [https://a.test]}\n")
    assert [(d.path, d.severity) for d in warnings] == [("upstream", "warning")]


def test_route_host_keeps_ipv6_brackets() -> None:
    settings, _ = load("upstream: http://a\nroutes:\n  - path: /x\n    host: '[::1]:8080'\n")
    assert settings.table.routes[0].host == "[::1]"
    assert settings.table.match("[::1]", "/x").name == "/x"


def test_access_log_bare_off_is_accepted() -> None:
    settings, _ = load("upstream: http://a\naccess_log: off\n")
    assert settings.access_log == "off"
    settings, _ = load("upstream: http://a\naccess_log: false\n")
    assert settings.access_log == "off"


def test_booleans_are_true_and_false_in_any_yaml_1_2_spelling() -> None:
    settings, _ = load("upstream: http://a\npreserve_host: True\ntrust_forwarded: TRUE\n")
    assert settings.preserve_host and settings.trust_forwarded


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    config = tmp_path / "corsproxy.yaml"
    config.write_text("upstream: http://a\ntls: {cert: cert.pem, key: key.pem}\n")
    settings, _ = load_settings(str(config))
    assert settings.tls is not None
    assert settings.tls.cert == str(tmp_path / "cert.pem")


def test_every_example_in_config_folder_is_valid() -> None:
    files = sorted(Path(__file__).resolve().parent.parent.glob("config/*.yaml"))
    assert files, "config/ has no examples"
    for path in files:
        settings, _ = load_settings(str(path))
        assert settings.table.fallback is not None


def test_routes_inheriting_origins_share_one_compiled_matcher() -> None:
    """An origin list is compiled once, however many routes inherit it (load cost is
    routes + origins, not routes x origins)."""
    origins = "\n".join(f"    - https://o{i}.example.com" for i in range(50))
    routes = "\n".join(f"  - path: /r{i}/**" for i in range(20))
    settings, _ = load(
        f"upstream: http://a\ndefaults:\n  allow_origins:\n{origins}\nroutes:\n{routes}\n"
    )
    matchers = {id(route.policy.origins) for route in settings.table.routes if route.policy}
    assert len(matchers) == 1
    assert settings.table.fallback.policy is not None
    assert id(settings.table.fallback.policy.origins) in matchers
