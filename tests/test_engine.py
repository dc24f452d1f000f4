"""The decision engine, as tables of request facts -> decision and headers
(docs/configuration.md, "What happens to a request")."""

from __future__ import annotations

import textwrap

import pytest

from corsproxy.config.load import parse_settings
from corsproxy.engine.cors import Action, Kind, RequestFacts, Verdict, decide, expose_value_for
from corsproxy.engine.policy import Policy

SITE = "http://proxy.test"  # the origin the requests are addressed to
APP = "https://app.example.com"
EVIL = "https://evil.example.net"
PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")


def policy(yaml_cors: str) -> Policy:
    text = "upstream: http://127.0.0.1:9\ndefaults:\n" + textwrap.indent(
        textwrap.dedent(yaml_cors), "  "
    )
    settings, _ = parse_settings(text, "test.yaml")
    assert settings.table.fallback.policy is not None
    return settings.table.fallback.policy


STRICT = f"""
allow_origins: [{APP}]
allow_methods: [GET, POST, PUT]
allow_headers: [Content-Type, X-Request-ID]
expose_headers: [X-Request-ID]
allow_credentials: true
max_age: 600
"""
PUBLIC = 'allow_origins: ["*"]\nexpose_headers: [ETag]\n'
LAX = f"""
allow_origins: [{APP}]
allow_methods: ["*"]
allow_headers: ["*"]
expose_headers: ["*"]
"""
LAX_CREDENTIALS = LAX + "allow_credentials: true\n"
PRIVATE = f"allow_origins: [{APP}]\nallow_private_network: true\n"
FORWARD = f"allow_origins: [{APP}]\non_disallowed: forward\n"
REPORT = f"allow_origins: [{APP}]\nreport_only: true\n"
STATUS_200 = f"allow_origins: [{APP}]\npreflight_status: 200\n"


def facts(
    method: str = "GET",
    origin: str | tuple[str, ...] | None = APP,
    acrm: str | None = None,
    acrh: str | None = None,
    pna: bool = False,
    ws: bool = False,
) -> RequestFacts:
    origins = () if origin is None else (origin,) if isinstance(origin, str) else origin
    return RequestFacts(method, origins, SITE, acrm, acrh, pna, ws)


def preflight(method: str = "PUT", headers: str | None = None, **kw: object) -> RequestFacts:
    return facts("OPTIONS", acrm=method, acrh=headers, **kw)  # type: ignore[arg-type]


ALLOWED_STRICT = {
    "Access-Control-Allow-Origin": APP,
    "Access-Control-Allow-Credentials": "true",
}

