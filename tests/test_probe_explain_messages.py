"""The messages of `probe` and `explain`: probe names the check a corsproxy refusal
names and hints at the flag or key that fixes it; explain models serve's no-file mode
(--upstream / --allow-origin / --allow-credentials and their variables); every subcommand's
--help has a description, an example and its exit statuses.

Real servers on 127.0.0.1: the proxy (in-process from a config, or `corsproxy serve` as a
subprocess), a plain aiohttp app that is not corsproxy, and probe as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ProxyFactory, Upstream, serving
from procutil import REPO, clean_env, corsproxy_cmd, free_port, run, running, wait_port

from corsproxy.config.load import settings_from_flags
from corsproxy.config.overrides import Overrides
from corsproxy.engine import browser
from corsproxy.runtime.app import start
from corsproxy.tools import cli
from corsproxy.tools.probe import as_dict, format_text, probe, to_json

APP = "https://app.example.com"
EVIL = "https://evil.example.net"

RULES = """\
upstream: "{upstream}"
access_log: "off"
routes:
  - name: api
    path: /api/**
    cors:
      allow_origins: [https://app.example.com]
      allow_methods: [GET, POST, PUT, PATCH]
      allow_headers: [Content-Type]
      allow_credentials: true
"""


async def probe_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *corsproxy_cmd("probe", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=clean_env(),
        cwd=REPO,  # this checkout's corsproxy, whatever the test's working directory
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- finding 1: probe shows the line that names the cause -------------------------------------


async def test_probe_names_the_check_a_corsproxy_preflight_refusal_names(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(RULES, upstream=upstream.url)
    url = f"http://127.0.0.1:{proxy.port}/api/orders"
    args = [url, "--origin", APP, "--method", "POST", "--header", "X-Trace-Id: 1", "--credentials"]
    code, out, err = await probe_cli(*args)
    assert (code, err) == (1, ""), out
    lines = out.splitlines()
    assert "< 403 Forbidden" in lines
    assert "< (body) CORS preflight rejected: header 'x-trace-id' is not allowed" in lines
    assert (
        "browser: preflight: no Access-Control-Allow-Origin header in the response "
        "(what the console reports)"
    ) in lines
    assert "hint: add x-trace-id to the route's allow_headers" in lines
    assert lines[-1] == (
        "verdict: blocked: the server refused the preflight: header 'x-trace-id' is not allowed"
    )
    assert upstream.seen == []

    code, out, err = await probe_cli(*args, "--json")
    assert (code, err) == (1, "")
    data = json.loads(out)
    (preflight,) = data["exchanges"]
    assert preflight["step"] == "preflight" and preflight["status"] == 403
    body = "CORS preflight rejected: header 'x-trace-id' is not allowed"
    assert preflight["body_first_line"] == body
    assert data["refused_by_server"] == {
        "step": "preflight",
        "checks": "header 'x-trace-id' is not allowed",
        "body_first_line": body,
    }
    assert data["cause"] == "the server refused the preflight: header 'x-trace-id' is not allowed"
    assert data["reason"] == "preflight: no Access-Control-Allow-Origin header in the response"
    assert data["hints"] == ["add x-trace-id to the route's allow_headers"]


async def test_probe_names_every_check_and_the_refused_actual_request(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(RULES, upstream=upstream.url)
    url = f"http://127.0.0.1:{proxy.port}/api/orders"
    result = await probe(url, browser.Request(EVIL, "DELETE", (("X-Trace-Id", "1"),)))
    assert result.cause == (
        f"the server refused the preflight: origin '{EVIL}' is not allowed; method 'DELETE' "
        "is not allowed; header 'x-trace-id' is not allowed"
    )
    origin, method, header = result.hints
    assert origin.startswith(f"the server's rules do not allow the origin {EVIL}: ")
    assert method == "add DELETE to the route's allow_methods"
    assert header == "add x-trace-id to the route's allow_headers"

    result = await probe(url, browser.Request(EVIL))
    text = format_text(result)
    assert f"< (body) CORS request rejected: origin '{EVIL}' is not allowed" in text
    assert text.splitlines()[-1] == (
        f"verdict: blocked: the server refused the request: origin '{EVIL}' is not allowed"
    )
    assert as_dict(result)["exchanges"][0]["step"] == "actual"
    assert upstream.seen == []


@pytest.fixture
async def no_file_proxy(upstream: Upstream) -> AsyncIterator[str]:
    """corsproxy in serve's no-file mode: --upstream U --allow-origin APP, no credentials."""
    overrides = Overrides(
        upstream=(upstream.url, "--upstream"),
        allow_origins=((APP,), "--allow-origin"),
        listen=("127.0.0.1:0", "--listen"),
    )
    settings, _ = settings_from_flags(overrides)
    proxy = await start(settings)
    yield f"http://127.0.0.1:{proxy.port}/api/orders"
    await proxy.stop()


async def test_probe_hints_at_another_allow_origin(no_file_proxy: str) -> None:
    result = await probe(no_file_proxy, browser.Request(EVIL))
    assert not result.allowed
    (hint,) = result.hints
    assert f"another --allow-origin {EVIL}" in hint
    assert f"add {EVIL} to the route's allow_origins" in hint
    assert f"hint: {hint}" in format_text(result).splitlines()


async def test_probe_hints_at_allow_credentials(no_file_proxy: str) -> None:
    result = await probe(no_file_proxy, browser.Request(APP, credentials=True))
    assert not result.allowed
    assert result.refusal is None  # forwarded, no refusal body: the browser's words stand
    lines = format_text(result).splitlines()
    assert lines[-1] == (
        "verdict: blocked: credentials were included but Access-Control-Allow-Credentials is "
        "absent, not 'true'"
    )
    (hint,) = result.hints
    assert "--allow-credentials" in hint and "allow_credentials: true" in hint
    assert f"hint: {hint}" in lines
    assert json.loads(to_json(result))["hints"] == [hint]


async def test_probe_shows_the_first_body_line_of_any_server() -> None:
    """A server that is not corsproxy: its non-2xx body is shown, the verdict stays the
    browser's, and a 2xx body is never read."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=401, text="token missing\r\nsecond line\n")
        return web.Response(text="fine\n")

    async with serving(handle) as port:
        url = f"http://127.0.0.1:{port}/x"
        result = await probe(url, browser.Request(APP, "PUT"))
        ok = await probe(url, browser.Request(APP))
    text = format_text(result)
    assert "< 401 Unauthorized\n< (no Access-Control-* headers)\n< (body) token missing\n" in text
    assert "second line" not in text and "browser:" not in text
    assert text.splitlines()[-1] == (
        "verdict: blocked: preflight: no Access-Control-Allow-Origin header in the response"
    )
    data = as_dict(result)
    assert data["exchanges"][0]["body_first_line"] == "token missing"
    assert data["refused_by_server"] is None and data["hints"] == []
    assert [step.response.body for step in ok.walk.steps] == [""]
    assert as_dict(ok)["exchanges"][0]["body_first_line"] is None


# --- finding 2: explain models serve's no-file mode -------------------------------------------


def explain_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("CORSPROXY_CONFIG", "CORSPROXY_UPSTREAM", "CORSPROXY_ALLOW_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./corsproxy.yaml
    return tmp_path


SIDECAR = ("--upstream", "http://localhost:3000", "--allow-origin", "http://localhost:5173")


def test_explain_no_file_mode_is_serves_catch_all_route(
    capsys: pytest.CaptureFixture[str], no_env: Path
) -> None:
    code, out, err = explain_cli(
        capsys, *SIDECAR, "--origin", "http://localhost:5173", "--path", "/api/orders"
    )
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[:3] == [
        "route: default (defaults, no route matched)",
        "policy: allow_origins [http://localhost:5173]; allow_methods [*]; allow_headers [*]",
        "        expose_headers [*]; allow_credentials false; max_age 600",
    ]
    assert "request: GET /api/orders from http://localhost:5173 to http://127.0.0.1:8080" in lines

    page = ("--origin", "http://localhost:5173", "--method", "PUT", "--path", "/api/orders")
    code, out, _ = explain_cli(capsys, *SIDECAR, *page, "--credentials")
    assert code == 1
    assert "fix: add --allow-credentials" in out
    code, out, _ = explain_cli(capsys, *SIDECAR, "--allow-credentials", *page, "--credentials")
    assert code == 0, out
    assert "allow_credentials true; max_age 600" in out

    code, out, _ = explain_cli(capsys, *SIDECAR, "--origin", EVIL, "--path", "/")
    assert code == 1
    assert f"fix: add another --allow-origin {EVIL} (serve's flag)" in out.splitlines()


def test_explain_no_file_mode_from_the_variables(
    capsys: pytest.CaptureFixture[str], no_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORSPROXY_UPSTREAM", "http://localhost:3000")
    monkeypatch.setenv("CORSPROXY_ALLOW_ORIGINS", "https://a.test, https://b.test")
    code, out, _ = explain_cli(capsys, "--origin", "https://b.test", "--path", "/x")
    assert code == 0, out
    code, out, _ = explain_cli(capsys, "--origin", "https://c.test", "--path", "/x")
    assert code == 1
    assert "fix: add https://c.test to $CORSPROXY_ALLOW_ORIGINS" in out
    # a flag wins over its variable, as in serve
    code, out, _ = explain_cli(
        capsys, "--allow-origin", "https://c.test", "--origin", "https://c.test", "--path", "/x"
    )
    assert code == 0, out


def test_explain_flags_override_the_file_as_in_serve(
    capsys: pytest.CaptureFixture[str], no_env: Path
) -> None:
    path = no_env / "rules.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:9\ndefaults:\n  allow_origins: [https://a.test]\n"
        "routes:\n  - path: /own/**\n    cors: {allow_origins: [https://own.test]}\n"
    )
    base = ("-c", str(path), "--allow-origin", "https://b.test", "--path")
    assert explain_cli(capsys, *base, "/x", "--origin", "https://b.test")[0] == 0
    code, out, _ = explain_cli(capsys, *base, "/x", "--origin", "https://a.test")
    assert code == 1
    assert "fix: add another --allow-origin https://a.test (serve's flag)" in out
    # a route with its own origins keeps them
    assert explain_cli(capsys, *base, "/own/x", "--origin", "https://own.test")[0] == 0
    assert explain_cli(capsys, *base, "/own/x", "--origin", "https://b.test")[0] == 1
    # --allow-credentials sets defaults.allow_credentials
    page = ("--origin", "https://b.test", "--credentials")
    assert explain_cli(capsys, *base, "/x", *page)[0] == 1
    assert explain_cli(capsys, *base, "/x", *page, "--allow-credentials")[0] == 0


def test_explain_without_any_config_names_both_ways(
    capsys: pytest.CaptureFixture[str], no_env: Path
) -> None:
    code, out, err = explain_cli(capsys, "--origin", APP, "--path", "/")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "corsproxy: error: no config: corsproxy.yaml does not exist; pass -c FILE, or "
        "--upstream URL --allow-origin ORIGIN"
    ]


def test_explain_bad_flags_exit_2_without_traceback() -> None:
    done = run(
        [
            "explain",
            "--upstream",
            "notaurl",
            "--allow-origin",
            "https://x.test/",
            "--origin",
            APP,
            "--path",
            "/",
        ],
        env=clean_env(),
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "--upstream: upstream: error: 'notaurl': expected an http:// or https:// URL",
        "--allow-origin: defaults.allow_origins[0]: error: 'https://x.test/': an origin has no "
        "path or trailing slash: remove everything after the host[:port]",
    ]


def test_method_defaults_to_get_in_explain_and_probe() -> None:
    parser = cli.build_parser()
    explain = parser.parse_args(["explain", "--origin", APP, "--path", "/"])
    probe_args = parser.parse_args(["probe", "http://127.0.0.1:1/", "--origin", APP])
    assert explain.method == "GET" and probe_args.method == "GET"


@pytest.mark.parametrize("with_file", [False, True], ids=["no-file", "file-and-flags"])
async def test_explain_agrees_with_probe_against_real_serve(
    capsys: pytest.CaptureFixture[str],
    no_env: Path,
    upstream: Upstream,
    with_file: bool,
) -> None:
    """`serve` and `explain` given the same flags: explain's verdict is probe's."""
    flags = ["--upstream", upstream.url, "--allow-origin", APP]
    if with_file:
        path = no_env / "rules.yaml"
        path.write_text(
            'upstream: "http://127.0.0.1:9"\naccess_log: "off"\n'
            "defaults:\n  allow_origins: [https://file.test]\n  allow_methods: [GET, PUT]\n"
        )
        flags += ["-c", str(path)]
    port = free_port()
    requests = [
        browser.Request(APP),
        browser.Request(APP, "PUT", (("X-Trace-Id", "1"),)),
        browser.Request(APP, "DELETE"),
        browser.Request(APP, credentials=True),
        browser.Request("https://file.test"),
        browser.Request(EVIL, "PUT"),
    ]
    verdicts: list[tuple[bool | None, bool]] = []
    with running(["serve", *flags, "--listen", f"127.0.0.1:{port}"], no_env / "out") as proc:
        await asyncio.to_thread(wait_port, port, 10.0, proc.popen)
        for request in requests:
            headers = [f"{n}: {v}" for n, v in request.headers]
            args = ["--origin", request.origin, "--method", request.method, "--path", "/api/x"]
            args += [a for header in headers for a in ("--header", header)]
            args += ["--credentials"] * request.credentials
            code, out, _ = explain_cli(capsys, *flags, *args, "--host", f"127.0.0.1:{port}")
            assert code in (0, 1), out
            live = await probe(f"http://127.0.0.1:{port}/api/x", request)
            verdicts.append((code == 0, live.allowed))
    assert all(explained == live for explained, live in verdicts), verdicts
    expected = [True, not with_file, not with_file, False, False, False]
    assert [live for _, live in verdicts] == expected


# --- finding 8: every subcommand's --help -----------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    (action,) = actions
    return dict(action.choices)


def test_every_subcommand_help_has_a_description_an_example_and_exit_statuses() -> None:
    found = subcommands()
    assert {"serve", "check", "explain", "probe", "demo"} <= set(found)
    for name, parser in found.items():
        text = parser.format_help()
        assert parser.description and len(parser.description) > 80, name
        assert re.search(r"^examples?:\n  corsproxy " + name + " ", text, re.M), name
        assert re.search(r"^exit status:\n(  \d  .*\n(     .*\n)*)+", text + "\n", re.M), name
        assert "  0  " in text, name


def test_serve_help_lists_the_environment_variables() -> None:
    text = subcommands()["serve"].format_help()
    for variable in (
        "CORSPROXY_CONFIG",
        "CORSPROXY_UPSTREAM",
        "CORSPROXY_ALLOW_ORIGINS",
        "CORSPROXY_ADMIN",
        "CORSPROXY_UPSTREAM_CA",
    ):
        assert re.search(rf"^  {variable} ", text, re.M), variable


def test_explain_help_exit_statuses_are_its_own() -> None:
    text = subcommands()["explain"].format_help()
    for status in ("0", "1", "2", "3"):
        assert f"\n  {status}  " in text
    assert "--upstream" in text and "--allow-origin" in text


# --- docs/troubleshooting.md: the probe and no-file transcripts are real ----------------------

TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
FENCE = re.compile(r"```([a-z]*)\n(.*?)```", re.S)


def text_transcripts() -> list[tuple[str, str, list[str]]]:
    """(last YAML block before it, command, output) of each `$ corsproxy` in a text block."""
    found = []
    config_text = ""
    for lang, body in FENCE.findall(TROUBLESHOOTING.read_text()):
        if lang == "yaml":
            config_text = body
        elif lang == "text" and body.startswith("$ corsproxy "):
            command, *output = body.rstrip("\n").split("\n")
            found.append((config_text, command[2:], output))
    return found


def test_troubleshooting_has_the_probe_and_no_file_transcripts() -> None:
    commands = [command.split()[1] for _, command, _ in text_transcripts()]
    assert "probe" in commands and "explain" in commands


@pytest.mark.parametrize(
    ("config_text", "command", "shown"),
    text_transcripts(),
    ids=[f"transcript{i}" for i in range(len(text_transcripts()))],
)
async def test_troubleshooting_transcripts_are_real(
    make_proxy: ProxyFactory,
    capsys: pytest.CaptureFixture[str],
    no_env: Path,
    config_text: str,
    command: str,
    shown: list[str],
) -> None:
    argv = shlex.split(command)[1:]
    if argv[0] == "probe":
        proxy = await make_proxy(config_text.replace("\nlisten:", "\n#listen:"))
        argv = [a.replace("127.0.0.1:8080", f"127.0.0.1:{proxy.port}") for a in argv]
        code, out, err = await probe_cli(*argv[1:])
        out = out.replace(f"127.0.0.1:{proxy.port}", "127.0.0.1:8080")
    else:
        code = cli.main(argv)
        out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert out.splitlines() == shown
