"""``corsproxy suggest``: access-log lines in, the tightest rules that serve them out.

The pure part (corsproxy/config/suggest.py) is table-tested; the whole loop runs against the real
proxy: report_only in front of an upstream, a recorded mix of browser requests, its JSON
access log, ``suggest``, then the suggested rules enforced and judged by ``explain`` and by
a replay through the proxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from aiohttp import web
from procutil import REPO, clean_env, corsproxy_cmd, eventually, free_port, run, wait_port

from corsproxy.config import suggest
from corsproxy.config.load import parse_settings
from corsproxy.engine import browser
from corsproxy.engine.explain import explain

T0 = "2026-03-01T10:00:00Z"


def line(
    route: str,
    origin: str | None,
    kind: str = "actual",
    method: str = "GET",
    asked: tuple[str | None, str | None] = (None, None),
    credentials: bool | None = False,
    time_: str = T0,
) -> str:
    entry = {
        "time": time_,
        "client": "127.0.0.1",
        "method": method,
        "path": "/x",
        "status": 200,
        "route": route,
        "origin": origin,
        "kind": kind,
        "decision": "would_allow",
        "reason": "",
        "request_method": asked[0],
        "request_headers": asked[1],
        "credentials": credentials,
    }
    return json.dumps(entry, separators=(",", ":"))


def preflight(route: str, origin: str, method: str, headers: str = "", **kw: object) -> str:
    return line(route, origin, "preflight", "OPTIONS", (method, headers), **kw)  # type: ignore[arg-type]


REFS = [suggest.PolicyRef("defaults", ("default",)), suggest.PolicyRef("routes[0]", ("api",))]


def plan_of(lines: list[str], min_count: int = 1) -> suggest.Plan:
    obs = suggest.Observations()
    for text in lines:
        obs.add_line(text)
    return suggest.plan(obs, REFS, min_count)[1]


def reasons(p: suggest.Plan) -> dict[str, str]:
    return {e.value: e.note for e in p.risky}


# --- the pure part: table tests ---------------------------------------------------------

A, B = "https://app.example.com", "https://admin.example.com"


@dataclass(frozen=True)
class Case:
    name: str
    lines: list[str]
    min_count: int
    origins: list[str]
    methods: list[str]
    headers: list[str]
    credentials: bool
    risky: dict[str, str]  # origin -> a word of the reason
    rare: list[str] = ()  # type: ignore[assignment]


CASES = [
    Case("nothing seen", [], 1, [], [], [], False, {}),
    Case(
        "one origin, simple GET",
        [line("api", A)] * 3,
        1,
        [A],
        ["GET"],
        [],
        False,
        {},
    ),
    Case(
        "preflight method and headers, sorted and lowercased",
        [preflight("api", A, "PUT", "X-Api-Key,content-type"), line("api", A, method="PUT")],
        1,
        [A],
        ["PUT"],
        ["content-type", "x-api-key"],
        False,
        {},
    ),
    Case(
        "credentials from an actual request",
        [line("api", A, credentials=True)],
        1,
        [A],
        ["GET"],
        [],
        True,
        {},
    ),
    Case(
        "below --min-count: a comment, not a rule",
        [line("api", A)] * 3 + [line("api", B, method="DELETE")],
        2,
        [A],
        ["GET"],
        [],
        False,
        {},
        [B],
    ),
    Case(
        "a rare method of a common origin is not suggested",
        [line("api", A)] * 3 + [line("api", A, method="DELETE")],
        2,
        [A],
        ["GET"],
        [],
        False,
        {},
    ),
    Case("null", [line("api", "null")] * 5, 1, [], [], [], False, {"null": "sandboxed"}),
    Case(
        "http:// with cookies",
        [line("api", "http://app.example.com", credentials=True)] * 5,
        1,
        [],
        [],
        [],
        False,
        {"http://app.example.com": "credentials"},
    ),
    Case(
        "http:// without credentials on a route that allows them",
        [line("api", A, credentials=True), line("api", "http://dev.example.com")],
        1,
        [A],
        ["GET"],
        [],
        True,
        {"http://dev.example.com": "allows credentials"},
    ),
    Case(
        "http:// on a route without credentials is an ordinary origin",
        [line("api", "http://localhost:5173")],
        1,
        ["http://localhost:5173"],
        ["GET"],
        [],
        False,
        {},
    ),
    Case(
        "IP addresses",
        [line("api", "https://10.0.0.1"), line("api", "http://[::1]:8000")],
        1,
        [],
        [],
        [],
        False,
        {"https://10.0.0.1": "IP address", "http://[::1]:8000": "IP address"},
    ),
    Case(
        "a suffix look-alike, even a frequent one",
        [line("api", A)] * 2 + [line("api", A + ".evil.io", credentials=True)] * 9,
        2,
        [A],
        ["GET"],
        [],
        False,
        {A + ".evil.io": "suffix"},
    ),
    Case(
        "methods and credentials of risky origins are not counted",
        [line("api", A), line("api", "null", method="DELETE", credentials=True)],
        1,
        [A],
        ["GET"],
        [],
        False,
        {"null": "sandboxed"},
    ),
    Case(
        "an origin no browser sends is ignored, escaped in its comment",
        [line("api", "HTTPS://App.Example.com"), line("api", "https://a.test\n- x")],
        1,
        [],
        [],
        [],
        False,
        {'"HTTPS://App.Example.com"': "serialised", '"https://a.test\\n- x"': "serialised"},
    ),
    Case(
        "a WebSocket handshake adds its origin, no method",
        [line("api", A, kind="websocket")],
        1,
        [A],
        [],
        [],
        False,
        {},
    ),
    Case(
        "not CORS, other routes and non-JSON lines are ignored",
        [
            line("api", None, kind="none"),
            line("api", A, kind="none"),
            line("other", B),
            "time=x kind=actual",
        ],
        1,
        [],
        [],
        [],
        False,
        {},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plan_table(case: Case) -> None:
    p = plan_of(case.lines, case.min_count)
    assert p.suggested_origins == case.origins
    assert [e.value for e in p.methods] == case.methods
    assert [e.value for e in p.headers] == case.headers
    assert (p.credentials is not None) == case.credentials
    got = reasons(p)
    assert set(got) == set(case.risky), got
    for origin, word in case.risky.items():
        assert word in got[origin], got[origin]
    assert [e.value for e in p.comments("allow_origins")] == list(case.rare)


def test_counts_and_first_last_time() -> None:
    lines = [
        line("api", A, time_="2026-03-01T10:00:05Z"),
        line("api", A, time_="2026-03-01T09:00:00Z"),
        line("api", A, time_="2026-03-02T00:00:00Z"),
    ]
    [entry] = plan_of(lines).origins
    assert (entry.stat.count, entry.stat.first, entry.stat.last) == (
        3,
        "2026-03-01T09:00:00Z",
        "2026-03-02T00:00:00Z",
    )


def test_since_skips_older_lines() -> None:
    obs = suggest.Observations(since="2026-03-01T10:00:00Z")
    obs.add_line(line("api", A, time_="2026-03-01T09:59:59Z"))
    obs.add_line(line("api", B, time_="2026-03-01T10:00:00Z"))
    assert suggest.plan(obs, REFS)[1].suggested_origins == [B]
    assert obs.older == 1


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert suggest.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "1y", "h", "-1h", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        suggest.parse_duration(text)


def test_ten_subdomains_offer_a_wildcard_as_a_comment_only() -> None:
    lines = [line("api", f"https://s{i}.shop.example.com") for i in range(10)]
    p = plan_of(lines)
    assert [e.value for e in p.wildcards] == ["https://*.shop.example.com"]
    assert len(p.origins) == 10
    nine = plan_of(lines[:9])
    assert nine.wildcards == []


def test_keys_are_bounded() -> None:
    obs = suggest.Observations(max_keys=10)
    for i in range(100):
        obs.add_line(line("api", f"https://o{i}.example.com"))
    assert len(obs.counts) == 10 and obs.untracked == 90 and obs.cors_requests == 100


# --- the pure part: rendering into the file --------------------------------------------

FILE = """\
# top comment
upstream: http://127.0.0.1:9
defaults:
  report_only: true
  allow_origins: ["*"]   # for now
  max_age: 600