# (id, policy yaml, facts, kind, verdict, action, status, headers, vary)
CASES = [
    # 1. not a CORS request
    (
        "no-origin-is-not-cors",
        STRICT,
        facts(origin=None),
        Kind.NONE,
        Verdict.NOT_CORS,
        Action.FORWARD,
        0,
        {},
        ("Origin",),
    ),
    (
        "same-origin-is-not-cors",
        STRICT,
        facts(origin=SITE),
        Kind.NONE,
        Verdict.NOT_CORS,
        Action.FORWARD,
        0,
        {},
        ("Origin",),
    ),
    (
        "same-origin-options-with-acrm-is-forwarded",
        STRICT,
        facts("OPTIONS", origin=SITE, acrm="PUT"),
        Kind.NONE,
        Verdict.NOT_CORS,
        Action.FORWARD,
        0,
        {},
        ("Origin",),
    ),
    (
        "star-route-no-origin-has-no-vary",
        PUBLIC,
        facts(origin=None),
        Kind.NONE,
        Verdict.NOT_CORS,
        Action.FORWARD,
        0,
        {},
        (),
    ),
    (
        "several-origins-400",
        STRICT,
        facts(origin=(APP, APP)),
        Kind.NONE,
        Verdict.BAD_REQUEST,
        Action.ANSWER,
        400,
        {},
        (),
    ),
    # 2. preflight
    (
        "preflight-allowed-lists-configured-values",
        STRICT,
        preflight("PUT", "content-type"),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        204,
        {
            **ALLOWED_STRICT,
            "Access-Control-Allow-Methods": "GET, POST, PUT",
            "Access-Control-Allow-Headers": "Content-Type, X-Request-ID",
            "Access-Control-Max-Age": "600",
        },
        PREFLIGHT_VARY,
    ),
    (
        "preflight-no-headers-requested-no-acah",
        STRICT,
        preflight("PUT"),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        204,
        {
            **ALLOWED_STRICT,
            "Access-Control-Allow-Methods": "GET, POST, PUT",
            "Access-Control-Max-Age": "600",
        },
        PREFLIGHT_VARY,
    ),
    (
        "preflight-headers-case-insensitive",
        STRICT,
        preflight("POST", "X-REQUEST-ID, Content-Type"),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        204,
        {
            **ALLOWED_STRICT,
            "Access-Control-Allow-Methods": "GET, POST, PUT",
            "Access-Control-Allow-Headers": "Content-Type, X-Request-ID",
            "Access-Control-Max-Age": "600",
        },
        PREFLIGHT_VARY,
    ),
    (
        "preflight-star-reflects-method-and-headers",
        LAX,
        preflight("PATCH", "Authorization,x-a"),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Methods": "PATCH",
            "Access-Control-Allow-Headers": "authorization, x-a",
        },
        PREFLIGHT_VARY,
    ),
    (
        "preflight-star-origin-answers-literal-star",
        PUBLIC,
        preflight("GET"),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        204,
        {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, HEAD, POST"},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-status-configurable",
        STATUS_200,
        preflight("GET"),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        200,
        {"Access-Control-Allow-Origin": APP, "Access-Control-Allow-Methods": "GET, HEAD, POST"},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-private-network-allowed",
        PRIVATE,
        preflight("GET", pna=True),
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        204,
        {
            "Access-Control-Allow-Origin": APP,
            "Access-Control-Allow-Methods": "GET, HEAD, POST",
            "Access-Control-Allow-Private-Network": "true",
        },
        PREFLIGHT_VARY,
    ),
    (
        "preflight-private-network-refused",
        STRICT,
        preflight("GET", pna=True),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-origin-refused",
        STRICT,
        preflight("GET", origin=EVIL),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-method-refused",
        STRICT,
        preflight("DELETE"),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-method-case-sensitive",
        STRICT,
        preflight("put"),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-header-refused",
        STRICT,
        preflight("PUT", "content-type, x-other"),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-star-never-reflects-forbidden-method",
        LAX,
        preflight("TRACE"),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-star-never-reflects-invalid-name",
        LAX,
        preflight("GET", "x y"),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    (
        "preflight-refused-even-with-on-disallowed-forward",
        FORWARD,
        preflight("GET", origin=EVIL),
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        PREFLIGHT_VARY,
    ),
    # 3. actual
    (
        "actual-allowed-credentials-expose",
        STRICT,
        facts("POST"),
        Kind.ACTUAL,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {**ALLOWED_STRICT, "Access-Control-Expose-Headers": "X-Request-ID"},
        ("Origin",),
    ),
    (
        "actual-star-origin-literal-star-no-vary",
        PUBLIC,
        facts(origin=EVIL),
        Kind.ACTUAL,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag"},
        (),
    ),
    (
        "actual-star-origin-allows-null",
        PUBLIC,
        facts(origin="null"),
        Kind.ACTUAL,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag"},
        (),
    ),
    (
        "actual-expose-star-without-credentials-is-star",
        LAX,
        facts(),
        Kind.ACTUAL,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {"Access-Control-Allow-Origin": APP, "Access-Control-Expose-Headers": "*"},
        ("Origin",),
    ),
    (
        "actual-expose-star-with-credentials-deferred",
        LAX_CREDENTIALS,
        facts(),
        Kind.ACTUAL,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {"Access-Control-Allow-Origin": APP, "Access-Control-Allow-Credentials": "true"},
        ("Origin",),
    ),
    (
        "actual-origin-rejected",
        STRICT,
        facts(origin=EVIL),
        Kind.ACTUAL,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        ("Origin",),
    ),
    (
        "actual-null-origin-rejected-unless-listed",
        STRICT,
        facts(origin="null"),
        Kind.ACTUAL,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        ("Origin",),
    ),
    (
        "actual-method-rejected",
        STRICT,
        facts("DELETE"),
        Kind.ACTUAL,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        ("Origin",),
    ),
    (
        "actual-disallowed-forwarded",
        FORWARD,
        facts(origin=EVIL),
        Kind.ACTUAL,
        Verdict.FORWARDED,
        Action.FORWARD,
        0,
        {},
        ("Origin",),
    ),
    (
        "options-without-acrm-is-actual",
        STRICT,
        facts("OPTIONS"),
        Kind.ACTUAL,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        ("Origin",),
    ),
    # 4. websocket
    (
        "websocket-allowed",
        STRICT,
        facts(ws=True),
        Kind.WEBSOCKET,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {},
        ("Origin",),
    ),
    (
        "websocket-refused-even-when-forwarding",
        FORWARD,
        facts(origin=EVIL, ws=True),
        Kind.WEBSOCKET,
        Verdict.REJECTED,
        Action.ANSWER,
        403,
        {},
        ("Origin",),
    ),
    (
        "websocket-method-not-checked",
        STRICT,
        facts("GET", ws=True),
        Kind.WEBSOCKET,
        Verdict.ALLOWED,
        Action.FORWARD,
        0,
        {},
        ("Origin",),
    ),
    # report_only
    (
        "report-only-would-reject-forwards",
        REPORT,
        facts(origin=EVIL),
        Kind.ACTUAL,
        Verdict.WOULD_REJECT,
        Action.FORWARD,
        0,
        {},
        (),
    ),
    (
        "report-only-would-allow-leaves-headers",
        REPORT,
        facts(),
        Kind.ACTUAL,
        Verdict.WOULD_ALLOW,
        Action.FORWARD,
        0,
        {},
        (),
    ),
    (
        "report-only-preflight-forwarded",
        REPORT,
        preflight("GET", origin=EVIL),
        Kind.PREFLIGHT,
        Verdict.WOULD_REJECT,
        Action.FORWARD,
        0,
        {},
        (),
    ),
    (
        "report-only-websocket-forwarded",
        REPORT,
        facts(origin=EVIL, ws=True),
        Kind.WEBSOCKET,
        Verdict.WOULD_REJECT,
        Action.FORWARD,
        0,
        {},
        (),
    ),
]


@pytest.mark.parametrize(
    ("yaml_cors", "request_facts", "kind", "verdict", "action", "status", "headers", "vary"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(yaml_cors, request_facts, kind, verdict, action, status, headers, vary):
    decision = decide(policy(yaml_cors), request_facts)
    assert (decision.kind, decision.verdict, decision.action) == (kind, verdict, action)
    assert decision.status == status
    # Every CORS header, and no other: an unexpected one fails.
    assert dict(decision.headers) == headers
    assert len(decision.headers) == len(headers)
    assert decision.vary == vary


def test_report_only_strips_nothing() -> None:
    for request_facts in (facts(), facts(origin=EVIL), facts(origin=None)):
        assert decide(policy(REPORT), request_facts).strip is False


def test_refused_preflight_names_every_failed_check() -> None:
    decision = decide(
        policy(STRICT), preflight("DELETE", "x-one, content-type, x-two", origin=EVIL, pna=True)
    )
    assert decision.reason == (
        f"origin {EVIL!r} is not allowed; method 'DELETE' is not allowed; "
        "header 'x-one' is not allowed; header 'x-two' is not allowed; "
        "private network access is not allowed"
    )


def test_expose_star_with_credentials_lists_upstream_names() -> None:
    decision = decide(policy(LAX_CREDENTIALS), facts())
    assert decision.expose_upstream
    names = [
        "Content-Type",
        "X-Trace",
        "Set-Cookie",
        "Access-Control-Allow-Origin",
        "Transfer-Encoding",
        "x-trace",
        "ETag",
    ]
    assert expose_value_for(names) == "Content-Type, X-Trace, ETag"
    assert expose_value_for(["Set-Cookie", "Connection"]) is None


def test_exact_origin_lookup_uses_a_set() -> None:
    """Cost must not grow with the number of exact origins: they live in a frozenset."""
    many = "\n".join(f"  - https://app{i}.example.com" for i in range(5000))
    big = policy(f"allow_origins:\n{many}\n")
    assert isinstance(big.origins.exact, frozenset)
    assert len(big.origins.exact) == 5000
    assert big.origins.patterns == () and big.origins.regexes == ()
    allowed = decide(big, facts(origin="https://app4999.example.com"))
    assert allowed.verdict is Verdict.ALLOWED
