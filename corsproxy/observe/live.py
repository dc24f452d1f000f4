"""The data behind the admin listener's live page (``GET /``) and ``/state.json``.

Two halves, so the request path pays almost nothing:

* ``LiveLog``, one per process serving requests. ``Proxy.record`` appends one tuple to
  ``LiveLog.refusals`` (a deque bounded at ``REFUSALS``) for a refused request, and
  ``Proxy.explain_upstream_fault`` notes the last cause per upstream. No formatting, no JSON,
  no lock: the tuple holds objects the request already had (the memoized ``Decision``, the
  request's list of CORS header bytes).
* ``LiveState``, in the process that owns the admin listener. Everything is worked out when
  ``/state.json`` is read: the counts come from the same Prometheus collectors ``/metrics``
  reads (so the totals are the ``/metrics`` totals), the per-second rates from a sample of
  those totals taken once a second while the page is read, the refusals from every
  process's ``LiveLog`` (grouped, each group with ``explain``'s smallest fix), the reloads
  from the ``Reloader``.

With ``workers: N`` each worker writes its ``LiveLog`` as a small JSON file,
``<run folder>/live/<pid>.json``, a quarter second after it changed, and once more when it
stops (snapshots.py: written to a temporary name, then renamed, so the supervisor never
reads half a file); the supervisor reads them all next to the Prometheus multiprocess files
it already sums for ``/metrics``. A dead worker's file stays, as its counts stay in
``/metrics``.

``LiveLog.traffic`` counts the last hour's CORS requests for the page's suggested rules
(traffic.py).

What leaves a request: the route, the decision (kind, verdict, reason), the Origin, the
method, Access-Control-Request-Method and -Headers. Host and path are kept only to ask
``explain`` for the fix and never shown; no other header is ever read.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from corsproxy import __version__
from corsproxy.config.view import config_view
from corsproxy.engine import browser
from corsproxy.engine.cors import Decision, Verdict
from corsproxy.engine.explain import describe_value, explain
from corsproxy.engine.policy import Settings
from corsproxy.observe import snapshots
from corsproxy.observe.traffic import Traffic

REFUSALS = 100  # refused requests kept per process, and shown (the newest, all processes)
HISTORY = 60  # seconds of per-second rates
RELOADS = 20  # reloads kept
LONGEST = 300  # characters of an Origin or header list shown; the rest is cut
PUBLISH_SECONDS = 0.25  # a worker writes its log this long after it changed
FIX_CACHE = 512
REFUSED = frozenset({Verdict.REJECTED, Verdict.WOULD_REJECT})  # WebSocket 403s are REJECTED
# The decisions the page always shows, in this order; others (passthrough, bad_request) when seen.
DECISIONS = ("allowed", "rejected", "forwarded", "would_allow", "would_reject", "not_cors")
_ACRM = b"access-control-request-method"
_ACRH = b"access-control-request-headers"

# (unix time, route, decision, Origin as sent, method, target, keyed CORS header bytes)
Refusal = tuple[float, str, Decision, "str | None", str, str, Sequence[bytes]]


class LiveLog:
    """One process's recent refusals and upstream faults (see the module's docstring)."""

    def __init__(self, size: int = REFUSALS) -> None:
        self.refusals: deque[Refusal] = deque(maxlen=size)
        self.faults: dict[str, tuple[float, str, str, str]] = {}  # url -> time, route, why
        self.fault_count = 0  # bumped per fault
        self.on_change: Callable[[], None] | None = None  # a worker's publisher (publish)
        self.traffic = Traffic()  # the last hour's CORS requests, for the suggestion (traffic.py)

    def refused(self, entry: Refusal) -> None:
        """A refused request: one append to a bounded deque (the request path's only cost)."""
        self.refusals.append(entry)
        if self.on_change is not None:
            self.on_change()

    def fault(self, url: str, route: str, reason: str, cause: str) -> None:
        """An upstream failed (connect, timeout, protocol) and ``cause`` says how."""
        if url not in self.faults and len(self.faults) >= 256:
            self.faults.clear()
        self.faults[url] = (time.time(), route, reason, cause)
        self.fault_count += 1
        if self.on_change is not None:
            self.on_change()


def cut(text: str | None) -> str:
    if not text:
        return ""
    return text if len(text) <= LONGEST else text[:LONGEST] + "…"


def refusal_row(entry: Refusal) -> dict[str, Any]:
    """One refusal as plain data. Only the CORS request headers are read from ``keyed``."""
    when, route, decision, origin, method, target, keyed = entry
    acrm: str | None = None
    acrh: list[str] = []
    host = ""
    for i in range(0, len(keyed) - 1, 2):
        name, value = keyed[i], keyed[i + 1].decode("latin-1")
        if name == _ACRM and acrm is None:
            acrm = value
        elif name == _ACRH:
            acrh.append(value)
        elif name == b"host" and not host:
            host = value
    names = [n.strip() for n in ",".join(acrh).split(",") if n.strip()]
    return {
        "time": when,
        "route": route,
        "kind": decision.kind.value,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "origin": cut(decision.origin or origin),
        "method": method,
        "request_method": cut(acrm) if acrm is not None else None,
        "request_headers": cut(", ".join(names)) if acrh else None,
        # for explain only; never in /state.json
        "host": cut(host),
        "path": target.split("?", 1)[0][:2048],
    }


def snapshot(log: LiveLog) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "refusals": [refusal_row(entry) for entry in list(log.refusals)],
        "faults": {url: list(fault) for url, fault in log.faults.items()},
    }


