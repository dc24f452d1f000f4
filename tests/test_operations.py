"""Operations (docs/operations.md) with real processes and signals on 127.0.0.1: hot reload under
load, refused reloads, SIGHUP with nothing changed, exact metric values, the admin listener,
and what a reload may and may not change."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from procutil import Proc, accepts, free_port, run, running
from prometheus_client.parser import text_string_to_metric_families

from corsproxy.runtime import reload

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
ACAO = "Access-Control-Allow-Origin"
ACEH = "Access-Control-Expose-Headers"
ORIGIN_A = "https://a.test"
ORIGIN_B = "https://b.test"
EVIL = "https://evil.test"

Series = dict[tuple[tuple[str, str], ...], float]


# --- helpers --------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """What careful tools and Kubernetes ConfigMap updates do: a new file renamed over."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def write_in_place(path: Path, text: str, pause: float = 0.0) -> None:
    """What many editors do: truncate and write the same file. With ``pause``, as a slow
    writer: the file stays empty (a valid config with no routes!) for ``pause`` seconds, then
    a third written, then two thirds, each for as long, then whole."""
    data = text.encode()
    third = len(data) // 3
    chunks = (data[:third], data[third : 2 * third], data[2 * third :]) if pause else (data,)
    with path.open("wb") as f:
        for chunk in chunks:
            if pause:
                f.flush()
                time.sleep(pause)  # the scenario: a file written slowly, in thirds
            f.write(chunk)


def logged_at(stderr: str, needle: str) -> float:
    """When the last log line containing ``needle`` was written, on time.monotonic()'s clock
    (the log's time stamps are local wall-clock time with milliseconds)."""
    line = [line for line in stderr.splitlines() if needle in line][-1]
    stamp, millis = line[:23].split(",")
    wall = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    return wall - time.time() + time.monotonic()


def parse_metrics(text: str) -> dict[str, Series]:
    """Every sample by name, then by its sorted labels."""
    samples: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


