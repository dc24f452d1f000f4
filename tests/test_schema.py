"""The JSON Schema (`corsproxy schema`) and the validator judge configs alike.

Both come from the key tables in corsproxy.config.keys; these tests hold the committed
config/corsproxy.schema.json, the example configs and docs/configuration.md to them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from jsonschema import Draft202012Validator

from corsproxy.config import keys as config
from corsproxy.config.addresses import parse_upstream
from corsproxy.config.keys import (
    TOP,
    Boolean,
    Key,
    ListOf,
    Section,
    SectionOr,
    Table,
)
from corsproxy.config.load import load_settings
from corsproxy.config.schema import schema, schema_text
from corsproxy.config.tree import ConfigInvalid, load_yaml
from corsproxy.engine import headers as hd
from corsproxy.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "config" / "corsproxy.schema.json"
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
VALIDATOR = Draft202012Validator(schema())
CA = trustme.CA()


def schema_errors(text: str) -> list[str]:
    """What an editor's YAML language server (YAML 1.2) would flag."""
    return [e.message for e in VALIDATOR.iter_errors(load_yaml(textwrap.dedent(text)))]


def check(text: str, tmp_path: Path) -> list[str]:
    """`corsproxy check` on the text: its errors (warnings are fine)."""
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))  # upstream_tls.ca: a real CA
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        load_settings(str(path))
    except ConfigInvalid as exc:
        return [str(d) for d in exc.diagnostics if d.severity == "error"]
    return []


# --- the file, the command ---------------------------------------------------------------


def test_committed_schema_file_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "config/corsproxy.schema.json is stale: run "
        "`python -m corsproxy schema > config/corsproxy.schema.json`"
    )


def test_schema_command_prints_it_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()


def test_schema_command_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corsproxy", "schema"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == schema()


def test_schema_is_a_valid_2020_12_schema() -> None:
    document = schema()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)


def objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects(value)