def write_snapshot(log: LiveLog, folder: Path) -> None:
    """This process's file in ``folder``, atomically (snapshots.py)."""
    snapshots.write(folder, snapshot(log))


async def publish(log: LiveLog, folder: Path) -> None:
    """A worker: rewrite its file PUBLISH_SECONDS after its log changed (a burst of
    refusals is one write), until cancelled, and once more then (snapshots.publish)."""
    await snapshots.publish(log, folder, lambda: snapshot(log), PUBLISH_SECONDS)


def read_snapshots(folder: Path) -> list[dict[str, Any]]:
    """Every worker's file (one caught mid-rename or unreadable is skipped)."""
    return snapshots.read(folder)


# --- aggregation, when /state.json is read --------------------------------------------


def group_refusals(
    snapshots: Iterable[dict[str, Any]], limit: int = REFUSALS
) -> list[dict[str, Any]]:
    """The newest ``limit`` refusals of all processes, identical ones grouped with a count,
    newest group first. Identical: same route, kind, verdict, reason, Origin, method and
    requested method and header names."""
    rows = [row for snap in snapshots for row in snap.get("refusals", ())]
    rows.sort(key=lambda row: row["time"])
    rows = rows[-limit:] if limit else []
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (
            row["route"],
            row["kind"],
            row["verdict"],
            row["reason"],
            row["origin"],
            row["method"],
            row["request_method"],
            (row["request_headers"] or "").lower(),
        )
        group = groups.get(key)
        if group is None:
            groups[key] = {**row, "count": 1, "first": row["time"]}
        else:
            group.update(time=row["time"], host=row["host"], path=row["path"])
            group["count"] += 1
    return sorted(groups.values(), key=lambda g: g["time"], reverse=True)


def suggest(settings: Settings, row: dict[str, Any]) -> list[str]:
    """``explain``'s smallest config change that would allow this refused request."""
    method = row["method"]
    if row["kind"] == "preflight" and row["request_method"]:
        method = row["request_method"]
    elif row["kind"] == "websocket":
        method = "GET"  # the handshake: allowed when its Origin is
    names = [n.strip() for n in (row["request_headers"] or "").split(",") if n.strip()]
    request = browser.Request(row["origin"], method, tuple((n, "1") for n in names))
    try:
        ex = explain(settings, request, row["path"] or "/", row["host"] or None)
    except Exception as exc:  # a hostile value explain cannot model: say so, keep the page
        return [f"no suggestion ({type(exc).__name__})"]
    if ex.allowed:
        return ["none needed: the rules now in force allow it"]
    return list(ex.fixes)


def policy_line(cors: Any) -> str:
    """A route's effective policy in one line."""
    if cors == "passthrough":
        return "passthrough: no CORS processing, the upstream's own headers stand"
    if not isinstance(cors, dict):
        return ""
    parts = [
        f"origins {describe_value('allow_origins', cors.get('allow_origins'))}",
        f"methods {describe_value('allow_methods', cors.get('allow_methods'))}",
        f"headers {describe_value('allow_headers', cors.get('allow_headers'))}",
        f"credentials {describe_value('allow_credentials', cors.get('allow_credentials'))}",
        f"on_disallowed {cors.get('on_disallowed')}",
        f"report_only {describe_value('report_only', cors.get('report_only'))}",
    ]
    return "; ".join(parts)


Totals = dict[tuple[str, str], float]


def read_totals(metrics: Iterable[Any]) -> tuple[Totals, Totals]:
    """(requests by (route, decision), responses by (route, code)) from collected metrics."""
    requests: Totals = {}
    responses: Totals = {}
    for metric in metrics:
        if metric.name == "corsproxy_requests":
            for s in metric.samples:
                if s.name == "corsproxy_requests_total":
                    key = (s.labels["route"], s.labels["decision"])
                    requests[key] = requests.get(key, 0.0) + s.value
        elif metric.name == "corsproxy_responses":
            for s in metric.samples:
                if s.name == "corsproxy_responses_total":
                    key = (s.labels["route"], s.labels["code"])
                    responses[key] = responses.get(key, 0.0) + s.value
    return requests, responses