@dataclass
class Served:
    """A running `corsproxy serve -c FILE` with its admin listener."""

    proc: Proc
    config: Path
    port: int
    admin: int
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    def sighup(self) -> None:
        self.proc.popen.send_signal(signal.SIGHUP)

    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    async def get(
        self, path: str, origin: str | None = None, method: str = "GET", **headers: str
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        if origin is not None:
            headers["Origin"] = origin
        async with self.session.request(method, self.url + path, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def metrics(self) -> dict[str, Series]:
        async with self.session.get(self.admin_url + "/metrics") as resp:
            assert resp.status == 200
            return parse_metrics(await resp.text())

    async def reloads(self) -> tuple[float, float]:
        found = (await self.metrics())["corsproxy_config_reloads_total"]
        return found[labels(result="success")], found[labels(result="failure")]

    async def wait_reloads(
        self, success: float, failure: float, timeout: float = 5.0
    ) -> tuple[float, float]:
        """Poll /metrics until the reload counters reach the given values."""
        deadline = time.monotonic() + timeout
        seen = await self.reloads()
        while seen != (success, failure) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            seen = await self.reloads()
        assert seen == (success, failure), (
            f"reload counters (success, failure) are {seen}, expected {(success, failure)}; "
            f"stderr:\n{self.proc.stderr()}"
        )
        return seen

    async def wait_log(self, needle: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait until ``needle`` is in ``count`` lines of stderr; returns those lines."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.proc.stderr().splitlines() if needle in line]
            if len(lines) >= count or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert len(lines) >= count, f"{needle!r} not logged {count} time(s):\n{self.proc.stderr()}"
        return lines


@asynccontextmanager
async def serve(tmp_path: Path, text: str, port: int, admin: int) -> AsyncIterator[Served]:
    """Write ``text`` to a config file, start the proxy on it, wait until /readyz says so."""
    config = tmp_path / "corsproxy.yaml"
    config.write_text(text)
    args = ["serve", "-c", str(config)]
    with running(args, tmp_path / "out", cwd=tmp_path) as proc:
        async with aiohttp.ClientSession(
            timeout=HTTP_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            served = Served(proc, config, port, admin, session)
            deadline = time.monotonic() + 10
            while True:
                assert served.alive(), f"corsproxy exited:\n{proc.stderr()}"
                try:
                    async with session.get(served.admin_url + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, f"never ready:\n{proc.stderr()}"
                await asyncio.sleep(0.05)
            yield served
    assert "Traceback" not in proc.stderr(), proc.stderr()


def two_sets(port: int, admin: int, upstream: str) -> dict[int, str]:
    """Two valid rule sets that differ in the allowed origin AND the exposed header, so a
    response can tell which set answered it, and a mix of both cannot go unnoticed."""
    template = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: {upstream}
defaults:
  allow_origins: [{origin}]
  expose_headers: [{expose}]
routes:
  - name: {name}
    path: /**
"""
    return {
        1: template.format(
            port=port,
            admin=admin,
            upstream=upstream,
            origin=ORIGIN_A,
            expose="X-Set-One",
            name="set-one",
        ),
        2: template.format(
            port=port,
            admin=admin,
            upstream=upstream,
            origin=ORIGIN_B,
            expose="X-Set-Two",
            name="set-two",
        ),
    }


# What each set answers, per origin: (status, ACAO, ACEH).
EXPECTED = {
    1: {ORIGIN_A: (200, ORIGIN_A, "X-Set-One"), ORIGIN_B: (403, None, None)},
    2: {ORIGIN_A: (403, None, None), ORIGIN_B: (200, ORIGIN_B, "X-Set-Two")},
}


# --- 1. reload under load -------------------------------------------------------------------


@dataclass
class Sample:
    started: float
    finished: float
    origin: str
    status: int = 0
    acao: str | None = None
    aceh: str | None = None
    error: str = ""

    def rule_set(self) -> int | None:
        """Which rule set produced this response; None for a failure or a mix."""
        if self.error:
            return None
        seen = (self.status, self.acao, self.aceh)
        for number, answers in EXPECTED.items():
            if answers[self.origin] == seen:
                return number
        return None


async def client_loop(
    session: aiohttp.ClientSession, url: str, first: int, stop: asyncio.Event, out: list[Sample]
) -> None:
    """Send GETs back to back, Origin A and Origin B in turn, recording every answer."""
    turn = first
    while not stop.is_set():
        origin = (ORIGIN_A, ORIGIN_B)[turn % 2]
        turn += 1
        started = time.monotonic()
        try:
            async with session.get(url, headers={"Origin": origin}) as resp:
                await resp.read()
                out.append(
                    Sample(
                        started,
                        time.monotonic(),
                        origin,
                        resp.status,
                        resp.headers.get(ACAO),
                        resp.headers.get(ACEH),
                    )
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.append(Sample(started, time.monotonic(), origin, error=repr(exc)))


# (how the file is written, whether SIGHUP follows): polled reloads and signalled ones.
# "in-place-slow" follows a polled reload and is timed so the poller's next look at the file
# falls while the file is still empty or half written.
WRITE_MODES = (
    ("atomic", False),
    ("in-place", False),
    ("in-place-slow", False),
    ("atomic", True),
    ("in-place", True),
)
SLOW_STEP = 0.03  # below reload.SETTLE_SECONDS: a writer that pauses longer cannot be told apart
REWRITES = 20


@pytest.mark.slow  # about 16 s: 20 reloads, most of them found by the 1 s file poll
async def test_reload_under_load_never_fails_and_never_mixes_rules(
    upstream, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    sets = two_sets(port, admin, upstream.url)
    async with serve(tmp_path, sets[1], port, admin) as served:
        success0, failure0 = await served.reloads()
        samples: list[Sample] = []
        stop = asyncio.Event()
        connections: list[object] = []

        async def on_create(*_: object) -> None:
            connections.append(None)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        connector = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=HTTP_TIMEOUT,
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[trace],
        ) as load:
            clients = [
                asyncio.ensure_future(client_loop(load, served.url + "/load", n, stop, samples))
                for n in range(4)
            ]
            # (time written, rule set written, time the reload was seen applied)
            timeline: list[tuple[float, int, float]] = []
            try:
                # Some requests answered under the first rules before the first rewrite.
                deadline = time.monotonic() + 2
                while len(samples) < 8 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                for i in range(REWRITES):
                    new = 2 if i % 2 == 0 else 1
                    how, hup = WRITE_MODES[i % len(WRITE_MODES)]
                    if how == "in-place-slow":
                        # The poller looks again POLL_SECONDS after its last reload, which it
                        # logged: aim the middle of the write (3 * SLOW_STEP) at that look.
                        polled = logged_at(served.proc.stderr(), "reload (file changed) applied")
                        aim = polled + reload.POLL_SECONDS - 1.5 * SLOW_STEP
                        await asyncio.sleep(max(0.0, aim - time.monotonic()))
                    written = time.monotonic()
                    if how == "atomic":
                        write_atomic(served.config, sets[new])
                    elif how == "in-place":
                        write_in_place(served.config, sets[new])
                    else:
                        await asyncio.to_thread(write_in_place, served.config, sets[new], SLOW_STEP)
                    if hup:
                        served.sighup()
                    await served.wait_reloads(success0 + i + 1, failure0)
                    applied = time.monotonic()
                    timeline.append((written, new, applied))
                    # Let some requests run under the new rules before the next rewrite.
                    target = len(samples) + 8
                    deadline = time.monotonic() + 2
                    while len(samples) < target and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # the scenario: a last moment of traffic
            finally:
                stop.set()
                await asyncio.gather(*clients)
        success, failure = await served.reloads()
        stderr = served.proc.stderr()

    failures = [s for s in samples if s.error or s.status >= 500]
    mixed = [s for s in samples if not s.error and s.status < 500 and s.rule_set() is None]
    # A request that started after a reload was seen applied, and finished before the next
    # write, must have had the new rules.
    stale = []
    for index, (_, new, applied) in enumerate(timeline):
        until = timeline[index + 1][0] if index + 1 < len(timeline) else float("inf")
        stale += [
            s for s in samples if applied < s.started and s.finished < until and s.rule_set() != new
        ]
    latencies = []
    for written, new, _ in timeline:
        first = min(
            (s.finished for s in samples if s.finished >= written and s.rule_set() == new),
            default=None,
        )
        assert first is not None, f"no response under rule set {new} after the write at {written}"
        latencies.append(first - written)
    by_mode: dict[str, list[float]] = {}
    for i, latency in enumerate(latencies):
        how, hup = WRITE_MODES[i % len(WRITE_MODES)]
        mode = "SIGHUP" if hup else "slow in-place write" if how == "in-place-slow" else "poll"
        by_mode.setdefault(mode, []).append(latency)
    figures = (
        f"requests sent: {len(samples)} on {len(connections)} connection(s), "
        f"failed: {len(failures)}, mixed: {len(mixed)}, "
        f"stale: {len(stale)}, reloads applied: {int(success - success0)} of {REWRITES}, "
        f"refused: {int(failure - failure0)}; "
        f"reload latency (write -> first response under the "
        f"new rules): median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms; "
        + ", ".join(
            f"{mode}: median {statistics.median(values) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms"
            for mode, values in sorted(by_mode.items())
        )
    )
    print("\nreload under load:", figures)
    assert len(samples) > 200, figures
    assert len(connections) == 4, f"{figures}: keep-alive connections were closed by reloads"
    assert failures == [], f"{figures}; first failures: {failures[:5]}"
    assert mixed == [], f"{figures}; responses matching neither rule set: {mixed[:5]}"
    assert stale == [], f"{figures}; old rules after a reload was applied: {stale[:5]}"
    assert (success - success0, failure - failure0) == (REWRITES, 0), f"{figures}\n{stderr}"
    assert {s.rule_set() for s in samples} == {1, 2}, figures
    assert (
        stderr.count("reload (file changed) applied") + stderr.count("reload (SIGHUP) applied")
        == REWRITES
    ), stderr


async def test_request_in_flight_finishes_under_the_rules_it_started_with(
    upstream, tmp_path: Path
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/held":
            arrived.set()
            await release.wait()
        return web.Response(text="ok")

    upstream.handler = answer
    port, admin = free_port(), free_port()
    sets = two_sets(port, admin, upstream.url)
    async with serve(tmp_path, sets[1], port, admin) as served:
        created: list[object] = []

        async def on_create(*_: object) -> None:
            created.append(None)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        connector = aiohttp.TCPConnector(limit=1)  # one connection: kept alive across the swap
        async with aiohttp.ClientSession(
            connector=connector, timeout=HTTP_TIMEOUT, trace_configs=[trace]
        ) as one:

            async def get(path: str, origin: str) -> tuple[int, str | None, str | None]:
                async with one.get(served.url + path, headers={"Origin": origin}) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get(ACAO), resp.headers.get(ACEH)

            held = asyncio.ensure_future(get("/held", ORIGIN_A))
            try:
                await asyncio.wait_for(arrived.wait(), 5)
                write_atomic(served.config, sets[2])
                served.sighup()
                await served.wait_reloads(1, 0)
            finally:
                release.set()
            assert await held == EXPECTED[1][ORIGIN_A]
            # The next requests on the same connection get the new rules.
            assert await get("/x", ORIGIN_B) == EXPECTED[2][ORIGIN_B]
            assert await get("/x", ORIGIN_A) == EXPECTED[2][ORIGIN_A]
            assert len(created) == 1, "the connection was not kept across the reload"
        assert len(upstream.seen) == 2


# --- 2. an invalid file ---------------------------------------------------------------------


async def test_invalid_file_is_refused_with_check_messages_and_old_rules_stay(
    upstream, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    sets = two_sets(port, admin, upstream.url)
    broken = (
        sets[2]
        .replace("allow_origins:", "allow_orgins:")
        .replace("path: /**", "path: /**\n    upstream: ftp://nowhere")
    )
    async with serve(tmp_path, sets[1], port, admin) as served:
        success0, failure0 = await served.reloads()

        write_atomic(served.config, broken)
        await served.wait_reloads(success0, failure0 + 1)
        # What `check` prints for the same file, line for line, is in the log.
        checked = run(["check", "-c", str(served.config)], cwd=tmp_path)
        assert checked.returncode == 2, checked.stderr
        messages = [line for line in checked.stderr.splitlines() if ": error: " in line]
        assert len(messages) >= 2, checked.stderr
        assert all(line.startswith(f"{served.config}:") for line in messages), messages
        await served.wait_log("refused, the old rules stay")
        logged = served.proc.stderr().splitlines()
        for message in messages:
            assert any(line.endswith(" " + message) for line in logged), (message, logged)

        # The process lives and the old rules keep answering.
        assert served.alive()
        status, head, _ = await served.get("/x", ORIGIN_A)
        assert (status, head.get(ACAO), head.get(ACEH)) == EXPECTED[1][ORIGIN_A]
        status, _, _ = await served.get("/x", ORIGIN_B)
        assert status == 403
        # The refused file is not counted again at every poll. Not a wait for an effect: an
        # absence is observed over a window longer than one poll (reload.POLL_SECONDS).
        await asyncio.sleep(reload.POLL_SECONDS + 0.5)
        assert await served.reloads() == (success0, failure0 + 1)
        assert served.alive()

        # An emptied file (a writer caught mid-write) is refused too, not applied.
        write_atomic(served.config, "")
        await served.wait_reloads(success0, failure0 + 2)
        status, head, _ = await served.get("/x", ORIGIN_A)
        assert (status, head.get(ACAO), head.get(ACEH)) == EXPECTED[1][ORIGIN_A]

        # A valid file again: it is applied.
        write_atomic(served.config, sets[2])
        await served.wait_reloads(success0 + 1, failure0 + 2)
        status, head, _ = await served.get("/x", ORIGIN_B)
        assert (status, head.get(ACAO), head.get(ACEH)) == EXPECTED[2][ORIGIN_B]
        status, _, _ = await served.get("/x", ORIGIN_A)
        assert status == 403


# --- 3. SIGHUP with an unchanged file ------------------------------------------------------


async def test_sighup_or_touch_with_unchanged_file_changes_nothing(
    upstream, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    sets = two_sets(port, admin, upstream.url)
    async with serve(tmp_path, sets[1], port, admin) as served:
        before = await served.reloads()
        async with served.session.get(served.admin_url + "/config") as resp:
            config_before = await resp.json()

        served.sighup()
        await served.wait_log("config unchanged", 1)
        os.utime(served.config)  # a new mtime, the same bytes: the poller notices, reads, stops
        await served.wait_log("config unchanged", 2)
        write_atomic(served.config, sets[1])  # a new inode, the same bytes
        await served.wait_log("config unchanged", 3)
        served.sighup()
        await served.wait_log("config unchanged", 4)

        assert await served.reloads() == before
        found = (await served.metrics())["corsproxy_config_reloads_total"]
        assert found[labels(result="unchanged")] == 4  # each read that changed nothing
        assert "applied" not in served.proc.stderr(), served.proc.stderr()
        async with served.session.get(served.admin_url + "/config") as resp:
            assert await resp.json() == config_before
        status, head, _ = await served.get("/x", ORIGIN_A)
        assert (status, head.get(ACAO), head.get(ACEH)) == EXPECTED[1][ORIGIN_A]
        status, head, _ = await served.get("/x", ORIGIN_B)
        assert (status, head.get(ACAO), head.get(ACEH)) == EXPECTED[1][ORIGIN_B]
        assert served.alive()


# --- 4. metrics -----------------------------------------------------------------------------


METRICS_CONFIG = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: {upstream}
timeouts: {{read: 0.5}}
defaults:
  allow_origins: [{origin}]
routes:
  - name: fwd
    path: /fwd/**
    cors: {{on_disallowed: forward}}
  - name: report
    path: /report/**
    cors: {{report_only: true}}
  - name: down
    path: /down/**
    upstream: http://127.0.0.1:{closed}
  - name: slow
    path: /slow/**
  - name: api
    path: /api/**
"""


async def test_metrics_count_a_known_sequence_exactly(upstream, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/slow"):
            await release.wait()
        return web.Response(text="ok")

    upstream.handler = answer
    port, admin = free_port(), free_port()
    text = METRICS_CONFIG.format(
        port=port, admin=admin, upstream=upstream.url, origin=ORIGIN_A, closed=free_port()
    )
    preflight = {"Access-Control-Request-Method": "GET"}
    # (method, path, origin, extra headers, expected status, times)
    plan = [
        ("GET", "/api/x", ORIGIN_A, {}, 200, 3),  # actual, allowed
        ("GET", "/api/x", EVIL, {}, 403, 2),  # actual, rejected
        ("OPTIONS", "/api/x", ORIGIN_A, preflight, 204, 4),  # preflight, allowed
        ("OPTIONS", "/api/x", EVIL, preflight, 403, 1),  # preflight, rejected
        ("GET", "/api/x", None, {}, 200, 5),  # no Origin
        ("GET", "/fwd/x", EVIL, {}, 200, 2),  # disallowed, forwarded
        ("GET", "/report/x", EVIL, {}, 200, 3),  # report_only, would reject
        ("GET", "/report/x", ORIGIN_A, {}, 200, 1),  # report_only, would allow
        ("GET", "/down/x", ORIGIN_A, {}, 502, 2),  # upstream refuses connections
        ("GET", "/slow/x", ORIGIN_A, {}, 504, 1),  # upstream slower than timeouts.read
    ]
    try:
        async with serve(tmp_path, text, port, admin) as served:
            for method, path, origin, headers, status, times in plan:
                for _ in range(times):
                    got, _, body = await served.get(path, origin, method, **headers)
                    assert got == status, (method, path, origin, got, body)
            total = sum(times for *_, times in plan)
            deadline = time.monotonic() + 5
            while True:
                found = await served.metrics()
                durations = found.get("corsproxy_request_duration_seconds_count", {})
                if sum(durations.values()) >= total or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
    finally:
        release.set()

    def requests(route: str, kind: str, decision: str) -> tuple[tuple[str, str], ...]:
        return labels(route=route, kind=kind, decision=decision)

    assert found["corsproxy_requests_total"] == {
        requests("api", "actual", "allowed"): 3,
        requests("api", "actual", "rejected"): 2,
        requests("api", "preflight", "allowed"): 4,
        requests("api", "preflight", "rejected"): 1,
        requests("api", "none", "not_cors"): 5,
        requests("fwd", "actual", "forwarded"): 2,
        requests("report", "actual", "would_reject"): 3,
        requests("report", "actual", "would_allow"): 1,
        requests("down", "actual", "allowed"): 2,
        requests("slow", "actual", "allowed"): 1,
    }
    assert found["corsproxy_upstream_errors_total"] == {
        labels(route="down", reason="connect"): 2,
        labels(route="slow", reason="timeout"): 1,
    }
    assert found["corsproxy_request_duration_seconds_count"] == {
        labels(route="api"): 15,
        labels(route="fwd"): 2,
        labels(route="report"): 4,
        labels(route="down"): 2,
        labels(route="slow"): 1,
    }
    assert sum(found["corsproxy_request_duration_seconds_count"].values()) == total
    # The slow one took at least timeouts.read: it is in no bucket below that.
    buckets = found["corsproxy_request_duration_seconds_bucket"]
    assert buckets[labels(le="+Inf", route="slow")] == 1
    assert buckets[labels(le="0.25", route="slow")] == 0
    assert buckets[labels(le="+Inf", route="api")] == 15
    assert found["corsproxy_request_duration_seconds_sum"][labels(route="slow")] >= 0.5
    assert found["corsproxy_config_reloads_total"] == {
        labels(result="success"): 0,
        labels(result="failure"): 0,
        labels(result="unchanged"): 0,
    }
    assert found["corsproxy_responses_total"] == {
        labels(route="api", code="200"): 8,
        labels(route="api", code="204"): 4,
        labels(route="api", code="403"): 3,
        labels(route="fwd", code="200"): 2,
        labels(route="report", code="200"): 4,
        labels(route="down", code="502"): 2,
        labels(route="slow", code="504"): 1,
    }


# --- 5. the admin listener ------------------------------------------------------------------


async def test_admin_endpoints(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    text = METRICS_CONFIG.format(
        port=port, admin=admin, upstream=upstream.url, origin=ORIGIN_A, closed=free_port()
    )
    async with serve(tmp_path, text, port, admin) as served:
        session, base = served.session, served.admin_url
        async with session.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 200
        async with session.get(base + "/metrics") as resp:
            assert resp.status == 200
            content_type = resp.headers["Content-Type"]
            assert content_type.split(";")[0] == "text/plain", content_type
            assert "version=0.0.4" in content_type.replace(" ", ""), content_type
            names = {family.name for family in text_string_to_metric_families(await resp.text())}
        assert {
            "corsproxy_requests",
            "corsproxy_upstream_errors",
            "corsproxy_request_duration_seconds",
            "corsproxy_config_reloads",
        } <= names, names
        async with session.get(base + "/config") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            config = json.loads(await resp.text())
        assert config["listen"] == f"127.0.0.1:{port}"
        assert config["defaults"]["allow_origins"] == [ORIGIN_A]
        assert [route["name"] for route in config["routes"]] == [
            "fwd",
            "report",
            "down",
            "slow",
            "api",
        ]
        async with session.get(base + "/nothing-here") as resp:
            assert resp.status == 404
        # The admin paths exist on the admin listener only: on the proxy port, /metrics is
        # an ordinary path, forwarded to the upstream.
        status, _, body = await served.get("/metrics")
        assert (status, body) == (200, b"ok")
        assert upstream.seen[-1].raw_path == "/metrics"


# --- 6. what a reload may change ------------------------------------------------------------


RELOAD_CONFIG = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: {upstream}
timeouts: {{read: {read}}}
defaults:
  allow_origins: [{origin}]
"""


async def test_reload_keeps_listeners_and_applies_timeouts(upstream, tmp_path: Path) -> None:
    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(0.8)  # the scenario: a slow upstream
        return web.Response(text="done")

    upstream.handler = answer
    port, admin, other_port, other_admin = free_port(), free_port(), free_port(), free_port()

    def config(read: float, listen: int = port, admin_port: int = admin) -> str:
        return RELOAD_CONFIG.format(
            port=listen, admin=admin_port, upstream=upstream.url, read=read, origin=ORIGIN_A
        )

    async with serve(tmp_path, config(5), port, admin) as served:
        status, _, body = await served.get("/slow", ORIGIN_A)
        assert (status, body) == (200, b"done")

        # A new listen and admin address: logged as needing a restart, the old ones stay.
        write_atomic(served.config, config(5, other_port, other_admin))
        served.sighup()
        await served.wait_reloads(1, 0)
        (warning,) = await served.wait_log("takes a restart")
        assert "listen" in warning and "admin" in warning, warning
        assert "WARNING" in warning, warning
        status, _, _ = await served.get("/x", ORIGIN_A)
        assert status == 200
        assert not accepts(other_port) and not accepts(other_admin)
        async with served.session.get(served.admin_url + "/config") as resp:
            effective = await resp.json()
        assert effective["listen"] == f"127.0.0.1:{port}", "/config shows a listener not in use"
        assert effective["admin"] == f"127.0.0.1:{admin}", "/config shows a listener not in use"

        # A shorter read timeout applies at once: the slow upstream now gets 504.
        write_atomic(served.config, config(0.3, other_port, other_admin))
        served.sighup()
        await served.wait_reloads(2, 0)
        started = time.monotonic()
        status, head, _ = await served.get("/slow", ORIGIN_A)
        took = time.monotonic() - started
        assert status == 504
        assert head.get(ACAO) == ORIGIN_A  # a proxy-made error still readable by the page
        assert took < 0.7, took
        found = await served.metrics()
        assert found["corsproxy_upstream_errors_total"] == {
            labels(route="default", reason="timeout"): 1
        }
        # And back: a longer one lets the slow upstream answer again.
        write_atomic(served.config, config(5, other_port, other_admin))
        served.sighup()
        await served.wait_reloads(3, 0)
        status, _, body = await served.get("/slow", ORIGIN_A)
        assert (status, body) == (200, b"done")
        assert served.alive()


@pytest.mark.parametrize("how", ["atomic", "in-place"])
async def test_reload_applies_without_sighup_within_the_poll_interval(
    upstream, tmp_path: Path, how: str
) -> None:
    """The file watcher alone (no signal) picks a change up within about a second."""
    port, admin = free_port(), free_port()
    sets = two_sets(port, admin, upstream.url)
    async with serve(tmp_path, sets[1], port, admin) as served:
        written = time.monotonic()
        if how == "atomic":
            write_atomic(served.config, sets[2])
        else:
            write_in_place(served.config, sets[2])
        await served.wait_reloads(1, 0, timeout=3)
        assert time.monotonic() - written < 2.5
        (line,) = await served.wait_log("reload (file changed) applied")
        assert "routes added: set-two" in line and "routes removed: set-one" in line, line
        assert f"origins added: {ORIGIN_B}" in line and f"origins removed: {ORIGIN_A}" in line
        status, head, _ = await served.get("/x", ORIGIN_B)
        assert (status, head.get(ACAO), head.get(ACEH)) == EXPECTED[2][ORIGIN_B]


async def test_admin_answers_head_and_refuses_other_methods(tmp_path: Path) -> None:
    """The admin listener runs on the proxy's own HTTP layer: GET and HEAD on its four
    paths, 405 with Allow for any other method, 404 elsewhere."""
    from corsproxy.runtime.admin import AdminView, start_admin

    view = AdminView(ready=lambda: False, metrics=lambda: b"m 1\n", config=lambda: {"a": 1})
    port = free_port()
    admin = await start_admin(view, "127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            async with session.head(base + "/healthz") as resp:
                assert (resp.status, resp.headers["Content-Length"]) == (200, "3")
                assert await resp.read() == b""
            async with session.post(base + "/metrics") as resp:
                assert (resp.status, resp.headers["Allow"]) == (405, "GET, HEAD")
            async with session.get(base + "/readyz") as resp:
                assert (resp.status, await resp.text()) == (503, "not ready\n")
            async with session.get(base + "/config?x=1") as resp:
                assert (resp.status, await resp.json()) == (200, {"a": 1})
            async with session.get(base + "/metrics") as resp:
                assert (resp.status, await resp.read()) == (200, b"m 1\n")
    finally:
        await admin.cleanup()
