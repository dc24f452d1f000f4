"""What an operator reads, with real `python -m corsproxy`
processes on 127.0.0.1: the start-up summary line, the admin listener from a flag or a
variable, which listener a bind failure names, reload messages that say what changed, the
`unchanged` reload result, a config file that disappears, and the metrics added for them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web
from procutil import Proc, clean_env, eventually, free_port, run, running
from test_operations import HTTP_TIMEOUT, Served, labels, parse_metrics, serve, write_atomic

from corsproxy import __version__

ORIGIN = "https://a.test"

CONFIG = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: {upstream}
timeouts: {{read: {read}}}
defaults:
  allow_origins: [{origin}]
routes:
  - name: api
    path: /api/**
  - name: other
    path: /other/**
    upstream: http://127.0.0.1:{other}
"""


def config(port: int, admin: int, upstream: str, read: float = 5, origin: str = ORIGIN) -> str:
    return CONFIG.format(
        port=port, admin=admin, upstream=upstream, read=read, origin=origin, other=free_port()
    )


async def admin_get(session: aiohttp.ClientSession, admin: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{admin}{path}") as resp:
        return resp.status, await resp.text()


async def wait_admin(proc: Proc, admin: int, session: aiohttp.ClientSession) -> None:
    async def ready() -> bool:
        assert proc.popen.poll() is None, f"corsproxy exited:\n{proc.stderr()}"
        try:
            return (await admin_get(session, admin, "/readyz"))[0] == 200
        except aiohttp.ClientConnectionError:
            return False

    deadline = time.monotonic() + 20
    while not await ready():
        assert time.monotonic() < deadline, f"never ready:\n{proc.stderr()}"
        await asyncio.sleep(0.05)


def summary_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "corsproxy listening on" in line]


def no_traceback(proc: Proc) -> None:
    assert "Traceback" not in proc.stderr() + proc.stdout(), proc.stderr()


# --- 4. start-up -----------------------------------------------------------------------------