routes:
  - path: /api/**
    name: api
    cors:
      allow_origins:
        - https://old.example.com
      # a comment inside the route
      expose_headers: [X-Request-ID]
  - path: /flow/**
    name: flow
    cors: {max_age: 5, allow_methods: [GET]}
  - path: /bare/**
    name: bare
  - path: /pass/**
    cors: passthrough
"""


def render(lines: list[str], text: str = FILE, min_count: int = 1) -> str:
    settings, _ = parse_settings(text, "f.yaml")
    refs = [suggest.PolicyRef("defaults", ("default",))]
    refs += [
        suggest.PolicyRef(f"routes[{i}]", (r.name,))
        for i, r in enumerate(settings.table.routes)
        if r.policy is not None
    ]
    obs = suggest.Observations()
    for text_line in lines:
        obs.add_line(text_line)
    return suggest.render(text, suggest.plan(obs, refs, min_count))


def test_render_keeps_the_rest_of_the_file_and_passes_check() -> None:
    out = render(
        [
            line("api", A, credentials=True),
            preflight("api", A, "PUT", "content-type"),
            line("flow", B, method="POST"),
            line("default", "https://x.example.org"),
        ]
    )
    settings, _ = parse_settings(out, "f.yaml")  # raises if check would refuse it
    for kept in (
        "# top comment",
        "  report_only: true",
        "  max_age: 600",
        "      # a comment inside the route",
        "      expose_headers: [X-Request-ID]",
        "    cors: passthrough",
    ):
        assert kept + "\n" in out, kept
    assert "old.example.com" not in out and '["*"]' not in out
    api, flow, bare, _ = settings.table.routes
    assert api.policy.origins.exact == {A} and api.policy.allow_credentials
    assert api.policy.methods == {"GET", "PUT"} and api.policy.headers == {"content-type"}
    assert flow.policy.origins.exact == {B} and flow.policy.max_age == 5
    assert flow.policy.methods == {"POST"}
    assert bare.policy.origins.empty
    assert settings.table.fallback.policy.origins.exact == {"https://x.example.org"}


def test_render_comments_carry_counts_times_and_reasons() -> None:
    out = render(
        [line("api", A)] * 3 + [line("api", "null"), line("api", B)],
        min_count=2,
    )
    assert f"        - {A}  # 3 requests, seen {T0}" in out
    assert re.search(r"# not suggested \(below --min-count 2\): " + re.escape(B), out)
    assert re.search(r"# RISKY, not suggested: null  \(1 request, seen .*\): null is sent", out)


def test_render_appends_defaults_when_the_file_has_none() -> None:
    text = "upstream: http://127.0.0.1:9\n"
    out = render([line("default", A)], text)
    settings, _ = parse_settings(out, "f.yaml")
    assert settings.table.fallback.policy.origins.exact == {A}
    assert out.startswith(text)


def test_diff_is_unified() -> None:
    out = render([line("api", A)])
    d = suggest.diff(FILE, out, "f.yaml")
    assert d.startswith("--- f.yaml\n+++ f.yaml (suggested)\n@@")
    assert "-        - https://old.example.com\n" in d


# --- the whole loop against the real proxy ----------------------------------------------

REPORT_ONLY = """\
upstream: {upstream}
access_log: json
defaults:
  report_only: true
  allow_origins: ["*"]
  allow_methods: ["*"]
  allow_headers: ["*"]
routes:
  - path: /api/**
    name: api
  - path: /public/**
    name: public
"""


@dataclass(frozen=True)
class Fetch:
    """One fetch() of a page, as a browser sends it (a preflight first when it needs one)."""

    origin: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    credentials: bool = False
    times: int = 3

    @property
    def request(self) -> browser.Request:
        return browser.Request(self.origin, self.method, self.headers, self.credentials)


JSON = (("Content-Type", "application/json"),)
MIX = [
    # three allowed origins with different methods and headers; credentials on /api only
    Fetch("https://app.example.com", "GET", "/api/orders", credentials=True, times=5),
    Fetch(
        "https://app.example.com",
        "PUT",
        "/api/orders/1",
        (*JSON, ("X-Api-Key", "k")),
        credentials=True,
        times=4,
    ),
    Fetch("https://admin.example.com", "DELETE", "/api/orders/2", credentials=True),
    Fetch("https://docs.example.org", "GET", "/public/status", times=4),
    Fetch("https://docs.example.org", "POST", "/public/search", (("X-Trace", "1"),)),
    # risky ones
    Fetch("null", "GET", "/public/status"),
    Fetch("http://app.example.com", "GET", "/api/orders", credentials=True),
    Fetch("https://app.example.com.evil.io", "GET", "/api/orders", credentials=True),
    # noise below the threshold
    Fetch("https://rare.example.net", "GET", "/api/orders", times=1),
    Fetch("https://rare.example.net", "PATCH", "/public/x", JSON, times=1),
]
SUGGESTED = {
    "api": {"https://app.example.com", "https://admin.example.com"},
    "public": {"https://docs.example.org"},
}


async def send(client, url: str, fetch: Fetch) -> bool:  # type: ignore[no-untyped-def]
    """Send ``fetch`` the way a browser would; True when the browser would let the page
    read the response (preflight passed, and the response carries a matching ACAO)."""
    plan = browser.plan(fetch.request)
    origin = {"Origin": fetch.origin}
    if plan.preflight:
        asked = {"Access-Control-Request-Method": plan.method}
        if plan.unsafe_names:
            asked["Access-Control-Request-Headers"] = ",".join(plan.unsafe_names)
        async with client.options(url + fetch.path, headers={**origin, **asked}) as r:
            await r.read()
            if r.status // 100 != 2 or r.headers.get("Access-Control-Allow-Origin") not in (
                fetch.origin,
                "*",
            ):
                return False
    headers = {**origin, **dict(fetch.headers)}
    if fetch.credentials:
        headers["Cookie"] = "session=s3cret"
    async with client.request(fetch.method, url + fetch.path, headers=headers) as r:
        await r.read()
        acao = r.headers.get("Access-Control-Allow-Origin")
        ok = r.status == 200 and acao == fetch.origin
        if fetch.credentials:
            ok = ok and r.headers.get("Access-Control-Allow-Credentials") == "true"
        return ok


async def allows_every_origin(request: web.BaseRequest) -> web.StreamResponse:
    """The API being migrated: it reflects any origin, with credentials, and answers
    every preflight yes (the mistake the CORS guides warn about most)."""
    headers = {
        "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
        "Access-Control-Allow-Credentials": "true",
    }
    if request.method == "OPTIONS":
        headers["Access-Control-Allow-Methods"] = request.headers.get(
            "Access-Control-Request-Method", ""
        )
        headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", ""
        )
        return web.Response(status=204, headers=headers)
    return web.Response(text="ok", headers=headers)


async def read_log(
    capsys: pytest.CaptureFixture[str], count: int, timeout: float = 5.0
) -> list[str]:
    """The access-log lines printed so far, once there are ``count`` (or the deadline)."""
    lines: list[str] = []

    def enough() -> bool:
        lines.extend(x for x in capsys.readouterr().out.splitlines() if x.startswith("{"))
        return len(lines) >= count

    with contextlib.suppress(AssertionError):  # the caller's count check says what is missing
        await eventually(enough, timeout, f"{count} access-log lines")
    return lines


async def test_suggest_from_a_report_only_run_allows_the_mix_and_nothing_else(
    upstream, make_proxy, client, capsys, tmp_path: Path
) -> None:
    upstream.handler = allows_every_origin
    shadow = await make_proxy(REPORT_ONLY, upstream=upstream.url)
    capsys.readouterr()
    expected_lines = 0
    for fetch in MIX:
        for _ in range(fetch.times):
            assert await send(client, shadow.url, fetch) is True  # the API's own answers
            expected_lines += 2 if browser.plan(fetch.request).preflight else 1
    log = await read_log(capsys, expected_lines)
    assert len(log) == expected_lines
    entries = [json.loads(x) for x in log]
    put = [e for e in entries if e["kind"] == "preflight" and e["request_method"] == "PUT"]
    assert put[0]["request_headers"] == "content-type,x-api-key"
    cookie_gets = [e for e in entries if e["origin"] == "http://app.example.com"]
    assert cookie_gets and all(e["credentials"] is True for e in cookie_gets)
    assert all(
        e["credentials"] is False for e in entries if e["origin"] == "https://docs.example.org"
    )
    (tmp_path / "access.log").write_text("\n".join(log) + "\n")
    config = tmp_path / "corsproxy.yaml"

    done = run(["suggest", "-c", str(config), "--from", str(tmp_path / "access.log"),
                "--min-count", "3"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    suggested = done.stdout
    print(suggested, file=sys.stderr)  # the closing note quotes it (pytest -s)
    (tmp_path / "suggested.yaml").write_text(suggested)
    checked = run(["check", "-c", str(tmp_path / "suggested.yaml")])
    assert checked.returncode == 0, checked.stderr

    # the risky ones are commented with their reasons, never rules
    for origin, word in (
        ("null", "sandboxed iframes"),
        ("http://app.example.com", "sent credentials"),
        ("https://app.example.com.evil.io", "only by a suffix"),
    ):
        assert re.search(rf"# RISKY, not suggested: {re.escape(origin)} .*{word}", suggested)
    rare = r"# not suggested \(below --min-count 3\): https://rare\.example\.net"
    assert re.search(rare, suggested)

    enforced = suggested.replace("  report_only: true\n", "")
    settings, _ = parse_settings(enforced, str(tmp_path / "enforced.yaml"))
    by_name = {r.name: r for r in settings.table.routes}
    for name, origins in SUGGESTED.items():
        assert by_name[name].policy.origins.exact == origins
        assert not by_name[name].policy.report_only
    assert by_name["api"].policy.allow_credentials
    assert not by_name["public"].policy.allow_credentials

    proxy = await make_proxy(enforced)
    for fetch in MIX:
        route = fetch.path.split("/")[1]
        want = fetch.origin in SUGGESTED[route]
        verdict = explain(settings, fetch.request, fetch.path)
        assert verdict.allowed is want, (fetch, verdict.reason)
        assert await send(client, proxy.url, fetch) is want, fetch


def test_suggest_bad_arguments_and_configs_exit_2(tmp_path: Path) -> None:
    good = tmp_path / "ok.yaml"
    good.write_text("upstream: http://127.0.0.1:9\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: http://127.0.0.1:9\ndefaults:\n  allow_orgins: []\n")
    for args in (
        ["suggest", "-c", str(bad), "--from", os.devnull],
        ["suggest", "-c", str(good), "--from", str(tmp_path / "missing.log")],
        ["suggest", "-c", str(good), "--min-count", "0", "--from", os.devnull],
        ["suggest", "-c", str(good), "--since", "yesterday", "--from", os.devnull],
        ["suggest", "-c", str(tmp_path / "nope.yaml"), "--from", os.devnull],
    ):
        done = run(args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


def test_suggest_reads_stdin_and_diffs(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(FILE)
    log = "\n".join([line("api", A)] * 2) + "\n"
    done = subprocess.run(
        corsproxy_cmd("suggest", "-c", str(config), "--diff"),
        input=log,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"--- {config}\n+++ {config} (suggested)\n")
    assert f"+        - {A}  # 2 requests" in done.stdout


# --- a million lines --------------------------------------------------------------------


def write_log(path: Path, lines: int) -> None:
    """A busy API's day: most lines same-origin, a few dozen origins, and a scan sending a
    new origin every 10th line (what would grow an unbounded table)."""
    origins = [f"https://app{i}.example.com" for i in range(40)] + ["null"]
    same = line("api", None, kind="none") + "\n"
    with path.open("w") as f:
        batch = []
        for i in range(lines):
            stamp = f"2026-03-01T{(i // 60000) % 24:02d}:{(i // 1000) % 60:02d}:00Z"
            if i % 3 == 0:
                batch.append(same)
            elif i % 5 == 1:
                batch.append(line("api", f"https://scan{i}.example.net", time_=stamp) + "\n")
            elif i % 7 == 0:
                origin = origins[i % len(origins)]
                batch.append(preflight("api", origin, "PUT", "content-type", time_=stamp) + "\n")
            else:
                origin = origins[i % len(origins)]
                batch.append(line("api", origin, credentials=i % 2 == 0, time_=stamp) + "\n")
            if len(batch) >= 10000:
                f.writelines(batch)
                batch = []
        f.writelines(batch)


def peak_rss(args: list[str], out_dir: Path) -> tuple[int, float, subprocess.CompletedProcess[str]]:
    """Run corsproxy; its peak RSS (sampled every 20 ms), wall time and output."""
    out_path, err_path = out_dir / "out.txt", out_dir / "err.txt"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            corsproxy_cmd(*args), stdout=out, stderr=err, env=clean_env(), cwd=REPO
        )
        ps = psutil.Process(proc.pid)
        peak = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, ps.memory_info().rss)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    elapsed = time.perf_counter() - started
    done = subprocess.CompletedProcess(args, proc.returncode, out_path.read_text(),
                                       err_path.read_text())  # fmt: skip
    return peak, elapsed, done


@pytest.mark.slow
def test_a_million_lines_in_bounded_memory_and_under_30s(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstream: http://127.0.0.1:9\nroutes:\n  - path: /api/**\n    name: api\n")
    small, big = tmp_path / "small.log", tmp_path / "big.log"
    write_log(small, 10_000)
    write_log(big, 1_000_000)
    base_rss, _, done = peak_rss(["suggest", "-c", str(config), "--from", str(small)], tmp_path)
    assert done.returncode == 0, done.stderr
    rss, elapsed, done = peak_rss(
        ["suggest", "-c", str(config), "--from", str(big), "--min-count", "100"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    growth = (rss - base_rss) / 2**20
    print(f"1,000,000 lines: {elapsed:.1f} s, peak RSS {rss / 2**20:.0f} MiB "
          f"(+{growth:.0f} MiB over 10,000 lines)", file=sys.stderr)  # fmt: skip
    assert elapsed < 30, elapsed
    assert growth < 80, growth  # the counts, capped at suggest.MAX_KEYS keys; never the lines
    assert "not counted: more than 50000 different" in done.stdout
    assert "        - https://app1.example.com  # " in done.stdout
    rules = [x for x in done.stdout.splitlines() if x.startswith("        - ")]
    assert len(rules) == 40 + 2 + 1 and not any(
        "scan" in x for x in rules
    )  # origins, methods, header
    assert "# not suggested: " in done.stdout and len(done.stdout) < 20_000


# --- docs/migrating.md: the walkthrough's commands, run as written -----------------------

DOC = REPO / "docs" / "migrating.md"


def test_migrating_walkthrough_runs_as_written(tmp_path: Path) -> None:
    text = DOC.read_text()
    config = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert config is not None
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    proxy_port, api_port = free_port(), free_port()

    def ports(s: str) -> str:
        return s.replace("127.0.0.1:8080", f"127.0.0.1:{proxy_port}").replace(
            "127.0.0.1:3000", f"127.0.0.1:{api_port}"
        )

    (tmp_path / "corsproxy.yaml").write_text(ports(config.group(1)))
    env = clean_env(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env["PYTHONPATH"] = str(REPO)
    api = subprocess.Popen(
        [sys.executable, "-m", "corsproxy.tools.echo", "--listen", f"127.0.0.1:{api_port}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    script = "set -e\n" + "\n".join(ports(b) for b in blocks)
    try:
        wait_port(api_port, proc=api)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        pid = tmp_path / "corsproxy.pid"
        if pid.exists():
            with_pid = int(pid.read_text().strip())
            if psutil.pid_exists(with_pid):
                os.kill(with_pid, 15)
        api.terminate()
        api.wait(10)
    assert done.returncode == 0, done.stdout + done.stderr
    enforced = (tmp_path / "corsproxy.yaml").read_text()
    assert "report_only: true" not in enforced
    assert "- https://app.example.com  #" in enforced
    assert "# RISKY, not suggested: null" in enforced
    assert "verdict: blocked" in done.stdout and "verdict: allowed" in done.stdout