class LiveState:
    """What ``/state.json`` answers, worked out when it is read (see the module's docstring).

    ``collect`` yields the Prometheus metric families /metrics reads; ``logs`` the snapshots
    of every process's LiveLog; ``reloads`` the Reloader's history (None: nothing reloads)."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        collect: Callable[[], Iterable[Any]],
        logs: Callable[[], list[dict[str, Any]]],
        reloads: deque[dict[str, Any]] | None = None,
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.collect = collect
        self.logs = logs
        self.reloads = reloads
        self.workers = workers
        self.started = time.time()
        self.samples: deque[tuple[float, Totals, Totals]] = deque(maxlen=HISTORY + 1)
        self.fixes: dict[tuple[Any, ...], list[str]] = {}

    def sample(self) -> tuple[Totals, Totals]:
        totals = read_totals(self.collect())
        self.samples.append((time.monotonic(), *totals))
        return totals

    def rates(self) -> dict[tuple[str, str], list[float | int]]:
        """Requests per second, per (route, decision), oldest second first, HISTORY long."""
        series: dict[tuple[str, str], list[float | int]] = {}
        samples = list(self.samples)
        steps = len(samples) - 1
        for i, (earlier, later) in enumerate(itertools.pairwise(samples)):
            seconds = max(later[0] - earlier[0], 1e-3)
            for key, value in later[1].items():
                delta = value - earlier[1].get(key, 0.0)
                row = series.setdefault(key, [0] * HISTORY)
                rate = round(max(delta, 0.0) / seconds, 2)
                row[HISTORY - steps + i] = int(rate) if rate.is_integer() else rate
        return series

    def fix(self, settings: Settings, row: dict[str, Any]) -> list[str]:
        key = (
            id(settings),
            row["route"],
            row["kind"],
            row["origin"],
            row["method"],
            row["request_method"],
            row["request_headers"],
            row["host"],
            row["path"],
        )
        found = self.fixes.get(key)
        if found is None:
            if len(self.fixes) >= FIX_CACHE:
                self.fixes.clear()
            found = self.fixes[key] = suggest(settings, row)
        return found

    def state(self) -> dict[str, Any]:
        settings = self.settings()
        requests, responses = read_totals(self.collect())
        view = config_view(settings)
        fallback = settings.table.fallback.name
        routes = [
            {
                "name": r["name"],
                "host": r["host"],
                "path": r["path"],
                "upstream": r["upstream"],
                "policy": policy_line(r["cors"]),
            }
            for r in view["routes"]
        ]
        routes.append(
            {
                "name": fallback,
                "host": None,
                "path": "(anything unmatched)",
                "upstream": view["upstream"],
                "policy": policy_line(view["defaults"]),
            }
        )
        rates = self.rates()
        names = [r["name"] for r in routes]
        names += sorted({route for route, _ in requests} - set(names))
        seen = {decision for _, decision in requests}
        decisions = [*DECISIONS, *sorted(seen - set(DECISIONS))]
        live = []
        for name in names:
            cells = {}
            for decision in decisions:
                series = rates.get((name, decision), [0] * HISTORY)
                cells[decision] = {
                    "total": int(requests.get((name, decision), 0)),
                    "rate": series[-1],
                    "series": series,
                }
            live.append({"route": name, "decisions": cells})
        snapshots = self.logs()
        refusals = []
        for group in group_refusals(snapshots):
            group["fix"] = self.fix(settings, group)
            del group["host"], group["path"]
            refusals.append(group)
        return {
            "version": __version__,
            "now": time.time(),
            "started": self.started,
            "workers": self.workers,
            "decisions": decisions,
            "totals": {
                "requests": int(sum(requests.values())),
                "refused": int(sum(v for (_, d), v in requests.items() if d in REFUSED_NAMES)),
            },
            "routes": routes,
            "live": live,
            "refusals": refusals,
            "reloads": None if self.reloads is None else list(reversed(self.reloads)),
            "upstreams": self.upstreams(settings, responses, snapshots),
        }

    def upstreams(
        self, settings: Settings, responses: Totals, snapshots: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Per upstream: 502/504 answers (total and the last minute) and the last cause."""
        table = [*settings.table.routes, settings.table.fallback]
        by_url: dict[str, list[str]] = {}
        for route in table:
            if route.upstream is not None:
                by_url.setdefault(route.upstream.url, []).append(route.name)
        oldest = self.samples[0][2] if self.samples else {}
        faults: dict[str, list[Any]] = {}
        for snap in snapshots:
            for url, fault in (snap.get("faults") or {}).items():
                if url not in faults or fault[0] > faults[url][0]:
                    faults[url] = fault
        out = []
        for url in [*by_url, *sorted(set(faults) - set(by_url))]:
            row: dict[str, Any] = {"url": url, "routes": by_url.get(url, [])}
            for code in ("502", "504"):
                total = sum(responses.get((name, code), 0.0) for name in row["routes"])
                before = sum(oldest.get((name, code), 0.0) for name in row["routes"])
                row[code] = int(total)
                row[f"recent_{code}"] = int(total - before) if self.samples else int(total)
            fault = faults.get(url)
            cause = None
            if fault:  # "connect: connection refused"
                cause = fault[3] if fault[3].startswith(fault[2]) else f"{fault[2]}: {fault[3]}"
            row["last_cause"] = cause
            row["last_time"] = fault[0] if fault else None
            row["last_route"] = fault[1] if fault else None
            out.append(row)
        return out


REFUSED_NAMES = frozenset(v.value for v in REFUSED)