async def test_startup_logs_one_summary_line_with_file(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with serve(tmp_path, config(port, admin, upstream.url), port, admin) as served:
        await eventually(lambda: summary_lines(served.proc.stderr()), 5, "the start-up line")
        stderr = served.proc.stderr()
    (line,) = summary_lines(stderr)
    expected = (
        f"INFO corsproxy listening on http://127.0.0.1:{port}, admin http://127.0.0.1:{admin}; "
        f"config {served.config}: 2 routes, 2 upstreams; 1 process (pid {served.proc.pid})"
    )
    assert line.endswith(expected), line
    # Nothing else is logged at start-up.
    assert next(x for x in stderr.splitlines() if " INFO " in x) == line, stderr


async def test_admin_flag_and_variable_without_a_file(tmp_path: Path) -> None:
    """`serve --admin` and `$CORSPROXY_ADMIN` open the admin listener in the no-file mode."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        for how in ("flag", "variable"):
            port, admin = free_port(), free_port()
            args = ["serve", "--upstream", "http://127.0.0.1:9", "--allow-origin", ORIGIN]
            args += ["--listen", f"127.0.0.1:{port}"]
            env = clean_env()
            if how == "flag":
                args += ["--admin", f"127.0.0.1:{admin}"]
                env["CORSPROXY_ADMIN"] = f"127.0.0.1:{free_port()}"  # the flag wins
            else:
                env["CORSPROXY_ADMIN"] = f"127.0.0.1:{admin}"
            with running(args, tmp_path / how, env=env, cwd=tmp_path) as proc:
                await wait_admin(proc, admin, session)
                await eventually(lambda: summary_lines(proc.stderr()), 5, "the start-up line")
                status, body = await admin_get(session, admin, "/config")
                assert status == 200
                assert json.loads(body)["admin"] == f"127.0.0.1:{admin}"
                (line,) = summary_lines(proc.stderr())
                assert line.endswith(
                    f"corsproxy listening on http://127.0.0.1:{port}, admin "
                    f"http://127.0.0.1:{admin}; no config file: 0 routes, 1 upstream; "
                    f"1 process (pid {proc.pid})"
                ), line
            no_traceback(proc)


def test_a_bad_admin_flag_is_one_line_and_exit_2(tmp_path: Path) -> None:
    args = ["serve", "--upstream", "http://127.0.0.1:9", "--admin", "nowhere"]
    result = run(args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "--admin: admin: error: expected host:port such as 127.0.0.1:9901, got 'nowhere'"
    ]


def held_port() -> socket.socket:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_a_taken_admin_port_is_named_and_exit_2(tmp_path: Path) -> None:
    with held_port() as holder:
        taken = holder.getsockname()[1]
        for workers in (1, 2):
            path = tmp_path / f"w{workers}.yaml"
            path.write_text(
                f"listen: 127.0.0.1:{free_port()}\nadmin: 127.0.0.1:{taken}\n"
                f"upstream: http://127.0.0.1:9\nworkers: {workers}\n"
            )
            result = run(["serve", "-c", str(path)])
            assert result.returncode == 2, result.stderr
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert lines == [
                f"corsproxy: error: cannot listen on the admin address 127.0.0.1:{taken}: "
                "address already in use"
            ], result.stderr
        # The proxy's own port: named by its address.
        args = ["serve", "--upstream", "http://127.0.0.1:9", "--listen", f"127.0.0.1:{taken}"]
        result = run(args, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1] == (
            f"corsproxy: error: cannot listen on 127.0.0.1:{taken}: address already in use"
        )


async def test_demo_serves_the_admin_listener_of_its_config(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "config" / "corsproxy.yaml").read_text()
    admin = free_port()
    path = tmp_path / "demo.yaml"
    path.write_text(re.sub(r"(?m)^admin: \S+", f"admin: 127.0.0.1:{admin}", text))
    port = free_port()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        args = ["demo", "-c", str(path), "--listen", f"127.0.0.1:{port}"]
        with running(args, tmp_path / "out") as proc:
            await wait_admin(proc, admin, session)
            assert (await admin_get(session, admin, "/healthz"))[0] == 200
            await eventually(lambda: "admin listener:" in proc.stdout(), 10, "the admin line")
            assert f"admin listener: http://127.0.0.1:{admin} (" in proc.stdout()
        no_traceback(proc)
        # Its admin port taken: the demo says so and serves all the same.
        with held_port() as holder:
            taken = holder.getsockname()[1]
            path.write_text(re.sub(r"(?m)^admin: \S+", f"admin: 127.0.0.1:{taken}", text))
            with running(args, tmp_path / "out2") as proc:
                await eventually(lambda: "admin listener:" in proc.stdout(), 10, "the admin line")
                assert (
                    "admin listener: not started: cannot listen on the admin address "
                    f"127.0.0.1:{taken}: address already in use"
                ) in proc.stdout()
                async with session.get(f"http://127.0.0.1:{port}/public/x") as resp:
                    assert resp.status == 200
        no_traceback(proc)


# --- 5. reload messages ----------------------------------------------------------------------


async def reload_counts(served: Served) -> dict[str, float]:
    found = (await served.metrics())["corsproxy_config_reloads_total"]
    return {key[0][1]: value for key, value in found.items()}


async def wait_counts(served: Served, **expected: float) -> dict[str, float]:
    seen: dict[str, float] = {}

    async def check() -> bool:
        seen.update(await reload_counts(served))
        return all(seen.get(k) == v for k, v in expected.items())

    deadline = time.monotonic() + 5
    while not await check():
        assert time.monotonic() < deadline, (seen, expected, served.proc.stderr())
        await asyncio.sleep(0.02)
    return seen


async def test_a_listen_only_change_says_so(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    text = config(port, admin, upstream.url)
    async with serve(tmp_path, text, port, admin) as served:
        write_atomic(served.config, text.replace(f":{port}\n", f":{free_port()}\n"))
        served.sighup()
        (line,) = await served.wait_log("reload (SIGHUP)")
        assert line.endswith(
            "INFO reload (SIGHUP) accepted: only listen changed; nothing to apply until a restart"
        ), line
        await served.wait_log("WARNING reload: listen changed; that takes a restart")
        assert "rules changed" not in served.proc.stderr()
        await wait_counts(served, success=1, failure=0, unchanged=0)


async def test_a_reload_says_what_changed(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    text = config(port, admin, upstream.url, read=5)
    async with serve(tmp_path, text, port, admin) as served:
        changed = text.replace("{read: 5}", "{read: 0.5, idle: 30}")
        changed = changed.replace(
            f"  allow_origins: [{ORIGIN}]\n", "  max_age: 60\n  allow_origins: [https://b.test]\n"
        )
        write_atomic(served.config, changed)
        served.sighup()
        (line,) = await served.wait_log("reload (SIGHUP) applied")
        said = line.split("applied: ", 1)[1]
        assert said == (
            f"origins added: https://b.test; origins removed: {ORIGIN}; "
            "routes changed: api, other; defaults changed: max_age; "
            "timeouts: read 5 -> 0.5, idle 75 -> 30"
        ), line
        await wait_counts(served, success=1)


async def test_sighup_with_nothing_changed_is_counted_unchanged(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    text = config(port, admin, upstream.url)
    async with serve(tmp_path, text, port, admin) as served:
        served.sighup()
        (line,) = await served.wait_log("reload (SIGHUP)")
        assert line.endswith("INFO reload (SIGHUP): config unchanged"), line
        await wait_counts(served, success=0, failure=0, unchanged=1)
        # A new file that changes no setting (a comment): unchanged too, and said so.
        write_atomic(served.config, "# a comment\n" + text)
        served.sighup()
        (_, line) = await served.wait_log("reload (SIGHUP)", 2)
        assert line.endswith(
            "INFO reload (SIGHUP): config unchanged (the file changed, no setting did)"
        ), line
        await wait_counts(served, success=0, failure=0, unchanged=2)
        assert "applied" not in served.proc.stderr()


async def test_sighup_without_a_file_is_unchanged(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    args = ["serve", "--upstream", "http://127.0.0.1:9", "--allow-origin", ORIGIN]
    args += ["--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        with running(args, tmp_path / "out", cwd=tmp_path) as proc:
            await wait_admin(proc, admin, session)
            proc.popen.send_signal(signal.SIGHUP)
            await eventually(lambda: "reload (SIGHUP)" in proc.stderr(), 5, "the reload line")
            (line,) = [x for x in proc.stderr().splitlines() if "reload (SIGHUP)" in x]
            assert line.endswith(
                "INFO reload (SIGHUP): config unchanged (no file: the same flags and variables)"
            ), line
            _, text = await admin_get(session, admin, "/metrics")
            found = parse_metrics(text)["corsproxy_config_reloads_total"]
            assert found[labels(result="unchanged")] == 1
            assert found[labels(result="success")] == 0
        no_traceback(proc)


async def test_a_config_file_that_disappears_is_logged_and_picked_up_again(
    upstream, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    text = config(port, admin, upstream.url)
    async with serve(tmp_path, text, port, admin) as served:
        served.config.unlink()
        (line,) = await served.wait_log("WARNING config file")
        assert line.endswith(
            f"WARNING config file {served.config}: no such file or directory; "
            "the running settings stay until it is back"
        ), line
        status, head, _ = await served.get("/api/x", ORIGIN)
        assert (status, head.get("Access-Control-Allow-Origin")) == (200, ORIGIN)
        served.config.write_text(text.replace(ORIGIN, "https://b.test"))
        await served.wait_log(f"INFO config file {served.config} is back")
        await served.wait_log("reload (file changed) applied: origins added: https://b.test")
        assert served.proc.stderr().count("WARNING config file") == 1
        status, head, _ = await served.get("/api/x", "https://b.test")
        assert (status, head.get("Access-Control-Allow-Origin")) == (200, "https://b.test")
        await wait_counts(served, success=1, failure=0)


# --- 7. metrics and /config ------------------------------------------------------------------


async def test_new_metrics_in_one_process(upstream, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/api/slow"):
            await release.wait()
        return web.Response(text="ok")

    upstream.handler = answer
    port, admin = free_port(), free_port()
    text = config(port, admin, upstream.url)
    scraper = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)  # its connections are the admin's

    async def metrics() -> dict:
        return parse_metrics((await admin_get(scraper, admin, "/metrics"))[1])

    try:
        async with serve(tmp_path, text, port, admin) as served:
            found = await metrics()
            assert found["corsproxy_build_info"] == {labels(version=__version__): 1}
            assert found["corsproxy_config_last_reload_successful"] == {(): 1}
            started = found["corsproxy_config_last_reload_success_timestamp_seconds"][()]
            assert abs(started - time.time()) < 60
            for name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
                assert list(found[name]) == [()], found[name]
            assert found["process_open_fds"][()] > 0

            for path, origin, times in (
                ("/api/x", ORIGIN, 2),
                ("/api/x", "https://evil.test", 1),
                ("/other/x", ORIGIN, 1),
            ):
                for _ in range(times):
                    await served.get(path, origin)

            # A request held by the upstream, on its own connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()

            async def gauges() -> tuple[float, float]:
                found = await metrics()
                return (
                    found["corsproxy_requests_in_flight"][()],
                    found["corsproxy_client_connections"][()],
                )

            async def until(expected: tuple[float, float]) -> None:
                deadline = time.monotonic() + 5
                while (seen := await gauges()) != expected:
                    assert time.monotonic() < deadline, (seen, expected)
                    await asyncio.sleep(0.02)

            # The aiohttp session keeps one connection open: two connections, one request.
            await until((1, 2))
            release.set()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await until((0, 2))
            writer.close()
            await served.session.close()
            await until((0, 0))

            found = await metrics()
            assert found["corsproxy_responses_total"] == {
                labels(route="api", code="200"): 3,
                labels(route="api", code="403"): 1,
                labels(route="other", code="502"): 1,
            }

            # A refused reload: last_reload_successful goes to 0, the time stays.
            served.config.write_text(text + "bogus: 1\n")
            served.sighup()
            await served.wait_log("refused, the old rules stay")
            found = await metrics()
            assert found["corsproxy_config_last_reload_successful"] == {(): 0}
            stamp = found["corsproxy_config_last_reload_success_timestamp_seconds"][()]
            assert stamp == started
            write_atomic(served.config, text.replace("{read: 5}", "{read: 6}"))
            served.sighup()
            await served.wait_log("reload (SIGHUP) applied: timeouts: read 5 -> 6")
            found = await metrics()
            assert found["corsproxy_config_last_reload_successful"] == {(): 1}
            assert found["corsproxy_config_last_reload_success_timestamp_seconds"][()] > started
            assert found["corsproxy_config_reloads_total"] == {
                labels(result="success"): 1,
                labels(result="failure"): 1,
                labels(result="unchanged"): 0,
            }
    finally:
        release.set()
        await scraper.close()


async def test_config_shows_every_effective_value(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with serve(tmp_path, config(port, admin, upstream.url), port, admin) as served:
        shown = json.loads((await admin_get(served.session, admin, "/config"))[1])
    assert shown["timeouts"] == {
        "connect": 5.0,
        "read": 5.0,
        "send": 60.0,
        "idle": 75.0,
        "shutdown": 30.0,
        "websocket_idle": 3600.0,
    }
    assert shown["workers"] == 1 and shown["tls"] is None
    assert (shown["access_log"], shown["preserve_host"], shown["trust_forwarded"]) == (
        "json",
        False,
        False,
    )
    assert shown["defaults"] == {
        "allow_origins": [ORIGIN],
        "allow_methods": ["GET", "HEAD", "POST"],
        "allow_headers": [],
        "expose_headers": [],
        "allow_credentials": False,
        "max_age": None,
        "allow_private_network": False,
        "on_disallowed": "reject",
        "preflight_status": 204,
        "report_only": False,
    }
    api = shown["routes"][0]
    assert (api["name"], api["path"], api["upstream"]) == ("api", "/api/**", upstream.url)
    assert api["cors"] == shown["defaults"]


async def test_new_metrics_with_workers(upstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    text = config(port, admin, upstream.url) + "workers: 2\n"
    path = tmp_path / "corsproxy.yaml"
    path.write_text(text)
    run_tmp = tmp_path / "tmp"
    run_tmp.mkdir()
    env = clean_env(TMPDIR=str(run_tmp))
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT, connector=connector) as session:
        with running(["serve", "-c", str(path)], tmp_path / "out", env=env) as proc:
            await wait_admin(proc, admin, session)
            await eventually(lambda: summary_lines(proc.stderr()), 5, "the start-up line")
            (line,) = summary_lines(proc.stderr())
            workers = sorted(
                c.pid
                for c in psutil.Process(proc.pid).children()
                if "spawn_main" in " ".join(c.cmdline())
            )
            assert len(workers) == 2
            assert (
                f"INFO corsproxy listening on http://127.0.0.1:{port}, admin "
                f"http://127.0.0.1:{admin}; config {path}: 2 routes, 2 upstreams; 2 workers (pids "
            ) in line, line
            assert set(map(int, re.findall(r"\d+", line.rsplit("pids", 1)[1]))) == set(workers)
            for _ in range(20):
                async with session.get(
                    f"http://127.0.0.1:{port}/api/x", headers={"Origin": ORIGIN}
                ) as resp:
                    assert resp.status == 200

            async def scrape() -> dict:
                return parse_metrics((await admin_get(session, admin, "/metrics"))[1])

            deadline = time.monotonic() + 5
            while True:
                found = await scrape()
                done = found.get("corsproxy_responses_total", {})
                if done.get(labels(route="api", code="200")) == 20:
                    break
                assert time.monotonic() < deadline, found.get("corsproxy_responses_total")
                await asyncio.sleep(0.05)
            assert found["corsproxy_requests_in_flight"] == {(): 0}
            assert found["corsproxy_client_connections"] == {(): 0}
            assert found["corsproxy_build_info"] == {labels(version=__version__): 1}
            assert found["corsproxy_config_last_reload_successful"] == {(): 1}
            rss = found["process_resident_memory_bytes"]
            assert set(rss) == {labels(pid=str(proc.pid), role="supervisor")} | {
                labels(pid=str(pid), role="worker") for pid in workers
            }, rss
            proc.popen.send_signal(signal.SIGHUP)
            await eventually(lambda: "config unchanged" in proc.stderr(), 5, "the reload")
            found = await scrape()
            assert found["corsproxy_config_reloads_total"][labels(result="unchanged")] == 1
        no_traceback(proc)
    assert not os.listdir(run_tmp)
