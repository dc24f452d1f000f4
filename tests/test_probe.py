"""`corsproxy probe` against a server that is NOT corsproxy.

A plain aiohttp app on 127.0.0.1 answers the preflight and the actual request with headers
set by hand from a table; each row carries the verdict the Fetch Standard gives, the check
its reason must name, and what the server must have seen: the OPTIONS request exactly as a
browser sends it (no credentials, exact Access-Control-Request-Headers), and no actual
request after a failed preflight.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from conftest import serving
from multidict import CIMultiDict
from procutil import clean_env, corsproxy_cmd, free_port

from corsproxy.engine import browser
from corsproxy.tools.probe import ProbeError, ProbeResult, as_dict, format_text, probe, to_json

ORIGIN = "https://app.test"
ACAO = "Access-Control-Allow-Origin"
ACAC = "Access-Control-Allow-Credentials"
ACAM = "Access-Control-Allow-Methods"
ACAH = "Access-Control-Allow-Headers"
ACEH = "Access-Control-Expose-Headers"
ACMA = "Access-Control-Max-Age"
Pairs = list[tuple[str, str]]


@dataclass
class Seen:
    method: str
    headers: Pairs

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class HandSet:
    """Answers OPTIONS with ``preflight`` and everything else with ``actual``."""

    preflight: tuple[int, Pairs] = (404, [])
    actual: tuple[int, Pairs] = (200, [])
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.seen.append(Seen(request.method, list(request.headers.items())))
        status, pairs = self.preflight if request.method == "OPTIONS" else self.actual
        headers = CIMultiDict(pairs)
        if status in (204, 304) or request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, headers=headers, text="body")


@pytest.fixture
async def server() -> AsyncIterator[HandSet]:
    app = HandSet()
    async with serving(app.handle) as port:
        app.url = f"http://127.0.0.1:{port}/api/things?x=1"
        yield app


@dataclass(frozen=True)
class Case:
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    credentials: bool = False
    preflight: tuple[int, Pairs] | None = None  # None: the browser sends no preflight
    actual: tuple[int, Pairs] = (200, [])
    why: str = ""  # "" = allowed; else a fragment the reason must contain
    stage: str = "actual"
    acrh: str | None = None  # the exact Access-Control-Request-Headers expected


def ok(*extra: tuple[str, str], origin: str = ORIGIN) -> tuple[int, Pairs]:
    return 200, [(ACAO, origin), *extra]


def pre(status: int = 204, *pairs: tuple[str, str]) -> tuple[int, Pairs]:
    return status, list(pairs)


X = (("X-Custom", "1"),)
AUTH = (("Authorization", "Bearer t"),)
JSON_CT = (("Content-Type", "application/json"),)
P = pytest.param

CASES = [
    # --- no preflight: simple requests, the CORS check on the actual response --------------
    P(Case(actual=ok()), id="acao-exact"),
    P(Case(actual=(200, [(ACAO, "*")])), id="acao-star"),
    P(
        Case(actual=(200, [(ACAO, "https://APP.test")]), why="not the page's origin"),
        id="acao-wrong-case",
    ),
    P(
        Case(actual=(200, [(ACAO, ORIGIN + "/")]), why="not the page's origin"),
        id="acao-trailing-slash",
    ),
    P(
        Case(actual=(200, [(ACAO, ORIGIN), (ACAO, ORIGIN)]), why="several values"),
        id="acao-two-headers",
    ),
    P(
        Case(actual=(200, [(ACAO, f"{ORIGIN}, https://b.test")]), why="several values"),
        id="acao-two-values-one-header",
    ),
    P(Case(actual=(200, []), why="no Access-Control-Allow-Origin"), id="acao-absent"),
    P(Case(actual=(200, [(ACAO, "null")]), why="not the page's origin"), id="acao-null"),
    P(Case(credentials=True, actual=ok((ACAC, "true"))), id="creds-acao-exact-acac-true"),
    P(
        Case(credentials=True, actual=ok((ACAC, "True")), why="Access-Control-Allow-Credentials"),
        id="creds-acac-True",
    ),
    P(
        Case(credentials=True, actual=ok(), why="Access-Control-Allow-Credentials is absent"),
        id="creds-acac-absent",
    ),
    P(
        Case(credentials=True, actual=(200, [(ACAO, "*"), (ACAC, "true")]), why="'*'"),
        id="creds-acao-star",
    ),
    P(Case(actual=ok((ACAC, "True"))), id="no-creds-acac-ignored"),
    P(Case(actual=(500, [(ACAO, ORIGIN)])), id="error-status-with-acao-readable"),
    P(Case(actual=(404, []), why="no Access-Control-Allow-Origin"), id="error-status-no-acao"),
    P(
        Case("POST", (("Content-Type", "text/plain;charset=UTF-8"),), actual=ok()),
        id="post-text-plain-no-preflight",
    ),
    P(
        Case("HEAD", (("Range", "bytes=0-1"), ("Accept-Language", "de")), actual=ok()),
        id="head-safelisted-headers-no-preflight",
    ),
    P(Case("get", actual=ok()), id="get-normalised-no-preflight"),
    # --- preflighted: judge_preflight on the OPTIONS answer, then the CORS check -----------
    P(
        Case("PUT", preflight=pre(204, (ACAO, ORIGIN), (ACAM, "PUT")), actual=ok()),
        id="put-acam-listed",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "GET, POST")),
            why="method PUT is not in Access-Control-Allow-Methods",
            stage="preflight",
        ),
        id="put-acam-without-method",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "put")),
            why="Access-Control-Allow-Methods",
            stage="preflight",
        ),
        id="put-acam-wrong-case",
    ),
    P(
        Case(
            "DELETE",
            preflight=pre(204, (ACAO, ORIGIN)),
            why="Access-Control-Allow-Methods",
            stage="preflight",
        ),
        id="delete-acam-absent",
    ),
    P(
        Case("DELETE", preflight=pre(204, (ACAO, ORIGIN), (ACAM, "*")), actual=ok()),
        id="delete-acam-star",
    ),
    P(
        Case(
            "DELETE",
            credentials=True,
            preflight=pre(204, (ACAO, ORIGIN), (ACAC, "true"), (ACAM, "*")),
            why="'*' does not count with credentials",
            stage="preflight",
        ),
        id="creds-acam-star-literal",
    ),
    P(
        Case("PATCH", preflight=pre(204, (ACAO, ORIGIN), (ACAM, "GET, PATCH")), actual=ok()),
        id="patch-acam-listed",
    ),
    P(
        Case(
            "POST",
            X,
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "PUT"), (ACAH, "x-custom")),
            actual=ok(),
            acrh="x-custom",
        ),
        id="safelisted-method-need-not-be-listed",
    ),
    P(
        Case(
            headers=X,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "X-Custom")),
            actual=ok(),
            acrh="x-custom",
        ),
        id="acah-listed",
    ),
    P(
        Case(
            headers=X,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "x-other")),
            why="header x-custom is not in Access-Control-Allow-Headers",
            stage="preflight",
            acrh="x-custom",
        ),
        id="acah-without-header",
    ),
    P(
        Case(
            headers=X,
            preflight=pre(204, (ACAO, ORIGIN)),
            why="Access-Control-Allow-Headers",
            stage="preflight",
            acrh="x-custom",
        ),
        id="acah-absent",
    ),
    P(
        Case(
            headers=X, preflight=pre(204, (ACAO, ORIGIN), (ACAH, "*")), actual=ok(), acrh="x-custom"
        ),
        id="acah-star",
    ),
    P(
        Case(
            headers=X,
            credentials=True,
            preflight=pre(204, (ACAO, ORIGIN), (ACAC, "true"), (ACAH, "*")),
            why="'*' does not count with credentials",
            stage="preflight",
            acrh="x-custom",
        ),
        id="creds-acah-star-literal",
    ),
    P(
        Case(
            headers=AUTH,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "*")),
            why="authorization must be listed by name",
            stage="preflight",
            acrh="authorization",
        ),
        id="acah-star-never-covers-authorization",
    ),
    P(
        Case(
            headers=AUTH,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "*, Authorization")),
            actual=ok(),
            acrh="authorization",
        ),
        id="acah-star-and-authorization",
    ),
    P(
        Case(
            headers=AUTH,
            credentials=True,
            preflight=pre(204, (ACAO, ORIGIN), (ACAC, "true"), (ACAH, "authorization")),
            actual=ok((ACAC, "true")),
            acrh="authorization",
        ),
        id="creds-authorization-listed",
    ),
    P(
        Case(
            "POST",
            JSON_CT,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "content-type")),
            actual=ok(),
            acrh="content-type",
        ),
        id="json-content-type-listed",
    ),
    P(
        Case(
            "POST",
            JSON_CT,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "x-custom")),
            why="header content-type is not in",
            stage="preflight",
            acrh="content-type",
        ),
        id="json-content-type-not-listed",
    ),
    P(
        Case(
            "PUT",
            (("X-B", "1"), ("X-A", "2"), *JSON_CT),
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "PUT"), (ACAH, "X-A, X-B, Content-Type")),
            actual=ok(),
            acrh="content-type,x-a,x-b",
        ),
        id="acrh-lowercase-sorted-no-spaces",
    ),
    P(
        Case(
            headers=(("X-A", "1"), ("X-B", "2")),
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "x-a")),
            why="header x-b",
            stage="preflight",
            acrh="x-a,x-b",
        ),
        id="acah-lists-only-one-of-two",
    ),
    P(
        Case("PUT", preflight=pre(200, (ACAO, ORIGIN), (ACAM, "PUT")), actual=ok()),
        id="preflight-200",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(301, (ACAO, ORIGIN), (ACAM, "PUT"), ("Location", "/elsewhere")),
            why="not an ok status",
            stage="preflight",
        ),
        id="preflight-301-redirect-fails",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(403, (ACAO, ORIGIN), (ACAM, "PUT")),
            why="not an ok status",
            stage="preflight",
        ),
        id="preflight-403",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(500, (ACAO, ORIGIN), (ACAM, "PUT")),
            why="not an ok status",
            stage="preflight",
        ),
        id="preflight-500",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAM, "PUT")),
            why="preflight: no Access-Control-Allow-Origin",
            stage="preflight",
        ),
        id="preflight-acao-absent",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAO, "https://App.test"), (ACAM, "PUT")),
            why="preflight: Access-Control-Allow-Origin",
            stage="preflight",
        ),
        id="preflight-acao-wrong-case",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAO, ORIGIN), (ACAO, "*"), (ACAM, "PUT")),
            why="several values",
            stage="preflight",
        ),
        id="preflight-acao-two-headers",
    ),
    P(
        Case(
            "PUT",
            credentials=True,
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "PUT")),
            why="Access-Control-Allow-Credentials",
            stage="preflight",
        ),
        id="creds-preflight-acac-absent",
    ),
    P(
        Case(
            "PUT",
            credentials=True,
            preflight=pre(204, (ACAO, "*"), (ACAC, "true"), (ACAM, "PUT")),
            why="'*'",
            stage="preflight",
        ),
        id="creds-preflight-acao-star",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "GET PUT")),
            why="not a token",
            stage="preflight",
        ),
        id="preflight-acam-invalid-token",
    ),
    P(
        Case(
            headers=X,
            preflight=pre(204, (ACAO, ORIGIN), (ACAH, "x-custom;")),
            why="not a token",
            stage="preflight",
            acrh="x-custom",
        ),
        id="preflight-acah-invalid-token",
    ),
    P(
        Case(
            "PUT",
            preflight=pre(204, (ACAO, ORIGIN), (ACAM, "PUT")),
            actual=(200, []),
            why="no Access-Control-Allow-Origin",
        ),
        id="preflight-ok-actual-acao-absent",
    ),
    P(
        Case(
            "PUT",
            credentials=True,
            preflight=pre(204, (ACAO, ORIGIN), (ACAC, "true"), (ACAM, "PUT")),
            actual=ok(),
            why="Access-Control-Allow-Credentials is absent",
        ),
        id="creds-preflight-ok-actual-acac-absent",
    ),
    P(
        Case(
            actual=(302, [(ACAO, ORIGIN), ("Location", "https://other.test/x")]),
            why="not verified: the server redirects (302)",
        ),
        id="actual-redirect-reported",
    ),
    P(
        Case(actual=(302, [("Location", "/x")]), why="on the 302 redirect response"),
        id="actual-redirect-without-acao",
    ),
]


@pytest.mark.parametrize("case", CASES)
async def test_probe_verdicts(server: HandSet, case: Case) -> None:
    server.preflight = case.preflight or (404, [])
    server.actual = case.actual
    request = browser.Request(ORIGIN, case.method, case.headers, case.credentials)
    result = await probe(server.url, request, timeout=5)

    walk = result.walk
    assert result.allowed is (case.why == ""), result.reason
    assert case.why in result.reason
    assert walk.stage == case.stage
    assert (walk.preflight is not None) is (case.preflight is not None)
    planned = walk.plan
    exchanges = [(step.sent.method, step.response.status) for step in walk.steps]

    seen = list(server.seen)
    if case.preflight is not None:
        options = seen.pop(0)
        assert options.method == "OPTIONS"
        assert options.get("Origin") == ORIGIN
        assert options.get("Access-Control-Request-Method") == planned.method
        assert options.get("Access-Control-Request-Headers") == case.acrh
        assert options.get("Accept") == "*/*"
        for never in ("Cookie", "Authorization", "Content-Type", "X-Custom"):
            assert options.get(never) is None, never
        assert exchanges[0] == ("OPTIONS", case.preflight[0])
    if case.stage == "preflight":
        assert seen == [], "no actual request after a failed preflight"
        assert len(exchanges) == 1 and walk.actual is None
        return
    (actual,) = seen
    assert actual.method == planned.method
    assert actual.get("Origin") == ORIGIN
    for name, value in planned.headers:
        assert actual.get(name) == value
    assert actual.get("Cookie") is None
    assert exchanges[-1] == (planned.method, case.actual[0])
    assert walk.actual is not None
    if result.allowed and planned.method != "HEAD":
        assert "content-type" in [n.lower() for n in walk.actual.readable]
    if not result.allowed:
        assert walk.actual.readable == ()


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40


# --- what JavaScript may read ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "expose", "readable"),
    [
        P(False, None, {"content-type", "content-length"}, id="safelisted-only"),
        P(False, "X-Request-ID", {"content-type", "content-length", "x-request-id"}, id="exposed"),
        P(
            False,
            "*",
            {"content-type", "content-length", "x-request-id", "date", "server", ACEH.lower()}
            | {ACAO.lower(), ACAC.lower()},
            id="star-without-credentials",
        ),
        P(True, "*", {"content-type", "content-length"}, id="star-literal-with-credentials"),
        P(
            True,
            "Set-Cookie, x-request-id",
            {"content-type", "content-length", "x-request-id"},
            id="set-cookie-never",
        ),
    ],
)
async def test_probe_readable_headers(
    server: HandSet, credentials: bool, expose: str | None, readable: set[str]
) -> None:
    pairs = [(ACAO, ORIGIN), (ACAC, "true"), ("X-Request-ID", "7"), ("Set-Cookie", "s=1")]
    if expose is not None:
        pairs.append((ACEH, expose))
    server.actual = (200, pairs)
    result = await probe(server.url, browser.Request(ORIGIN, credentials=credentials))
    assert result.allowed, result.reason
    assert result.walk.actual is not None
    assert {n.lower() for n in result.walk.actual.readable} == readable


async def test_probe_reports_max_age_caps(server: HandSet) -> None:
    server.preflight = pre(204, (ACAO, ORIGIN), (ACAM, "PUT"), (ACMA, "86401"))
    server.actual = ok()
    result = await probe(server.url, browser.Request(ORIGIN, "PUT"))
    assert result.allowed and result.walk.preflight is not None
    assert result.walk.preflight.max_age == (86401, 7200, 86400)
    assert "Chromium 7200 s, Firefox 86400 s" in format_text(result)


async def test_forbidden_headers_are_not_sent_and_forbidden_method_sends_nothing(
    server: HandSet,
) -> None:
    server.actual = ok()
    asked = (("Cookie", "a=1"), ("Host", "evil.test"), ("Sec-Fetch-Mode", "no-cors"))
    result = await probe(server.url, browser.Request(ORIGIN, "GET", asked))
    assert result.allowed and result.walk.preflight is None
    assert server.seen[0].get("Cookie") is None
    assert server.seen[0].get("Sec-Fetch-Mode") is None
    assert server.seen[0].get("Host") != "evil.test"
    assert "Cookie" in format_text(result)

    server.seen.clear()
    result = await probe(server.url, browser.Request(ORIGIN, "TRACE"))
    assert not result.allowed and result.walk.stage == "fetch"
    assert "forbidden method" in result.reason
    assert server.seen == [] and result.walk.steps == ()


# --- the literal method on the wire: `patch` stays `patch` -----------------------------------


async def test_lowercase_patch_is_sent_as_is() -> None:
    lines: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.decode("latin-1").split("\r\n", 1)[0])
        writer.write(
            b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: "
            + ORIGIN.encode()
            + b"\r\nAccess-Control-Allow-Methods: patch\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        result = await probe(f"http://127.0.0.1:{port}/p", browser.Request(ORIGIN, "patch"))
    finally:
        raw.close()
        await raw.wait_closed()
    assert result.allowed, result.reason
    assert lines == ["OPTIONS /p HTTP/1.1", "patch /p HTTP/1.1"]


# --- nothing to judge: ProbeError ------------------------------------------------------------


async def test_closed_port_and_bad_url_raise_probe_error() -> None:
    with pytest.raises(ProbeError, match="cannot connect"):
        await probe(f"http://127.0.0.1:{free_port()}/", browser.Request(ORIGIN))
    with pytest.raises(ProbeError, match="bad URL"):
        await probe("ftp://example.test/", browser.Request(ORIGIN))


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    raw = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield raw.sockets[0].getsockname()[1]
    for writer in writers:
        writer.close()
    raw.close()
    await raw.wait_closed()


async def test_timeout_raises_probe_error(silent_port: int) -> None:
    with pytest.raises(ProbeError, match=r"no answer within 0\.2 s"):
        await probe(f"http://127.0.0.1:{silent_port}/", browser.Request(ORIGIN), timeout=0.2)


# --- text and JSON ---------------------------------------------------------------------------


async def test_text_and_json_traces(server: HandSet) -> None:
    server.preflight = pre(204, (ACAO, ORIGIN), (ACAM, "PUT"), (ACAH, "x-custom"), ("X-Noise", "1"))
    server.actual = ok((ACEH, "X-Custom"), ("X-Custom", "v"))
    result = await probe(server.url, browser.Request(ORIGIN, "PUT", X))
    text = format_text(result)
    assert "> OPTIONS " + server.url in text
    assert "> Access-Control-Request-Headers: x-custom" in text
    assert "< 204 No Content" in text
    assert "< Access-Control-Allow-Methods: PUT" in text
    assert "X-Noise" not in text  # only the relevant response headers
    assert "> PUT " + server.url in text
    assert text.splitlines()[-2] == "verdict: allowed"
    assert text.splitlines()[-1].startswith("readable by JavaScript: ")
    assert "X-Custom" in text.splitlines()[-1]

    data = json.loads(to_json(result))
    assert data == as_dict(result)
    assert data["allowed"] is True and data["verdict"] == "allowed"
    assert [e["method"] for e in data["exchanges"]] == ["OPTIONS", "PUT"]
    assert data["exchanges"][0]["status"] == 204
    assert ["Access-Control-Request-Headers", "x-custom"] in data["exchanges"][0]["request_headers"]
    assert data["preflight"] == {
        "needed": True,
        "reasons": list(result.walk.plan.reasons),
        "sent": True,
        "max_age": {"seconds": 5, "chromium": 5, "firefox": 5},
    }


async def test_blocked_text_ends_with_verdict(server: HandSet) -> None:
    result: ProbeResult = await probe(server.url, browser.Request(ORIGIN))
    assert format_text(result).splitlines()[-1] == (
        "verdict: blocked: no Access-Control-Allow-Origin header in the response"
    )


# --- the command line -------------------------------------------------------------------------


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *corsproxy_cmd("probe", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("corsproxy probe: error: "), err
    return lines[0]


async def test_cli_allowed_blocked_and_json(server: HandSet) -> None:
    server.preflight = pre(204, (ACAO, ORIGIN), (ACAM, "PUT"), (ACAH, "x-custom"))
    server.actual = ok()
    code, out, err = await cli(
        server.url, "--origin", ORIGIN, "--method", "PUT", "--header", "X-Custom: 1"
    )
    assert (code, err) == (0, ""), out
    assert "verdict: allowed" in out
    assert server.seen[0].get("Access-Control-Request-Headers") == "x-custom"
    assert server.seen[1].get("X-Custom") == "1"

    code, out, err = await cli(
        server.url, "--origin", ORIGIN, "--method", "PUT", "--header", "X-Other: 1", "--json"
    )
    assert code == 1 and err == ""
    data = json.loads(out)
    assert data["verdict"] == "blocked" and data["stage"] == "preflight"
    assert "x-other" in data["reason"]
    assert len(data["exchanges"]) == 1

    code, out, _ = await cli(server.url, "--origin", ORIGIN, "--credentials")
    assert code == 1
    assert out.splitlines()[-1].startswith("verdict: blocked: credentials were included")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        P(["--origin", ORIGIN, "--header", "Bad Name: 1"], "expected 'Name", id="header"),
        P(["--origin", "https://app.test/path"], "is not an origin", id="origin"),
        P(["--origin", ORIGIN, "--method", "GE T"], "not an HTTP method", id="method"),
        P(["--origin", ORIGIN, "--timeout", "0"], "must be more than 0", id="timeout-value"),
        P([], "--origin", id="missing-origin"),
    ],
)
async def test_cli_bad_arguments_exit_2(server: HandSet, args: list[str], fragment: str) -> None:
    code, out, err = await cli(server.url, *args)
    assert code == 2 and out == ""
    assert fragment in one_line_error(err)
    assert server.seen == []


async def test_cli_bad_url_closed_port_and_timeout_exit_2(silent_port: int) -> None:
    code, out, err = await cli("not a url", "--origin", ORIGIN)
    assert code == 2 and out == ""
    assert "bad URL" in one_line_error(err)

    port = free_port()
    code, out, err = await cli(f"http://127.0.0.1:{port}/", "--origin", ORIGIN)
    assert code == 2 and out == ""
    assert one_line_error(err) == (
        f"corsproxy probe: error: cannot connect to 127.0.0.1:{port}: Connection refused"
    )

    code, out, err = await cli(
        f"http://127.0.0.1:{silent_port}/", "--origin", ORIGIN, "--timeout", "0.3"
    )
    assert code == 2 and out == ""
    assert "no answer within 0.3 s" in one_line_error(err)


def test_bare_header_name_is_sent_with_an_empty_value() -> None:
    """`--header NAME` with a bare name is a header with an empty value."""
    from corsproxy.tools.cli import browser_request as build_request

    request = build_request(ORIGIN, "GET", ["X-Bare", "X-Set: 1"], False)
    assert request.headers == (("X-Bare", ""), ("X-Set", "1"))
