"""The admin listener's live page: the bounded refusal buffer, grouping, the
per-second rates, aggregation across workers (a real ``workers: 2`` proxy: /state.json
totals equal /metrics), the page's headers and size, and the Grafana dashboard's PromQL
against a real /metrics scrape. Its suggested rules: equal to ``corsproxy
suggest`` on the same traffic's access log, bounded, aged out after an hour, merged across
workers."""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import re
import socket
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

from procutil import accepts, eventually, free_port, run, running
from prometheus_client.parser import text_string_to_metric_families
from test_suggest import MIX, REPORT_ONLY, allows_every_origin, read_log, send

from corsproxy.config.load import parse_settings
from corsproxy.engine import browser
from corsproxy.engine.cors import Action, Decision, Kind, Verdict
from corsproxy.observe import snapshots
from corsproxy.observe.live import (
    HISTORY,
    LiveLog,
    LiveState,
    group_refusals,
    read_snapshots,
    snapshot,
    write_snapshot,
)
from corsproxy.observe.metrics import ReloadMetrics, RequestMetrics
from corsproxy.observe.traffic import MAX_ENTRIES, MAX_KEY_CHARS, MAX_KEYS, Traffic, merge
from corsproxy.observe.traffic import publish as traffic_publish
from corsproxy.observe.traffic import read as read_traffic
from corsproxy.observe.traffic import snapshot as traffic_snapshot
from corsproxy.runtime.admin import (
    PAGE_FILES,
    TEXT,
    AdminView,
    Suggester,
    admin_answer,
    page_file,
    suggestion_answer,
)
from corsproxy.runtime.app import admin_view, open_admin

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "corsproxy-dashboard.json"
SECRETS = ("cookie-secret-4711", "Bearer token-secret-0815")
CONFIG = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: http://127.0.0.1:{dead}
workers: {workers}
access_log: off
defaults:
  allow_origins: [https://app.example.com]
routes:
  - name: api
    path: /api/**
    cors:
      allow_headers: [Content-Type]
"""


def rejected(reason: str = "origin 'https://evil.test' is not allowed") -> Decision:
    return Decision(
        Kind.PREFLIGHT,
        Verdict.REJECTED,
        Action.ANSWER,
        reason=reason,
        status=403,
        origin="https://evil.test",
    )


KEYED = [
    b"host",
    b"api.example.com",
    b"origin",
    b"https://evil.test",
    b"access-control-request-method",
    b"PUT",
    b"access-control-request-headers",
    b"X-Trace-Id",
]


def test_refusal_buffer_is_bounded_and_keeps_the_newest() -> None:
    log = LiveLog(size=100)
    for i in range(250):
        log.refusals.append((float(i), "api", rejected(), None, "OPTIONS", f"/p{i}?t=1", KEYED))
    rows = snapshot(log)["refusals"]
    assert len(rows) == 100
    assert [r["time"] for r in rows] == [float(i) for i in range(150, 250)]
    row = rows[-1]
    assert row["request_method"] == "PUT" and row["request_headers"] == "X-Trace-Id"
    assert row["path"] == "/p249"  # the query string is never kept
    assert row["origin"] == "https://evil.test"


def test_an_actual_request_has_no_requested_method_or_headers() -> None:
    """Both are null, not one null and one empty, when no Access-Control-Request-* was sent."""
    log = LiveLog(size=10)
    log.refusals.append((1.0, "api", rejected(), "https://evil.test", "GET", "/p", ()))
    (row,) = snapshot(log)["refusals"]
    assert row["request_method"] is None and row["request_headers"] is None


def test_identical_refusals_are_grouped_with_a_count_newest_first() -> None:
    log = LiveLog()
    other = [*KEYED[:-1], b"X-Other"]
    for i in range(5):
        log.refusals.append((float(i), "api", rejected(), None, "OPTIONS", "/a", KEYED))
    log.refusals.append((10.0, "api", rejected("header 'x-other'"), None, "OPTIONS", "/b", other))
    groups = group_refusals([snapshot(log)])
    assert [g["count"] for g in groups] == [1, 5]
    assert groups[0]["request_headers"] == "X-Other"
    assert groups[1]["first"] == 0.0 and groups[1]["time"] == 4.0


def test_grouping_across_workers_keeps_the_newest_hundred(tmp_path: Path) -> None:
    """Each worker's file holds its own newest 100; together, the newest 100 of all."""
    for pid, start in ((101, 0), (202, 1000)):
        rows = [
            {
                "time": float(start + i),
                "route": "api",
                "kind": "actual",
                "verdict": "rejected",
                "reason": f"origin {pid}",
                "origin": f"https://w{pid}.test",
                "method": "GET",
                "request_method": None,
                "request_headers": None,
                "host": "",
                "path": "/",
            }
            for i in range(100)
        ]
        (tmp_path / f"{pid}.json").write_text(json.dumps({"pid": pid, "refusals": rows}))
    (tmp_path / ".303.json.new").write_text("{half a fi")  # a file mid-write is not read
    snapshots = read_snapshots(tmp_path)
    assert [s["pid"] for s in snapshots] == [101, 202]
    groups = group_refusals(snapshots)
    assert len(groups) == 1 and groups[0]["count"] == 100
    assert groups[0]["origin"] == "https://w202.test"


def test_write_snapshot_is_atomic_and_readable(tmp_path: Path) -> None:
    log = LiveLog()
    log.refusals.append((1.0, "api", rejected(), None, "OPTIONS", "/a", KEYED))
    log.fault("http://up:1", "api", "connect", "connect: connection refused")
    write_snapshot(log, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{snapshot(log)['pid']}.json"]
    (data,) = read_snapshots(tmp_path)
    assert data["faults"]["http://up:1"][3] == "connect: connection refused"


def settings_of(text: str):
    settings, _ = parse_settings(text, "test.yaml")
    return settings


def test_state_rates_totals_and_fix() -> None:
    settings = settings_of(CONFIG.format(port=0, admin=0, dead=1, workers=1))
    metrics = RequestMetrics()
    log = LiveLog()
    state = LiveState(
        lambda: settings, metrics.registry.collect, lambda: [snapshot(log)], reloads=None
    )
    state.sample()
    for _ in range(3):
        metrics.observe("api", "preflight", "rejected", None, 0.001)
    metrics.respond("api", 502)
    log.refusals.append((5.0, "api", rejected(), None, "OPTIONS", "/api/x", KEYED))
    state.sample()
    data = state.state()
    assert data["totals"] == {"requests": 3, "refused": 3}
    api = next(row for row in data["live"] if row["route"] == "api")
    cell = api["decisions"]["rejected"]
    assert cell["total"] == 3 and len(cell["series"]) == HISTORY and cell["series"][-1] > 0
    assert [r["name"] for r in data["routes"]] == ["api", "default"]
    (refusal,) = data["refusals"]
    assert "host" not in refusal and "path" not in refusal  # kept for explain, never shown
    assert refusal["fix"][0].startswith("add https://evil.test to defaults.allow_origins")
    assert "add X-Trace-Id to routes[0].cors.allow_headers" in refusal["fix"]
    (upstream,) = data["upstreams"]
    assert upstream["502"] == 1 and upstream["routes"] == ["api", "default"]


def test_page_headers_and_size() -> None:
    view = AdminView(ready=lambda: True, metrics=lambda: b"", config=dict, state=dict)
    status, content_type, body = admin_answer(view, "GET", "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b'src="/admin.js"' in body and b"<script>" not in body  # no inline script
    total = sum(len(page_file(name)) for name, _ in PAGE_FILES.values())
    assert total < 60_000, total
    js = page_file("admin.js").decode()
    assert "innerHTML" not in js and "eval(" not in js
    without = AdminView(ready=lambda: True, metrics=lambda: b"", config=dict)
    assert admin_answer(without, "GET", "/state.json")[0] == 404


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def metric_sum(text: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


PREFLIGHT = (
    b"OPTIONS /api/x?token=qs-secret HTTP/1.1\r\nHost: api.example.com\r\n"
    b"Origin: https://evil.test\r\nAccess-Control-Request-Method: PUT\r\n"
    b"Access-Control-Request-Headers: X-Trace-Id\r\nCookie: session=cookie-secret-4711\r\n"
    b"Authorization: Bearer token-secret-0815\r\nConnection: close\r\n\r\n"
)
ALLOWED = (
    b"GET /api/x HTTP/1.1\r\nHost: api.example.com\r\nOrigin: https://app.example.com\r\n"
    b"Cookie: session=cookie-secret-4711\r\nConnection: close\r\n\r\n"
)


async def test_two_workers_one_view_totals_equal_metrics(tmp_path: Path) -> None:
    port, admin, dead = free_port(), free_port(), free_port()
    path = tmp_path / "corsproxy.yaml"
    path.write_text(CONFIG.format(port=port, admin=admin, dead=dead, workers=2))
    with running(["serve", "-c", str(path)], tmp_path / "out") as proc:
        await eventually(lambda: accepts(admin) and accepts(port), timeout=15)
        for _ in range(20):  # fresh connections: both workers answer some
            raw(port, PREFLIGHT)
            raw(port, ALLOWED)
        state_url = f"http://127.0.0.1:{admin}/state.json"

        def grouped() -> bool:
            refusals = json.loads(get(state_url))["refusals"]
            return bool(refusals) and refusals[0]["count"] == 20

        await eventually(grouped, timeout=15)
        text = get(f"http://127.0.0.1:{admin}/metrics").decode()
        body = get(state_url).decode()
        state = json.loads(body)
        assert state["workers"] == 2
        assert state["totals"]["requests"] == metric_sum(text, "corsproxy_requests_total") == 40
        api = next(row for row in state["live"] if row["route"] == "api")
        assert api["decisions"]["rejected"]["total"] == 20
        (upstream,) = state["upstreams"]
        assert upstream["502"] == 20 and "connection refused" in upstream["last_cause"]
        for secret in (*SECRETS, "qs-secret", "api.example.com"):
            assert secret not in body
        assert "Traceback" not in proc.stderr()


# --- the Grafana dashboard --------------------------------------------------------

PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "by",
    "without",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
}
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        for value in node.values():
            found += expressions(value)
        return found
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return []


def names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    labels: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in body.split(",") if label.strip()}
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    words = set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_:]*\b", bare))
    return words - PROMQL_WORDS, labels


async def test_grafana_dashboard_names_only_what_metrics_exposes(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard["panels"])
    assert len(exprs) >= 10
    port, admin, dead = free_port(), free_port(), free_port()
    path = tmp_path / "corsproxy.yaml"
    path.write_text(CONFIG.format(port=port, admin=admin, dead=dead, workers=1))
    with running(["serve", "-c", str(path)], tmp_path / "out"):
        await eventually(lambda: accepts(admin) and accepts(port), timeout=15)
        raw(port, PREFLIGHT)
        raw(port, ALLOWED)  # a 502 and an upstream error: every labelled series exists
        text = get(f"http://127.0.0.1:{admin}/metrics").decode()
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    every_label = set().union(*exposed.values()) | SCRAPE_LABELS
    for expr in exprs:
        metrics, labels = names_and_labels(expr)
        assert metrics, expr
        unknown = {m for m in metrics if m not in exposed}
        assert not unknown, f"{expr}: {unknown} not in /metrics"
        assert labels <= every_label, f"{expr}: labels {labels - every_label}"
        for metric in metrics:  # a label named next to a metric belongs to it
            for body in re.findall(re.escape(metric) + r"\{([^}]*)\}", expr):
                used = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
                assert used <= exposed[metric] | SCRAPE_LABELS, (expr, used)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("decision", "refused", "5xx", "p99", "in flight", "reload", "memory"):
        assert topic in titles, topic


# --- the suggested rules: the last hour's traffic, as `corsproxy suggest` ----------

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SEEN = re.compile(rf"seen {TIME.pattern}|first {TIME.pattern}, last {TIME.pattern}")


def rules(text: str) -> str:
    """The suggested file without its leading comment lines (which say where it came from)."""
    lines = text.split("\n")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines)


def seconds(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


async def test_the_page_suggests_what_corsproxy_suggest_prints_for_the_same_traffic(
    upstream, make_proxy, client, capsys, tmp_path: Path
) -> None:
    """A real report_only proxy with its admin listener in front of an API that allows every
    origin: after a recorded mix, /suggest.yaml equals `corsproxy suggest` on the proxy's
    own access log, rule by rule and comment by comment."""
    upstream.handler = allows_every_origin
    head = "admin: 127.0.0.1:0\n# keep: the API's own comment\n"
    shadow = await make_proxy(head + REPORT_ONLY, upstream=upstream.url)
    admin = await open_admin(shadow.proxy.settings, admin_view(shadow, ReloadMetrics(), None))
    assert admin is not None
    try:
        capsys.readouterr()
        expected = 0
        for fetch in MIX:
            for _ in range(fetch.times):
                assert await send(client, shadow.url, fetch) is True
                expected += 2 if browser.plan(fetch.request).preflight else 1
        log = await read_log(capsys, expected)
        assert len(log) == expected
        (tmp_path / "access.log").write_text("\n".join(log) + "\n")
        base = f"http://127.0.0.1:{admin.port}"
        async with client.get(base + "/suggest.yaml?min_count=3") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/yaml")
            page = await r.text()
        async with client.get(base + "/suggest.json?min_count=3") as r:
            data = await r.json()
        async with client.get(base + "/suggest.json?min_count=0") as r:
            assert r.status == 400
    finally:
        await admin.cleanup()
    config = tmp_path / "corsproxy.yaml"
    done = run(["suggest", "-c", str(config), "--from", str(tmp_path / "access.log"),
                "--min-count", "3"])  # fmt: skip
    assert done.returncode == 0, done.stderr

    assert data["yaml"] == page and data["error"] is None
    assert data["against"] == str(config) and data["min_count"] == 3
    assert data["requests"] == expected and data["untracked"] == 0
    assert data["window"] == 3600 and data["bucket"] == 60
    assert f"{expected} cross-origin request(s)" in done.stderr
    assert page.startswith("# Suggested by corsproxy's admin page from the last hour")
    assert f": {expected} cross-origin request(s), " in page.split("\n", 1)[0]
    assert "A suggestion to review, not applied" in page
    assert "# report_only: true is still set" in page
    # The same rules and comments. The times may differ by the second a request straddled:
    # the access log reads a coarser clock (time.gmtime()) than the page's counter.
    mine, theirs = rules(page), rules(done.stdout)
    assert SEEN.sub("SEEN", mine) == SEEN.sub("SEEN", theirs)
    logged = [seconds(t) for t in TIME.findall(theirs)]
    for stamp in TIME.findall(mine):
        assert any(abs(seconds(stamp) - t) <= 1 for t in logged), stamp
    assert "RISKY, not suggested: null" in mine and "- https://app.example.com  #" in mine
    assert "# keep: the API's own comment" in mine  # rendered against the file: comments kept


def page_of(settings, traffic: Traffic, clock: list[float]) -> Suggester:
    """A single process's suggestion, as runtime/app.py wires it, on a test clock."""
    return Suggester(
        lambda: settings,
        lambda: [traffic_snapshot(traffic)],
        lambda: traffic.version,
        clock=lambda: clock[0],
    )


async def test_the_aggregate_is_bounded_and_says_what_it_left_out() -> None:
    clock = [1_800_000_000.0]
    traffic = Traffic(clock=lambda: clock[0], max_keys=100)
    for i in range(1000):  # a scan: a new Origin per request
        traffic.add("api", f"https://scan{i}.example.net", "actual", "GET", None, None, False)
    traffic.add("api", "https://scan0.example.net", "actual", "GET", None, None, False)
    long = "https://" + "a" * MAX_KEY_CHARS + ".example.com"
    traffic.add("api", long, "actual", "GET", None, None, False)  # never kept, only counted
    assert len(traffic.keys) == 100 and traffic.entries == 100
    snap = traffic_snapshot(traffic)
    (bucket,) = snap["buckets"]
    assert bucket[1] == {"long": 1, "keys": 900, "entries": 0} and len(bucket[2]) == 100
    settings = settings_of(CONFIG.format(port=0, admin=0, dead=1, workers=1))
    found = await page_of(settings, traffic, clock).suggestion()
    assert found["requests"] == 1002 and found["untracked"] == 901 and found["keys"] == 100
    assert found["lost"] == {"long": 1, "keys": 900, "entries": 0}
    assert found["error"] is None
    assert (
        f"# 901 request(s) not counted: 900 past the cap of {MAX_KEYS} different "
        "(route, origin, method, headers) combinations a process keeps for the hour; "
        f"1 with an Origin, method and header list over {MAX_KEY_CHARS} characters together"
    ) in found["yaml"]
    assert "- https://scan0.example.net  # 2 requests" in found["yaml"]
    assert long not in found["yaml"]


async def test_a_combination_seen_every_minute_counts_once_against_the_cap() -> None:
    """The cap is on different keys in the hour, not on (key, minute) entries: 200
    combinations seen every minute for two hours are all counted."""
    clock = [1_800_000_000.0]
    traffic = Traffic(clock=lambda: clock[0])
    for _minute in range(120):
        for i in range(200):
            traffic.add("api", f"https://app{i}.example.com", "actual", "GET", None, None, False)
        clock[0] += 60
    clock[0] -= 1  # still in the last minute counted
    assert len(traffic.keys) == 200 and traffic.entries == 200 * 60
    settings = settings_of(CONFIG.format(port=0, admin=0, dead=1, workers=1))
    found = await page_of(settings, traffic, clock).suggestion()
    assert found["untracked"] == 0 and found["requests"] == 200 * 60
    assert "not counted" not in found["yaml"]
    assert "- https://app7.example.com  # 60 requests" in found["yaml"]
    # past the second bound, on (key, minute) entries, the comment names that one
    small = Traffic(clock=lambda: clock[0], max_entries=250)
    for _minute in range(2):
        for i in range(200):
            small.add("api", f"https://app{i}.example.com", "actual", "GET", None, None, False)
        clock[0] += 60
    clock[0] -= 1
    found = await page_of(settings, small, clock).suggestion()
    assert found["lost"] == {"long": 0, "keys": 0, "entries": 150}
    assert (
        f"# 150 request(s) not counted: 150 past the cap of {MAX_ENTRIES} (combination, minute)"
        in (found["yaml"])
    )


def test_every_field_counts_towards_the_length_limit() -> None:
    """A requested method is the raw Access-Control-Request-Method value (up to 8 KiB): too
    long is not kept, only counted; not a token counts as "", as corsproxy suggest does."""
    clock = [1_800_000_000.0]
    traffic = Traffic(clock=lambda: clock[0])
    origin = "https://app.example.com"
    traffic.add("api", origin, "preflight", "OPTIONS", "P" * 8192, "x-a", False)
    traffic.add("api", origin, "preflight", "OPTIONS", "PUT <script>", "x-a", False)
    traffic.add("api", origin, "preflight", "OPTIONS", "BAD METHOD", "x-a", False)
    assert traffic.entries == 1 and len(traffic.keys) == 1
    ((key, entry),) = traffic.current.counts.items()
    assert key[4] == "" and entry[0] == 2
    assert traffic.current.lost == {"long": 1, "keys": 0, "entries": 0}


def test_the_aggregate_memory_is_bounded_at_the_cap() -> None:
    """Keys as long as are kept, four times the cap, the longest method allowed: a few MiB
    (and the entries cap, every key seen every minute: a few MiB more), whatever comes."""
    clock = [1_800_000_000.0]
    tracemalloc.start()
    try:
        traffic = Traffic(clock=lambda: clock[0])
        for i in range(4 * MAX_KEYS):
            origin = f"https://{i:06d}" + "a" * (MAX_KEY_CHARS - 300) + ".example.com"
            traffic.add("api", origin, "preflight", "OPTIONS", "M" * 200, "x-a,x-b", True)
            traffic.add("api", origin, "preflight", "OPTIONS", "P" * 8192, "x-a,x-b", True)
        keys, _ = tracemalloc.get_traced_memory()
        for _minute in range(60):
            clock[0] += 60
            for key in list(traffic.keys):
                traffic.add(*key)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(traffic.keys) == MAX_KEYS and traffic.entries == MAX_ENTRIES
    assert keys < 8 * 2**20, keys / 2**20
    assert used < 16 * 2**20, used / 2**20


async def test_buckets_older_than_an_hour_age_out() -> None:
    clock = [1_800_000_000.0]  # a minute boundary
    traffic = Traffic(clock=lambda: clock[0])
    settings = settings_of(CONFIG.format(port=0, admin=0, dead=1, workers=1))
    page = page_of(settings, traffic, clock)
    traffic.add("api", "https://old.example.com", "actual", "GET", None, None, False)
    clock[0] += 30 * 60
    traffic.add("api", "https://new.example.com", "actual", "GET", None, None, False)
    assert traffic.entries == 2 and "https://old.example.com" in (await page.suggestion())["yaml"]
    clock[0] += 29 * 60 + 59  # 59:59 after the first: still within the hour
    assert (await page.suggestion())["requests"] == 2
    clock[0] += 1  # a new minute: the first one's bucket is an hour old
    found = await page.suggestion()
    assert found["requests"] == 1 and "https://old.example.com" not in found["yaml"]
    traffic.add("api", "https://new.example.com", "actual", "GET", None, None, False)
    assert traffic.entries == 2 and len(traffic.buckets) == 2  # the old bucket is gone
    assert list(traffic.keys) == [
        ("api", "https://new.example.com", "actual", "GET", None, None, False)
    ]
    assert traffic.keys[next(iter(traffic.keys))][0] == 2  # held by two buckets
    # A worker's file that was not rewritten for two hours counts for nothing.
    stale = traffic_snapshot(traffic)
    assert merge([stale], clock[0] + 2 * 3600) == ({}, {"long": 0, "keys": 0, "entries": 0})


async def test_the_suggestion_is_cached_and_worked_out_off_the_loop() -> None:
    """One build per (min_count, counts); the snapshot is taken on the loop, the rest runs
    in a thread while the loop keeps serving."""
    clock = [1_800_000_000.0]
    traffic = Traffic(clock=lambda: clock[0])
    settings = settings_of(CONFIG.format(port=0, admin=0, dead=1, workers=1))
    loop_thread = threading.get_ident()
    taken: list[int] = []

    def snapshots() -> list[dict]:
        taken.append(threading.get_ident())
        return [traffic_snapshot(traffic)]

    page = Suggester(lambda: settings, snapshots, lambda: traffic.version, clock=lambda: clock[0])
    traffic.add("api", "https://app.example.com", "actual", "GET", None, None, False)
    first = await page.suggestion()
    assert (await page.suggestion()) is first and page.builds == 1  # the same counts
    assert (await page.suggestion(2)) is not first and page.builds == 2
    traffic.add("api", "https://app.example.com", "actual", "GET", None, None, False)
    assert (await page.suggestion())["requests"] == 2 and page.builds == 3  # counts changed
    assert taken == [loop_thread] * 3  # a live Traffic is copied on the loop
    # workers' files are read in the thread (nothing on the loop changes them)
    files = Suggester(lambda: settings, snapshots, lambda: 1, threadsafe=True)
    await files.suggestion()
    assert taken[-1] != loop_thread

    # at the cap, the loop keeps its ticks while the suggestion is worked out
    big = Traffic(clock=lambda: clock[0])
    for i in range(MAX_KEYS):
        big.add("api", f"https://app{i}.example.com", "actual", "GET", None, None, False)
    slow = page_of(settings, big, clock)
    gaps: list[float] = []

    async def tick() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - before)

    ticker = asyncio.ensure_future(tick())
    started = time.perf_counter()
    found = await slow.suggestion()
    took = time.perf_counter() - started
    ticker.cancel()
    assert found["keys"] == MAX_KEYS and found["error"] is None
    assert len(gaps) > 5 and max(gaps) < max(0.5 * took, 0.1), (max(gaps), took)


def test_workers_snapshots_merge_into_one_count(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    key = ("api", "https://app.example.com", "actual", "GET", None, None, True)
    for pid, offset in ((101, 0.0), (202, 90.0)):
        traffic = Traffic(clock=lambda at=clock[0] + offset: at)
        for _ in range(3):
            traffic.add(*key)
        data = traffic_snapshot(traffic)
        (tmp_path / f"{pid}.json").write_text(json.dumps({**data, "pid": pid}))
    (tmp_path / ".303.json.new").write_text("{half a fi")  # a file mid-write is not read
    gone = tmp_path / "404.json"  # a replaced worker's, not rewritten for over an hour
    gone.write_text(json.dumps({**data, "pid": 404}))
    os.utime(gone, (time.time() - 3700, time.time() - 3700))
    counts, lost = merge(read_traffic(tmp_path), clock[0] + 100)
    assert counts == {key: [6, clock[0], clock[0] + 90.0]} and sum(lost.values()) == 0
    assert not gone.exists()  # deleted when read


async def test_a_stopping_worker_writes_what_it_has_not_yet(tmp_path: Path) -> None:
    """The writer is woken by a change, waits to batch, writes; cancelled, it writes what
    changed since then. Idle, it writes nothing."""
    traffic = Traffic()
    writer = asyncio.ensure_future(traffic_publish(traffic, tmp_path))
    await asyncio.sleep(0.05)
    assert list(tmp_path.iterdir()) == []  # nothing counted: nothing written
    traffic.add("api", "https://app.example.com", "actual", "GET", None, None, False)
    await asyncio.sleep(0.05)  # within PUBLISH_SECONDS: not written yet
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    (data,) = read_traffic(tmp_path)
    assert data["keys"][0][1] == "https://app.example.com"
    assert traffic.on_change is None and not traffic.dirty


async def test_suggest_endpoints_only_with_a_suggester() -> None:
    view = AdminView(ready=lambda: True, metrics=lambda: b"", config=dict, state=dict)
    assert admin_answer(view, "GET", "/suggest.yaml") == (404, TEXT, b"404: Not Found\n")

    async def broken(n: int) -> dict:
        return {"yaml": "", "error": "no suggestion: broken"}

    failing = AdminView(
        ready=lambda: True, metrics=lambda: b"", config=dict, state=dict, suggestion=broken
    )
    assert admin_answer(failing, "GET", "/suggest.yaml") is None  # worked out, async
    assert admin_answer(failing, "POST", "/suggest.yaml")[0] == 405
    assert await suggestion_answer(failing, "/suggest.yaml") == (
        500,
        TEXT,
        b"500: no suggestion: broken\n",
    )
    for bad in ("x", "0", "-1", "%C2%B2", "\u00b2", "1e3", "99999999999"):
        assert (await suggestion_answer(failing, f"/suggest.yaml?min_count={bad}"))[0] == 400


async def test_two_workers_one_suggestion(tmp_path: Path) -> None:
    """Each worker counts its own requests and writes them every few seconds; the
    supervisor's page merges them into one suggestion."""
    port, admin, dead = free_port(), free_port(), free_port()
    path = tmp_path / "corsproxy.yaml"
    text = CONFIG.format(port=port, admin=admin, dead=dead, workers=2)
    path.write_text(text.replace("access_log: off", "access_log: json"))
    origins = [f"https://app{i}.example.com".encode() for i in range(6)]
    with running(["serve", "-c", str(path)], tmp_path / "out") as proc:
        await eventually(lambda: accepts(admin) and accepts(port), timeout=15)
        for origin in origins:
            for _ in range(4):  # fresh connections: both workers answer some
                raw(port, ALLOWED.replace(b"https://app.example.com", origin))
        url = f"http://127.0.0.1:{admin}/suggest.json"
        await eventually(lambda: json.loads(get(url))["requests"] == 24, timeout=30)
        found = json.loads(get(url))
        pids = {json.loads(x)["pid"] for x in proc.stdout().splitlines() if x.startswith("{")}
        assert "Traceback" not in proc.stderr()
    assert len(pids) == 2  # both workers answered; the page counted all of them
    for origin in origins:
        assert f"- {origin.decode()}  # 4 requests" in found["yaml"]
    assert found["error"] is None and found["against"] == str(path)


def test_prune_keeps_the_living_and_the_newest_dead(tmp_path: Path) -> None:
    """A worker crashing again and again cannot fill the snapshot folder: the supervisor
    keeps the files of living workers and of the ``spare`` that died last."""
    for age, pid in enumerate((101, 102, 103, 104, 105)):  # 101 newest, 105 oldest
        path = tmp_path / f"{pid}.json"
        path.write_text("{}")
        os.utime(path, (time.time() - age * 10, time.time() - age * 10))
    (tmp_path / ".103.json.new").write_text("{")  # a write in progress is not a snapshot
    snapshots.prune(tmp_path, alive={104}, spare=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".103.json.new",
        "101.json",
        "102.json",
        "104.json",
    ]


async def test_traffic_is_counted_only_when_an_admin_listener_can_show_it(
    upstream, make_proxy, client
) -> None:
    """Without ``admin`` nothing could ever read the counts, so the request path does not
    keep them; with it, each CORS request is one count under the access log's fields."""
    upstream.handler = allows_every_origin
    for admin in (False, True):
        head = "admin: 127.0.0.1:0\n" if admin else ""
        proxy = await make_proxy(head + REPORT_ONLY, upstream=upstream.url)
        for _ in range(3):
            assert await send(client, proxy.url, MIX[0]) is True
        decisions = list(proxy.proxy.memo.decisions.values())
        assert decisions and all((p.counted is not None) is admin for p in decisions)
        if admin:
            await eventually(lambda p=proxy: sum(traffic_totals(p).values()) == 3)
            (key,) = traffic_totals(proxy)
            assert key == ("api", MIX[0].origin, "actual", "GET", None, None, True)
        else:
            assert traffic_totals(proxy) == {}


def traffic_totals(running) -> dict[tuple, int]:  # type: ignore[no-untyped-def]
    totals: dict[tuple, int] = {}
    for bucket in running.proxy.live.traffic.buckets:
        for key, (count, _first, _last) in bucket.counts.items():
            totals[key] = totals.get(key, 0) + count
    return totals