def test_every_key_has_a_description_and_no_unknown_key_passes() -> None:
    found = list(objects(schema()))
    assert len(found) >= 6  # top, tls, timeouts, cors, route, origin regex
    for obj in found:
        assert obj["additionalProperties"] is False
        for name, prop in obj["properties"].items():
            assert prop.get("description"), name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_starts_with_the_schema_modeline(path: Path) -> None:
    assert path.read_text().splitlines()[0] == (
        "# yaml-language-server: $schema=corsproxy.schema.json"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_the_schema(path: Path) -> None:
    assert schema_errors(path.read_text()) == []


# --- the same verdicts -------------------------------------------------------------------

# Broken configs a schema can tell: both the schema and `check` refuse each one.
BROKEN = [
    ("unknown-top-key", "upstrem: http://a\n"),
    ("unknown-cors-key", "upstream: http://a\ndefaults: {allow_orgins: []}\n"),
    ("unknown-route-key", "upstream: http://a\nroutes: [{path: /x, paht: /y}]\n"),
    ("credentials-yes", "upstream: http://a\ndefaults: {allow_credentials: yes}\n"),
    ("preserve-host-on", "upstream: http://a\npreserve_host: on\n"),
    ("trust-forwarded-quoted-no", "upstream: http://a\ntrust_forwarded: 'no'\n"),
    ("report-only-off", "upstream: http://a\nroutes: [{path: /x, cors: {report_only: off}}]\n"),
    ("private-network-1", "upstream: http://a\ndefaults: {allow_private_network: 1}\n"),
    ("on-disallowed-drop", "upstream: http://a\ndefaults: {on_disallowed: drop}\n"),
    ("access-log-xml", "upstream: http://a\naccess_log: xml\n"),
    ("access-log-no", "upstream: http://a\naccess_log: no\n"),
    ("access-log-true", "upstream: http://a\naccess_log: true\n"),
    ("timeout-zero", "upstream: http://a\ntimeouts: {read: 0}\n"),
    ("timeout-negative", "upstream: http://a\ntimeouts: {websocket_idle: -1}\n"),
    ("timeout-not-a-number", "upstream: http://a\ntimeouts: {send: fast}\n"),
    ("timeout-unknown", "upstream: http://a\ntimeouts: {write: 5}\n"),
    ("workers-zero", "upstream: http://a\nworkers: 0\n"),
    ("workers-word", "upstream: http://a\nworkers: many\n"),
    ("max-age-negative", "upstream: http://a\ndefaults: {max_age: -1}\n"),
    ("max-age-decimal", "upstream: http://a\ndefaults: {max_age: 1.5}\n"),
    ("preflight-302", "upstream: http://a\ndefaults: {preflight_status: 302}\n"),
    ("preflight-199", "upstream: http://a\ndefaults: {preflight_status: 199}\n"),
    ("listen-port-only", "upstream: http://a\nlisten: 8080\n"),
    ("admin-no-port", "upstream: http://a\nadmin: localhost\n"),
    ("upstream-ftp", "upstream: ftp://a\n"),
    ("upstream-query", "upstream: http://a/?x=1\n"),
    ("upstream-userinfo", "upstream: http://user@a\n"),
    ("upstream-space-in-prefix", "upstream: 'http://a/v 1'\n"),
    ("route-without-path", "upstream: http://a\nroutes: [{name: x}]\n"),
    ("route-path-relative", "upstream: http://a\nroutes: [{path: api/x}]\n"),
    ("routes-not-a-list", "upstream: http://a\nroutes: {path: /x}\n"),
    ("route-without-any-upstream", "routes: [{path: /x}]\n"),
    ("cors-word", "upstream: http://a\nroutes: [{path: /x, cors: open}]\n"),
    ("cors-passthru", "upstream: http://a\nroutes: [{path: /x, cors: passthru}]\n"),
    ("route-empty-name", "upstream: http://a\nroutes: [{path: /x, name: ''}]\n"),
    ("defaults-a-list", "upstream: http://a\ndefaults: []\n"),
    ("origins-a-string", "upstream: http://a\ndefaults: {allow_origins: https://a.test}\n"),
    ("origin-trailing-slash", "upstream: http://a\ndefaults: {allow_origins: [https://a.test/]}\n"),
    ("origin-ftp", "upstream: http://a\ndefaults: {allow_origins: [ftp://a.test]}\n"),
    ("origin-bare-null", "upstream: http://a\ndefaults: {allow_origins: [null]}\n"),
    ("origin-empty-regex", "upstream: http://a\ndefaults: {allow_origins: [{regex: ''}]}\n"),
    (
        "origin-regex-extra-key",
        "upstream: http://a\ndefaults: {allow_origins: [{regex: '^x$', flags: i}]}\n",
    ),
    (
        "star-with-credentials",
        "upstream: http://a\ndefaults: {allow_origins: ['*'], allow_credentials: true}\n",
    ),
    ("method-trace", "upstream: http://a\ndefaults: {allow_methods: [GET, TRACE]}\n"),
    ("method-connect-lowercase", "upstream: http://a\ndefaults: {allow_methods: [connect]}\n"),
    ("header-not-token", "upstream: http://a\ndefaults: {allow_headers: ['x y']}\n"),
    ("expose-set-cookie", "upstream: http://a\ndefaults: {expose_headers: [Set-Cookie]}\n"),
    ("tls-without-key", "upstream: http://a\ntls: {cert: cert.pem}\n"),
    ("tls-unknown-key", "upstream: http://a\ntls: {cert: cert.pem, key: key.pem, ca: c.pem}\n"),
    ("top-level-a-list", "- upstream: http://a\n"),
    ("upstream-tls-unknown-key", "upstream: https://a\nupstream_tls: {cafile: ca.pem}\n"),
    ("upstream-tls-verify-no", "upstream: https://a\nupstream_tls: {verify: no}\n"),
    ("upstream-tls-a-string", "upstream: https://a\nupstream_tls: ca.pem\n"),
]

VALID = [
    ("minimal", "upstream: http://a\n"),
    ("access-log-bare-off", "upstream: http://a\naccess_log: off\n"),
    ("access-log-false", "upstream: http://a\naccess_log: false\n"),
    ("access-log-text", "upstream: http://a\naccess_log: text\n"),
    ("booleans-capitalised", "upstream: http://a\npreserve_host: True\ntrust_forwarded: FALSE\n"),
    ("workers-auto", "upstream: http://a\nworkers: auto\n"),
    ("workers-4", "upstream: http://a\nworkers: 4\n"),
    ("ipv6-listen-and-upstream", "listen: '[::]:8080'\nupstream: 'https://[::1]:8443/v1/'\n"),
    ("timeouts-decimal", "upstream: http://a\ntimeouts: {read: 2.5, websocket_idle: 10}\n"),
    ("tls", "upstream: http://a\ntls: {cert: cert.pem, key: key.pem}\n"),
    (
        "upstream-tls",
        "upstream: https://a\nupstream_tls: {ca: ca.pem, system_ca: false, server_name: a.b}\n"
        "routes: [{path: /x, upstream_tls: {verify: false}}]\n",
    ),
    ("name-yes-is-a-string", "upstream: http://a\nroutes: [{path: /x, name: yes}]\n"),
    (
        "routes-with-own-upstreams",
        "routes:\n  - {path: /a/**, upstream: http://a:1}\n  - {path: /b, upstream: HTTP://B}\n",
    ),
    (
        "every-origin-form",
        """\
        upstream: http://a
        defaults:
          allow_origins:
            - https://app.example.com
            - https://*.example.com
            - http://localhost:*
            - "null"
            - regex: '^https://pr-[0-9]+\\.example\\.com$'
          max_age: null
        routes:
          - path: /public/**
            cors: {allow_origins: ["*"], allow_methods: ["*"], allow_headers: ["*"]}
          - path: /legacy/**
            cors: passthrough
        """,
    ),
    *((f"example-{p.stem}", p.read_text()) for p in EXAMPLES),
]


@pytest.mark.parametrize("text", [c[1] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_is_refused_by_both(text: str, tmp_path: Path) -> None:
    assert check(text, tmp_path), "check accepted it"
    assert schema_errors(text), "the schema accepted it"


@pytest.mark.parametrize("text", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_config_is_accepted_by_both(text: str, tmp_path: Path) -> None:
    assert check(text, tmp_path) == []
    assert schema_errors(text) == []


def test_the_tables_are_big_enough() -> None:
    assert len(BROKEN) >= 20 and len(VALID) >= len(EXAMPLES) + 3


# --- booleans: true and false only -------------------------------------------------------


def boolean_keys(table: Table, path: tuple[str | int, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every boolean key, reached through the tables that nest it."""
    for key in table:
        here = (*path, key.name)
        match key.kind:
            case Boolean():
                yield here
            case Section(table=inner) | SectionOr(table=inner):
                yield from boolean_keys(inner, here)
            case ListOf(table=inner):
                yield from boolean_keys(inner, (*here, 0))


BOOLEAN_PATHS = sorted(set(boolean_keys(TOP)), key=str)


def with_value(path: tuple[Any, ...], word: str) -> tuple[str, str]:
    """A config setting ``path`` to the bare word, and the key path check reports."""
    root: dict[str, Any] = {"upstream": "http://a"}
    node: Any = root
    for step, following in zip(path, (*path[1:], None), strict=True):
        if following is None:
            node[step] = "@WORD@"
            if step == "system_ca":  # system_ca: false needs a ca
                node["ca"] = "ca.pem"
        elif isinstance(following, int):
            node = node.setdefault(step, [{"path": "/x"}])
        elif isinstance(step, int):
            node = node[step]
        else:
            node = node.setdefault(step, {})
    text = json.dumps(root).replace('"@WORD@"', word)
    key_path = ".".join(str(s) for s in path).replace(".0.", "[0].")
    return text, key_path


def test_every_boolean_key_is_covered() -> None:
    names = {p[-1] for p in BOOLEAN_PATHS}
    assert {
        "allow_credentials",
        "allow_private_network",
        "report_only",
        "preserve_host",
        "trust_forwarded",
    } <= names
    assert ("routes", 0, "cors", "allow_credentials") in BOOLEAN_PATHS


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "OFF"])
@pytest.mark.parametrize("path", BOOLEAN_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_yaml_1_1_booleans_are_errors_with_a_hint(
    path: tuple[Any, ...], word: str, tmp_path: Path
) -> None:
    """YAML 1.1 read these as booleans, so `allow_credentials: yes` used to be a silent
    true while `"yes"` was an error, and editors (YAML 1.2) saw a string."""
    text, key_path = with_value(path, word)
    errors = check(text, tmp_path)
    assert len(errors) == 1, errors
    assert f": {key_path}: error: expected true or false" in errors[0]
    assert "write true or false" in errors[0]
    assert schema_errors(text)


@pytest.mark.parametrize("word", ["true", "false", "True", "FALSE"])
@pytest.mark.parametrize("path", BOOLEAN_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_true_and_false_are_booleans(path: tuple[Any, ...], word: str, tmp_path: Path) -> None:
    text, _ = with_value(path, word)
    assert check(text, tmp_path) == []
    assert schema_errors(text) == []


def test_credentials_yes_message(tmp_path: Path) -> None:
    errors = check("upstream: http://a\ndefaults:\n  allow_credentials: yes\n", tmp_path)
    assert [e.split(": ", 1)[1] for e in errors] == [
        "defaults.allow_credentials: error: expected true or false, got str 'yes' "
        "(YAML 1.1 read yes as a boolean; corsproxy reads YAML 1.2, where it is a string): "
        "write true or false"
    ]


# --- one source: the tables, the docs, the patterns --------------------------------------

DOCS = (ROOT / "docs" / "configuration.md").read_text()


def docs_rows(section: str) -> dict[str, list[str]]:
    """The key table under a '## section' heading: name -> [type, default, description]."""
    body = DOCS.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        match = re.match(r"^\| `([a-z_.]+)` \| (.*) \|$", line)
        if match:
            rows[match[1]] = re.split(r" \| ", match[2])
    return rows


def documented(table: Table) -> dict[str, Key]:
    """The keys the docs list: a nested table's keys as `parent.key` when the docs spell
    them out (timeouts), else the key itself (tls)."""
    out: dict[str, Key] = {}
    for key in table:
        if isinstance(key.kind, Section) and key.kind.table.name == "timeouts":
            out.update({f"{key.name}.{k.name}": k for k in key.kind.table})
        else:
            out[key.name] = key
    return out


@pytest.mark.parametrize(
    ("section", "table"),
    [
        ("Top-level keys", TOP),
        ("Routes", config.ROUTE),
        ("CORS keys", config.CORS),
        ("Upstream TLS", config.UPSTREAM_TLS),
    ],
)
def test_docs_tables_are_the_key_tables(section: str, table: Table) -> None:
    rows = docs_rows(section)
    keys = documented(table)
    assert list(rows) == list(keys)
    for name, key in keys.items():
        assert rows[name] == [key.type, key.default, key.description], name


def test_schema_descriptions_are_the_docs_descriptions() -> None:
    document = schema()
    assert document["properties"]["preserve_host"]["description"] == (
        TOP["preserve_host"].description
    )
    timeouts = document["$defs"]["timeouts"]["properties"]
    assert timeouts["read"]["description"] == config.TIMEOUTS["read"].description
    assert "operations.md" in document["properties"]["admin"]["description"]
    assert "](" not in json.dumps(document)  # markdown links become their text


def test_token_pattern_is_is_token() -> None:
    token = re.compile(config.TOKEN_PATTERN)
    for code in range(128):
        char = chr(code)
        assert bool(token.match(char)) == hd.is_token(char), repr(char)


def test_upstream_pattern_refuses_what_parse_upstream_refuses_in_a_prefix() -> None:
    upstream = re.compile(config.UPSTREAM_PATTERN)
    for code in range(128):
        url = f"http://a/x{chr(code)}y"
        accepted = parse_upstream(url)[0] is not None
        assert bool(upstream.match(url)) == accepted, repr(chr(code))
