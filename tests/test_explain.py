"""`corsproxy explain`: the browser model against the proxy's own decision engine.

Table-driven through the command line (``cli.main`` in-process, one real subprocess), for
the verdicts and exit codes 0/1/2/3, the trace, the suggested fixes and the --json shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from pathlib import Path

import pytest
from procutil import REPO, clean_env, run

from corsproxy.config.load import parse_settings
from corsproxy.engine import browser
from corsproxy.engine.explain import Explanation, explain, format_text, to_json
from corsproxy.engine.policy import TLS
from corsproxy.tools import cli

CONFIG = """\
listen: 127.0.0.1:8080
upstream: http://127.0.0.1:9
defaults:
  allow_origins: [https://app.example.com]
routes:
  - name: api
    path: /api/**
    cors:
      allow_origins: [https://app.example.com, "https://*.example.com"]
      allow_methods: [GET, POST, PUT, PATCH]
      allow_headers: [Content-Type, Authorization]
      expose_headers: [X-Request-ID]
      allow_credentials: true
      max_age: 600
  - name: public
    path: /public/**
    cors: {allow_origins: ["*"]}
  - name: legacy
    path: /legacy/**
    cors: passthrough
  - name: trial
    path: /trial/**
    cors: {report_only: true}
  - name: open
    path: /open/**
    cors: {allow_methods: ["*"], allow_headers: ["*"], expose_headers: ["*"]}
  - name: lax
    path: /lax/**
    cors: {on_disallowed: forward}
  - name: tenant
    path: /tenant/**
    host: tenant.example.net
    cors: {allow_origins: [https://tenant.example.com]}
"""

APP = "https://app.example.com"


@pytest.fixture(autouse=True)
def no_corsproxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CORSPROXY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "corsproxy.yaml"
    path.write_text(CONFIG)
    return path


def explain_cli(
    capsys: pytest.CaptureFixture[str], *args: str, config: Path | None = None
) -> tuple[int, str, str]:
    argv = ["explain", *(["-c", str(config)] if config else []), *args]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# (id, arguments, exit status, texts the trace must contain)
CASES = [
    (
        "simple-get-allowed",
        "--origin {APP} --method GET --path /api/orders",
        0,
        ["route: api (routes[0], path /api/**)", "preflight: not sent", "verdict: allowed"],
    ),
    (
        "wildcard-subdomain-allowed",
        "--origin https://shop.example.com --method GET --path /api/x",
        0,
        ["Access-Control-Allow-Origin: https://shop.example.com", "verdict: allowed"],
    ),
    (
        "wildcard-never-matches-bare-domain",
        "--origin https://example.com --method GET --path /api/x",
        1,
        [
            "the proxy answers 403",
            "verdict: blocked: no Access-Control-Allow-Origin header",
            "fix: add https://example.com to routes[0].cors.allow_origins",
        ],
    ),
    (
        "preflighted-put-with-credentials",
        "--origin {APP} --method put --path /api/orders --credentials "
        "--header 'Content-Type: application/json'",
        0,
        [
            "preflight: sent because method PUT is not GET, HEAD or POST; "
            "header content-type is not CORS-safelisted",
            "  > Access-Control-Request-Headers: content-type",
            "  < 204",
            "  < Access-Control-Allow-Credentials: true",
            "browser: preflight passes (cached 600 s",
            "  < Access-Control-Expose-Headers: X-Request-ID",
            "JS may read: Cache-Control",
            "X-Request-ID",
        ],
    ),
    (
        "missing-header",
        "--origin {APP} --method POST --path /api/x --header 'X-Foo: 1'",
        1,
        [
            "  < 403",
            "browser: preflight fails",
            "< (body) CORS preflight rejected: header 'x-foo' is not allowed",
            "fix: add X-Foo to routes[0].cors.allow_headers",
        ],
    ),
    (
        "missing-method",
        "--origin {APP} --method DELETE --path /api/x",
        1,
        ["method 'DELETE' is not allowed", "fix: add DELETE to routes[0].cors.allow_methods"],
    ),
    (
        "lowercase-patch-is-sent-as-written",
        "--origin {APP} --method patch --path /api/x",
        1,
        [
            "> Access-Control-Request-Method: patch",
            "fix: call fetch() with method 'PATCH': PATCH is what routes[0].cors.allow_methods "
            "lists, and the browser sends 'patch' as written",
        ],
    ),
    (
        "simple-post-method-checked-without-preflight",
        "--origin {APP} --method POST --path /anything",
        0,
        ["route: default (defaults, no route matched)", "preflight: not sent"],
    ),
    (
        "builtin-methods-named-in-the-fix",
        "--origin {APP} --method DELETE --path /anything",
        1,
        ["fix: set defaults.allow_methods: [GET, HEAD, POST, DELETE]"],
    ),
    (
        "origin-from-defaults",
        "--origin https://evil.test --method GET --path /open/x",
        1,
        [
            "fix: add https://evil.test to defaults.allow_origins "
            "(or give routes[4].cors its own allow_origins)"
        ],
    ),
    (
        "star-origin-without-credentials",
        "--origin https://anyone.test --method GET --path /public/x",
        0,
        ["Access-Control-Allow-Origin: *", "verdict: allowed"],
    ),
    (
        "star-origin-with-credentials-must-not",
        "--origin {APP} --method GET --path /public/x --credentials",
        1,
        [
            "verdict: blocked: Access-Control-Allow-Origin is '*', "
            "which a credentialed request never accepts",
            "fix: must not: routes[1].cors.allow_origins is ['*']",
        ],
    ),
    (
        "credentials-not-allowed",
        "--origin {APP} --method GET --path /open/x --credentials",
        1,
        [
            "Access-Control-Allow-Credentials is absent, not 'true'",
            "fix: set routes[4].cors.allow_credentials: true",
        ],
    ),
    (
        "star-headers-reflect-authorization",
        "--origin {APP} --method PUT --path /open/x "
        "--header 'Authorization: Bearer x' --header 'X-Trace: 1'",
        0,
        ["< Access-Control-Allow-Headers: authorization, x-trace", "verdict: allowed"],
    ),
    (
        "star-expose-without-credentials",
        "--origin {APP} --method GET --path /open/x",
        0,
        ["JS may read: every response header but Set-Cookie"],
    ),
    (
        "passthrough-cannot-tell",
        "--origin {APP} --method PUT --path /legacy/x",
        3,
        ["policy: passthrough", "(the upstream answers it)", "verdict: cannot tell", "upstream"],
    ),
    (
        "report-only-judged-as-if-enforced-blocked",
        "--origin https://evil.test --method GET --path /trial/x",
        1,
        ["note: report_only", "judged here as if the rules were enforced", "verdict: blocked"],
    ),
    (
        "report-only-judged-as-if-enforced-allowed",
        "--origin {APP} --method GET --path /trial/x",
        0,
        ["note: report_only", "verdict: allowed"],
    ),
    (
        "on-disallowed-forward-still-blocked",
        "--origin https://evil.test --method GET --path /lax/x",
        1,
        ["forwarded (on_disallowed: forward), with no CORS headers", "verdict: blocked"],
    ),
    (
        "same-origin-is-not-cors",
        "--origin http://127.0.0.1:8080 --method DELETE --path /x",
        0,
        ["preflight: not sent (same-origin request)", "same-origin request"],
    ),
    (
        "host-flag-selects-route-and-origin",
        "--origin https://tenant.example.com --method GET --path /tenant/x "
        "--host tenant.example.net",
        0,
        ["route: tenant (routes[6]", "to http://tenant.example.net"],
    ),
    (
        "host-flag-same-origin-default-port",
        "--origin http://api.test --method PUT --path /x --host api.test:80",
        0,
        ["same-origin request (http://api.test)"],
    ),
    (
        "bad-path-answered-400-readable",
        "--origin {APP} --method GET --path /a/%2F/b",
        0,
        ["the proxy answers 400 Bad Request", "the page can read the proxy's 400 answer"],
    ),
    (
        "bad-path-preflight-fails",
        "--origin {APP} --method PUT --path /api/../../x",
        1,
        ["climbs above the root", "  < 400", "fix: no config change helps"],
    ),
    (
        "forbidden-method",
        "--origin {APP} --method TRACE --path /open/x",
        1,
        ["fetch() refuses the forbidden method TRACE"],
    ),
    (
        "forbidden-header-dropped",
        "--origin {APP} --method GET --path /api/x --header 'Cookie: a=b'",
        0,
        ["fetch() silently drops headers a page may not set: Cookie", "preflight: not sent"],
    ),
    (
        "origin-serialised-as-the-browser-sends-it",
        "--origin HTTPS://App.Example.com:443 --method GET --path /api/x",
        0,
        ["from https://app.example.com to"],
    ),
    (
        "null-origin",
        "--origin null --method GET --path /api/x",
        1,
        ['fix: add "null" to routes[0].cors.allow_origins (careful'],
    ),
]


@pytest.mark.parametrize(
    ("args", "status", "texts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_explain_trace(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    args: str,
    status: int,
    texts: list[str],
) -> None:
    code, out, err = explain_cli(capsys, *shlex.split(args.format(APP=APP)), config=config)
    assert code == status, out + err
    assert err == ""
    for text in texts:
        assert text in out, f"{text!r} not in:\n{out}"
    if status == 1:
        assert "fix: " in out or "no config change" in out, out


def test_forbidden_preflight_answer_has_no_cors_headers(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    args = ["--origin", "https://evil.test", "--method", "PUT", "--path", "/api/x", "--json"]
    code, out, _ = explain_cli(capsys, *args, config=config)
    data = json.loads(out)
    assert code == 1
    assert data["preflight_status"] == 403
    assert [n for n, _ in data["preflight_headers"]] == ["Vary"]
    assert data["actual_sent"] is False


JSON_KEYS = {
    "allowed": (bool, type(None)),
    "reason": str,
    "route": str,
    "route_key": str,
    "policy": dict,
    "passthrough": bool,
    "report_only": bool,
    "origin": str,
    "method": str,
    "path": str,
    "credentials": bool,
    "request_headers": list,
    "addressed_origin": str,
    "same_origin": bool,
    "bad_path": str,
    "preflight_sent": bool,
    "preflight_reasons": list,
    "preflight_request": list,
    "preflight_status": (int, type(None)),
    "preflight_headers": list,
    "preflight_ok": (bool, type(None)),
    "actual_sent": bool,
    "actual_headers": list,
    "readable": list,
    "fixes": list,
    "notes": list,
    "exit_code": int,
}


@pytest.mark.parametrize(
    ("path", "origin", "allowed", "status"),
    [
        ("/api/x", APP, True, 0),
        ("/api/x", "https://evil.test", False, 1),
        ("/legacy/x", APP, None, 3),
    ],
)
def test_json_shape(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    path: str,
    origin: str,
    allowed: bool | None,
    status: int,
) -> None:
    args = ["--origin", origin, "--method", "PUT", "--path", path, "--json"]
    args += ["--header", "Content-Type: application/json"]
    code, out, _ = explain_cli(capsys, *args, config=config)
    data = json.loads(out)
    assert code == status == data["exit_code"]
    assert data["allowed"] is allowed
    for key, types in JSON_KEYS.items():
        assert isinstance(data[key], types), (key, data[key])
    assert data["preflight_sent"] is True
    assert ["Access-Control-Request-Method", "PUT"] in data["preflight_request"]
    if allowed is None:
        assert data["policy"] == {}
    else:
        assert data["policy"]["allow_credentials"] is True
    if allowed is False:
        assert data["fixes"] == ["add https://evil.test to routes[0].cors.allow_origins"]


BAD_ARGS = [
    (
        "origin-with-slash",
        ["--origin", "https://app.example.com/", "--method", "GET", "--path", "/"],
    ),
    ("origin-bad-scheme", ["--origin", "ftp://x.test", "--method", "GET", "--path", "/"]),
    ("origin-garbage", ["--origin", "app.example.com", "--method", "GET", "--path", "/"]),
    ("method-not-token", ["--origin", APP, "--method", "GE T", "--path", "/"]),
    ("header-no-name", ["--origin", APP, "--method", "GET", "--path", "/", "--header", ": x"]),
    ("path-relative", ["--origin", APP, "--method", "GET", "--path", "api/x"]),
    ("host-garbage", ["--origin", APP, "--method", "GET", "--path", "/", "--host", "a/b"]),
    ("host-bad-port", ["--origin", APP, "--method", "GET", "--path", "/", "--host", "a:x"]),
    ("missing-origin", ["--method", "GET", "--path", "/"]),
    ("unknown-flag", ["--origin", APP, "--method", "GET", "--path", "/", "--bogus"]),
]


@pytest.mark.parametrize("args", [c[1] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_bad_arguments_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], config: Path, args: list[str]
) -> None:
    code, out, err = explain_cli(capsys, *args, config=config)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "error" in err
    assert "Traceback" not in err


BROKEN = """\
upstream: http://127.0.0.1:9
defaults:
  allow_orgins: [https://app.test]
routes:
  - path: /cred/**
    cors:
      allow_credentials: true
      allow_origins: ["*"]
"""


def test_bad_config_prints_the_check_messages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    code, out, err = explain_cli(
        capsys, "--origin", APP, "--method", "GET", "--path", "/", config=path
    )
    assert code == 2
    assert out == ""
    assert cli.main(["check", "-c", str(path)]) == 2
    _, check_err = capsys.readouterr()
    assert err == check_err
    assert f"{path}:3: defaults.allow_orgins: error:" in err
    assert "routes[0].cors.allow_origins[0]: error:" in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = explain_cli(
        capsys, "--origin", APP, "--method", "GET", "--path", "/", config=tmp_path / "nope.yaml"
    )
    assert (code, out) == (2, "")
    assert "cannot read" in err


def test_no_config_anywhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = explain_cli(capsys, "--origin", APP, "--method", "GET", "--path", "/")
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        "corsproxy: error: no config: corsproxy.yaml does not exist; pass -c FILE, or "
        "--upstream URL --allow-origin ORIGIN"
    ]


def test_config_discovery(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ("--origin", APP, "--method", "GET", "--path", "/api/x")
    monkeypatch.chdir(tmp_path)  # ./corsproxy.yaml
    assert explain_cli(capsys, *args)[0] == 0
    monkeypatch.chdir("/")
    monkeypatch.setenv("CORSPROXY_CONFIG", str(config))  # $CORSPROXY_CONFIG
    code, out, _ = explain_cli(capsys, *args)
    assert code == 0
    assert "route: api" in out


def test_origins_from_the_environment_as_serve_uses_them(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve replaces defaults.allow_origins with $CORSPROXY_ALLOW_ORIGINS; so does explain."""
    monkeypatch.setenv("CORSPROXY_ALLOW_ORIGINS", "https://env.test")
    args = ["--method", "GET", "--path", "/open/x"]
    code, out, _ = explain_cli(capsys, "--origin", "https://env.test", *args, config=config)
    assert code == 0, out
    code, out, _ = explain_cli(capsys, "--origin", "https://other.test", *args, config=config)
    assert code == 1
    assert "fix: add https://other.test to $CORSPROXY_ALLOW_ORIGINS" in out


def test_real_command_line(tmp_path: Path) -> None:
    path = tmp_path / "corsproxy.yaml"
    path.write_text(CONFIG)
    base = ["explain", "-c", str(path), "--method", "GET", "--path", "/api/x"]
    allowed = run([*base, "--origin", APP], env=clean_env())
    blocked = run([*base, "--origin", "https://evil.test"], env=clean_env())
    bad = run([*base, "--origin", "https://evil.test/"], env=clean_env())
    assert (allowed.returncode, blocked.returncode, bad.returncode) == (0, 1, 2)
    assert "verdict: allowed" in allowed.stdout
    assert "fix: add https://evil.test to routes[0].cors.allow_origins" in blocked.stdout
    assert bad.stdout == "" and len(bad.stderr.splitlines()) == 1
    for result in (allowed, blocked, bad):
        assert "Traceback" not in result.stderr


def test_explain_function_directly() -> None:
    settings, _ = parse_settings(CONFIG, "inline.yaml")
    request = browser.Request(APP, "PUT", (("X-Foo", "1"),), credentials=True)
    ex = explain(settings, request, "/api/x", host="proxy.test")
    assert isinstance(ex, Explanation)
    assert ex.allowed is False
    preflight = ex.walk.preflight
    assert preflight is not None and preflight.sent.method == "OPTIONS"
    assert preflight.response.status == 403
    assert preflight.verdict is not None and preflight.verdict.ok is False
    assert preflight.response.why == "header 'x-foo' is not allowed"
    assert ex.walk.actual is None and ex.walk.stage == "preflight"
    assert ex.route == "api"
    assert ex.addressed_origin == "http://proxy.test"
    assert ex.fixes == ("add X-Foo to routes[0].cors.allow_headers",)
    assert ex.exit_code == 1
    assert "verdict: blocked" in format_text(ex)
    assert json.loads(to_json(ex))["preflight_proxy_reason"] == "header 'x-foo' is not allowed"


def test_https_listener_addresses_https() -> None:
    text = CONFIG.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:8443")
    settings, _ = parse_settings(text, "inline.yaml")
    settings = dataclasses.replace(settings, tls=TLS("cert.pem", "key.pem"))
    ex = explain(settings, browser.Request("https://127.0.0.1:8443"), "/x")
    assert ex.addressed_origin == "https://127.0.0.1:8443"
    assert ex.walk.same_origin is True


# --- docs/troubleshooting.md shows real output ------------------------------------------------

TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
FENCE = re.compile(r"```([a-z]*)\n(.*?)```", re.S)


def troubleshooting_examples() -> list[tuple[str, str, list[str]]]:
    """(config, command line, output lines) for each `$ corsproxy explain` in the page; the
    config is the YAML block shown last before it."""
    examples = []
    config_text = ""
    for lang, body in FENCE.findall(TROUBLESHOOTING.read_text()):
        if lang == "yaml":
            config_text = body
        elif lang == "console":
            current: list[str] | None = None
            for line in body.splitlines():
                if line.startswith("$ "):
                    current = []
                    examples.append((config_text, line[2:], current))
                elif current is not None:
                    current.append(line)
    return examples


def test_troubleshooting_page_has_every_example() -> None:
    examples = troubleshooting_examples()
    assert len(examples) >= 8
    assert all(cmd.startswith("corsproxy explain -c corsproxy.yaml ") for _, cmd, _ in examples)


@pytest.mark.parametrize(
    ("config_text", "command", "shown"),
    troubleshooting_examples(),
    ids=[f"example{i}" for i in range(len(troubleshooting_examples()))],
)
def test_troubleshooting_output_is_real(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config_text: str,
    command: str,
    shown: list[str],
) -> None:
    (tmp_path / "corsproxy.yaml").write_text(config_text)
    monkeypatch.chdir(tmp_path)
    code, out, err = explain_cli(capsys, *shlex.split(command)[2:])
    assert code in (0, 1, 3), err
    assert out.splitlines() == shown
