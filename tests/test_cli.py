"""The command line as users run it (README.md, docs/configuration.md): real
`python -m corsproxy` processes."""

from __future__ import annotations

import asyncio
import http.client
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from procutil import (
    REPO,
    accepts,
    assert_no_traceback,
    clean_env,
    eventually,
    free_port,
    run,
    running,
    stop,
    wait_port,
)

CONFIG_FILES = sorted((REPO / "config").glob("*.y*ml"))
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
DIAGNOSTIC = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+): (?P<key>\S+): (?P<level>error|warning): .+$"
)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


async def wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for a process without blocking the event loop (in-process upstreams keep serving)."""
    deadline = time.monotonic() + timeout
    while popen.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return popen.poll()


# --- check ----------------------------------------------------------------------------------


def test_config_folder_is_not_empty() -> None:
    names = {path.name for path in CONFIG_FILES}
    assert "corsproxy.yaml" in names, names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_check_accepts_every_shipped_config(path: Path) -> None:
    result = run(["check", "-c", str(path)])
    assert result.returncode == 0, result.stderr
    assert error_lines(result.stderr) == []
    assert "ok" in result.stdout
    assert_no_traceback(result.stdout, result.stderr)


BROKEN = """\
listen: 127.0.0.1:{port}
upstream: http://127.0.0.1:9
defaults:
  allow_orgins: [https://app.test]
routes:
  - path: /cred/**
    cors:
      allow_credentials: true
      allow_origins:
        - "*"
  - path: /bad/**
    cors:
      allow_origins:
        - https://slash.test/
        - regex: '^https://(unclosed$'
      allow_methods: [GET, TRACE]
      expose_headers:
        - X-Request-ID
        - Set-Cookie
"""
# (line, key path pattern, what the message must say), one per error in BROKEN.
BROKEN_ERRORS = [
    (4, r"defaults\.allow_orgins", r"did you mean.*allow_origins"),
    (10, r"routes\[0\]\.cors\.allow_origins\[0\]", r"\*.*credentials|credentials.*\*"),
    (14, r"routes\[1\]\.cors\.allow_origins\[0\]", r"https://slash\.test/"),
    (15, r"routes\[1\]\.cors\.allow_origins\[1\](\.regex)?", r"regex|pattern"),
    (16, r"routes\[1\]\.cors\.allow_methods\[1\]", r"TRACE"),
    (19, r"routes\[1\]\.cors\.expose_headers\[1\]", r"(?i:set-cookie)"),
]


def assert_reports_broken(stderr: str, path: Path) -> None:
    errors = error_lines(stderr)
    for line in errors:
        match = DIAGNOSTIC.match(line)
        assert match, f"not FILE:LINE: KEY.PATH: error: message: {line!r}"
        assert match["file"] == str(path), line
    for lineno, key, says in BROKEN_ERRORS:
        pattern = re.compile(rf"^{re.escape(str(path))}:{lineno}: {key}: error: .*(?:{says})")
        assert any(pattern.search(line) for line in errors), (
            f"no error for line {lineno} {key} saying {says!r} in:\n{stderr}"
        )
    assert len(errors) == len(BROKEN_ERRORS), stderr


def test_check_prints_every_error_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.format(port=free_port()))
    result = run(["check", "-c", str(path)])
    assert result.returncode == 2, result.stderr
    assert_reports_broken(result.stderr, path)
    assert_no_traceback(result.stdout, result.stderr)


def test_check_reports_yaml_syntax_error_line(tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text(
        "listen: 127.0.0.1:8080\n"
        "upstream: http://127.0.0.1:9\n"
        "defaults:\n"
        "  allow_origins: [https://app.test]\n"
        "routes:\n"
        "  - path: /a/**\n"
        "    name: one: two\n"
    )
    result = run(["check", "-c", str(path)])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.match(rf"^{re.escape(str(path))}:7: yaml: error: \S", lines[0]), lines[0]
    assert_no_traceback(result.stdout, result.stderr)


def test_check_uses_corsproxy_config_variable(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.format(port=free_port()))
    result = run(["check"], env=clean_env(CORSPROXY_CONFIG=str(path)), cwd=tmp_path)
    assert result.returncode == 2
    assert_reports_broken(result.stderr, path)


def test_serve_refuses_an_invalid_file_and_never_listens(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.format(port=port))
    with running(["serve", "-c", str(path)], tmp_path / "out") as proc:
        deadline = time.monotonic() + 15
        while proc.popen.poll() is None and time.monotonic() < deadline:
            assert not accepts(port), "serve started listening with an invalid config"
            time.sleep(0.01)
        assert proc.popen.poll() == 2, proc.stderr()
    assert not accepts(port)
    stderr = proc.stderr()
    assert_reports_broken(stderr, path)
    assert error_lines(stderr) == error_lines(run(["check", "-c", str(path)]).stderr)
    assert_no_traceback(proc.stdout(), stderr)


# --- bad command lines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--bogus"],
        ["serve", "--upstream", "ftp://x", "--allow-origin", "https://app.test"],
        ["serve", "--upstream", "http://127.0.0.1:9", "--listen", "no-port-here"],
        ["serve", "--upstream", "http://127.0.0.1:9", "--allow-origin", "https://app.test/"],
        ["check", "-c", "/nonexistent/corsproxy.yaml"],
        ["frobnicate"],
        [],
    ],
    ids=[
        "unknown-flag",
        "ftp-upstream",
        "bad-listen",
        "bad-origin",
        "missing-file",
        "verb",
        "none",
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    result = run(args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    assert_no_traceback(result.stdout, result.stderr)


def test_serve_without_any_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run(["serve"], cwd=tmp_path)  # no ./corsproxy.yaml, no flags, no variables
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert_no_traceback(result.stdout, result.stderr)


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["serve", "--upstream", "http://127.0.0.1:9", "--allow-origin", "https://app.test"]
        result = run([*args, "--listen", f"127.0.0.1:{port}"], cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert str(port) in errors[0]
    assert_no_traceback(result.stdout, result.stderr)


# --- serve: no-file mode, variables, overrides ----------------------------------------------


async def preflight(
    session: aiohttp.ClientSession, url: str, origin: str, method: str, headers: str
) -> tuple[int, dict[str, str]]:
    async with session.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
        timeout=HTTP_TIMEOUT,
    ) as resp:
        await resp.read()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}


async def get(
    session: aiohttp.ClientSession, url: str, origin: str | None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Origin": origin} if origin else {}
    async with session.get(url, headers=headers, timeout=HTTP_TIMEOUT) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",") if name.strip()}


async def assert_permissive_gate(
    session: aiohttp.ClientSession,
    base: str,
    upstream,
    allowed: list[str],
    credentials: bool = False,
) -> None:
    """No-file mode: the origin is the gate; methods and headers reflected; Max-Age 600."""
    for origin in allowed:
        status, head = await preflight(
            session, base + "/any/path", origin, "PATCH", "X-Custom-Thing, Authorization"
        )
        assert status == 204, head
        assert head["access-control-allow-origin"] == origin
        assert head["access-control-allow-methods"] == "PATCH"
        assert names(head["access-control-allow-headers"]) == {"x-custom-thing", "authorization"}
        assert head["access-control-max-age"] == "600"
        assert head.get("access-control-allow-credentials") == ("true" if credentials else None)
    assert upstream.seen == [], "a preflight was forwarded"

    status, head, body = await get(session, base + "/items?x=1", allowed[0])
    assert (status, body) == (200, b"ok")
    assert head["access-control-allow-origin"] == allowed[0]
    if not credentials:
        assert head["access-control-expose-headers"] == "*"
    assert upstream.seen[-1].raw_path == "/items?x=1"

    seen = len(upstream.seen)
    status, head, _ = await get(session, base + "/items", "https://evil.test")
    assert status == 403
    assert not any(name.startswith("access-control-") for name in head)
    assert len(upstream.seen) == seen, "a refused request was forwarded"


async def test_serve_no_file_mode(upstream, client, tmp_path: Path) -> None:
    port = free_port()
    args = ["serve", "--upstream", upstream.url, "--allow-origin", "http://localhost:5173"]
    args += ["--allow-origin", "https://app.test", "--listen", f"127.0.0.1:{port}"]
    with running(args, tmp_path / "out", cwd=tmp_path) as proc:
        wait_port(port, proc=proc.popen)
        await assert_permissive_gate(
            client,
            f"http://127.0.0.1:{port}",
            upstream,
            ["http://localhost:5173", "https://app.test"],
        )
        assert proc.popen.poll() is None
    assert_no_traceback(proc.stdout(), proc.stderr())


async def test_serve_from_environment_variables(upstream, client, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        CORSPROXY_UPSTREAM=upstream.url,
        CORSPROXY_ALLOW_ORIGINS="https://one.test, https://two.test",
    )
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--allow-credentials"]
    with running(args, tmp_path / "out", env=env, cwd=tmp_path) as proc:
        wait_port(port, proc=proc.popen)
        await assert_permissive_gate(
            client,
            f"http://127.0.0.1:{port}",
            upstream,
            ["https://one.test", "https://two.test"],
            credentials=True,
        )
    assert_no_traceback(proc.stdout(), proc.stderr())


async def test_flags_override_the_file(upstream, client, tmp_path: Path) -> None:
    """`--allow-origin` replaces defaults.allow_origins (a route's own list stands);
    `--upstream` and `--listen` replace the file's."""
    file_port, port = free_port(), free_port()
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{file_port}\n"
        "upstream: http://127.0.0.1:9\n"
        "defaults:\n"
        "  allow_origins: [https://file.test]\n"
        "routes:\n"
        "  - path: /own/**\n"
        "    cors: {allow_origins: [https://route.test]}\n"
    )
    args = ["serve", "-c", str(path), "--allow-origin", "https://flag.test"]
    args += ["--upstream", upstream.url, "--listen", f"127.0.0.1:{port}"]
    with running(args, tmp_path / "out") as proc:
        wait_port(port, proc=proc.popen)
        assert not accepts(file_port)
        base = f"http://127.0.0.1:{port}"
        status, head, body = await get(client, base + "/x", "https://flag.test")
        assert (status, body) == (200, b"ok")
        assert head["access-control-allow-origin"] == "https://flag.test"
        status, head, _ = await get(client, base + "/x", "https://file.test")
        assert status == 403
        status, head, _ = await get(client, base + "/own/x", "https://route.test")
        assert status == 200
        assert head["access-control-allow-origin"] == "https://route.test"
        status, _, _ = await get(client, base + "/own/x", "https://flag.test")
        assert status == 403
    assert_no_traceback(proc.stdout(), proc.stderr())


def test_serve_file_from_variable_then_working_directory(tmp_path: Path) -> None:
    """-c, else $CORSPROXY_CONFIG, else ./corsproxy.yaml."""
    here_port, env_port = free_port(), free_port()
    (tmp_path / "corsproxy.yaml").write_text(
        f"listen: 127.0.0.1:{here_port}\nupstream: http://127.0.0.1:9\n"
    )
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(f"listen: 127.0.0.1:{env_port}\nupstream: http://127.0.0.1:9\n")

    env = clean_env(CORSPROXY_CONFIG=str(elsewhere))
    with running(["serve"], tmp_path / "out1", env=env, cwd=tmp_path) as proc:
        wait_port(env_port, proc=proc.popen)
        assert not accepts(here_port)

    with running(["serve"], tmp_path / "out2", cwd=tmp_path) as proc:
        wait_port(here_port, proc=proc.popen)
        assert not accepts(env_port)


async def test_sigterm_finishes_requests_in_flight_and_exits_0(
    upstream, client, tmp_path: Path
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        arrived.set()
        await release.wait()  # in flight until the test has seen the listener closed
        return web.Response(text="finished")

    upstream.handler = slow
    port = free_port()
    args = ["serve", "--upstream", upstream.url, "--allow-origin", "https://app.test"]
    args += ["--listen", f"127.0.0.1:{port}"]
    with running(args, tmp_path / "out", cwd=tmp_path) as proc:
        wait_port(port, proc=proc.popen)
        request = asyncio.ensure_future(get(client, f"http://127.0.0.1:{port}/slow", None))
        await asyncio.wait_for(arrived.wait(), 5)
        proc.popen.send_signal(signal.SIGTERM)
        await eventually(lambda: not accepts(port), 5, "the listener closed after SIGTERM")
        assert not request.done(), "the request in flight was not waited for"
        assert proc.popen.poll() is None, "exited with a request in flight"
        release.set()
        status, _, body = await asyncio.wait_for(request, 5)
        assert (status, body) == (200, b"finished")
        assert await wait_exit(proc.popen, 10) == 0, proc.stderr()
    assert_no_traceback(proc.stdout(), proc.stderr())


# --- demo -----------------------------------------------------------------------------------


def demo_commands(output: str) -> list[str]:
    """The curl commands the demo printed, continuation lines joined."""
    commands: list[str] = []
    current: str | None = None
    for raw in output.splitlines():
        line = raw.strip()
        if current is not None:
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(current)
                current = None
        elif line.startswith("curl "):
            if line.endswith("\\"):
                current = line.rstrip("\\").strip()
            else:
                commands.append(line)
    return commands


def run_curl(command: str) -> tuple[int, dict[str, str], str]:
    """Run one printed curl command; returns status, headers (lower-case names), body."""
    if shutil.which("curl"):
        done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=15, check=False)
        assert done.returncode == 0, done.stderr
        raw = done.stdout.decode("latin-1")
        head, _, body = raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body
    # No curl: read the same command and send the same request.
    words = shlex.split(command)[1:]
    method, url, sent = "GET", "", {}
    while words:
        word = words.pop(0)
        if word == "-X":
            method = words.pop(0)
        elif word == "-H":
            name, _, value = words.pop(0).partition(":")
            sent[name.strip()] = value.strip()
        elif not word.startswith("-"):
            url = word
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=sent)
        resp = conn.getresponse()
        body = resp.read().decode("latin-1")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_demo_prints_curl_lines_that_work(tmp_path: Path) -> None:
    port = free_port()
    with running(["demo", "--listen", f"127.0.0.1:{port}"], tmp_path / "out") as proc:
        wait_port(port, proc=proc.popen)
        deadline = time.monotonic() + 10
        while "/public/" not in proc.stdout() and time.monotonic() < deadline:
            time.sleep(0.05)
        output = proc.stdout()
        commands = demo_commands(output)
        assert len(commands) == 5, output
        assert all(f"http://127.0.0.1:{port}/" in c for c in commands), commands
        checked = set()
        for command in commands:
            status, head, body = run_curl(command)
            cors = {k: v for k, v in head.items() if k.startswith("access-control-")}
            if "OPTIONS" in command:
                checked.add("preflight")
                assert status == 204, (command, status, head)
                assert cors["access-control-allow-origin"] == "https://app.example.com"
                assert "PUT" in cors["access-control-allow-methods"]
                assert "content-type" in names(cors["access-control-allow-headers"])
                assert cors["access-control-allow-credentials"] == "true"
                assert cors["access-control-max-age"] == "600"
                assert body == ""
            elif "evil" in command:
                checked.add("evil")
                assert status == 403, (command, status, head)
                assert cors == {}
            elif "echo_cors" in command:
                checked.add("stripped")
                assert status == 200, (command, status, head)
                assert cors == {}, "the echo upstream's own CORS headers were not stripped"
                assert '"method": "GET"' in body.replace('":"', '": "'), body
            elif "/public/" in command:
                checked.add("public")
                assert status == 200, (command, status, head)
                assert cors["access-control-allow-origin"] == "*"
            else:
                checked.add("allowed")
                assert status == 200, (command, status, head)
                assert cors["access-control-allow-origin"] == "https://app.example.com"
                assert cors["access-control-allow-credentials"] == "true"
                assert '"/api/orders"' in body, body
        assert checked == {"preflight", "evil", "stripped", "public", "allowed"}
        assert proc.popen.poll() is None
        assert stop(proc.popen) == 0, "demo did not exit 0 on SIGTERM"
    assert_no_traceback(proc.stdout(), proc.stderr())


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", id="raw-non-ascii-path"),
        pytest.param(b"patch /x HTTP/1.1\r\nHost: x\r\n\r\n", id="unknown-method"),
        pytest.param(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", id="broken-header-line"),
    ],
)
def test_malformed_requests_get_400_and_no_traceback(tmp_path: Path, request_bytes: bytes) -> None:
    port = free_port()
    args = ["serve", "--upstream", "http://127.0.0.1:9", "--listen", f"127.0.0.1:{port}"]
    with running(args, tmp_path / "out", cwd=tmp_path) as proc:
        wait_port(port, proc=proc.popen)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request_bytes)
            reply = b""
            while chunk := sock.recv(65536):  # until the proxy closes: it is done with it
                reply += chunk
        assert reply.split(b"\r\n")[0].endswith(b"400 Bad Request")
    assert_no_traceback(proc.stdout(), proc.stderr())


@pytest.mark.parametrize("command", [["schema"], ["--help"]], ids=["schema", "help"])
def test_output_into_a_closed_pipe_is_not_a_traceback(command) -> None:
    """`corsproxy schema | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "corsproxy", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes anything
    with proc.stderr:
        err = proc.stderr.read()
    proc.wait(timeout=30)
    assert b"Traceback" not in err, err.decode(errors="replace")
