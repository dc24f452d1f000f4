"""YAML -> validated, compiled ``Settings`` (docs/configuration.md).

Validation collects every problem before giving up, and each one names the file, the
line and the key path (``routes[1].cors.allow_origins[0]``). Line numbers come from the
YAML node marks, so the file is composed into nodes rather than loaded with safe_load.
Command-line flags and environment variables enter the same tree as nodes whose location
names the flag, so they are validated by the same code.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from corsproxy.config import upstream_tls as utls
from corsproxy.engine import headers as hd
from corsproxy.engine.browser import CHROMIUM_MAX_AGE, FIREFOX_MAX_AGE
from corsproxy.engine.cors import FORBIDDEN_METHODS
from corsproxy.engine.defaults import BUILTIN_CORS
from corsproxy.engine.origins import (
    NULL_ORIGIN,
    OriginError,
    OriginMatcher,
    OriginPattern,
    is_exact,
    parse_origin,
    routing_host,
    serialise,
    split_authority,
    split_origin,
)
from corsproxy.engine.paths import PathPattern, PatternError, compile_pattern
from corsproxy.engine.policy import (
    TLS,
    Policy,
    Route,
    RouteTable,
    Settings,
    Timeouts,
    Upstream,
    compile_policy,
)

DEFAULT_LISTEN = ("127.0.0.1", 8080)
DEFAULT_TIMEOUTS = Timeouts()
_UNSET: Any = object()

# --- the keys ----------------------------------------------------------------------
#
# One table per mapping of the file. Each key's kind (what the validator accepts), its
# columns in docs/configuration.md and its description live here and nowhere else: the
# Validator checks every value through ``Key.kind``, corsproxy.config.schema turns the same tables
# into the JSON Schema (``corsproxy schema``), and tests/test_schema.py holds the tables of
# docs/configuration.md to these texts.


class Kind:
    """What a key's value may be. ``check`` validates and converts it (through the
    Validator, so the problems are recorded there); corsproxy.config.schema says the same in
    JSON Schema."""

    __slots__ = ()

    def check(self, v: Validator, node: Node, path: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is checked by its caller")


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    """``true`` or ``false``. YAML 1.1's yes/no/on/off are strings here (see ConfigLoader)."""

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return v.boolean(node, path)


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    """One of a few words; ``false_means`` is the word a YAML ``false`` stands for."""

    values: tuple[str, ...]
    false_means: str | None = None

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return v.choice(node, path, self)


@dataclass(frozen=True, slots=True)
class Seconds(Kind):
    """A whole or decimal number of seconds, greater than 0."""

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return v.number(node, path)


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    """A whole number from ``minimum`` to ``maximum``, or one of ``words``, or null."""

    minimum: int
    maximum: int | None = None
    words: tuple[str, ...] = ()
    nullable: bool = False
    expected: str = ""  # the "expected ..." of the error message
    method: str = "integer"  # the Validator method: the bounds, and what they cannot say

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return getattr(v, self.method)(node, path, self)


@dataclass(frozen=True, slots=True)
class Text(Kind):
    """A non-empty string checked by a Validator method. ``pattern`` (an ECMA-262 regex
    that Python's ``re`` reads the same way) is the part of that check a schema can say."""

    method: str
    pattern: str | None = None

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return getattr(v, self.method)(node, path)


@dataclass(frozen=True, slots=True)
class Names(Kind):
    """A list of RFC 9110 tokens (method or header names) or ``["*"]``; ``forbidden``
    (lowercase) are names that are an error in any case."""

    method: str
    forbidden: frozenset[str] = frozenset()

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return getattr(v, self.method)(node, path, self)


@dataclass(frozen=True, slots=True)
class Origins(Kind):
    """A list of origin strings (``ORIGIN_PATTERN``) and ``{regex: PATTERN}`` mappings."""

    regex: Table

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return v.origins(node, path, self)


@dataclass(frozen=True, slots=True)
class Section(Kind):
    """A nested mapping whose keys are ``table``; ``method`` checks it as a whole."""

    table: Table
    method: str

    def check(self, v: Validator, node: Node, path: str) -> Any:
        return getattr(v, self.method)(node, path)


@dataclass(frozen=True, slots=True)
class ListOf(Kind):
    """A list of ``table`` mappings (routes: Validator.settings walks them)."""

    table: Table


@dataclass(frozen=True, slots=True)
class SectionOr(Kind):
    """A ``table`` mapping, or the one word ``word`` (a route's ``cors: passthrough``)."""

    table: Table
    word: str


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    kind: Kind
    type: str  # the "type" column of docs/configuration.md
    default: str  # its "default" column
    description: str  # its "what it does" column, and the schema's description
    value: Any = _UNSET  # the default as data: the schema's "default", the built-in CORS value
    required: bool = False


class Table:
    """The keys one mapping accepts, in the order the docs list them."""

    def __init__(self, name: str, description: str, keys: Sequence[Key]) -> None:
        self.name = name
        self.description = description
        self.keys = {key.name: key for key in keys}
        self.names = tuple(self.keys)

    def __getitem__(self, name: str) -> Key:
        return self.keys[name]

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys.values())


def char_ranges(chars: frozenset[str]) -> str:
    """``chars`` as the inside of a regex class, in \\xHH escapes any regex dialect reads."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(f"\\x{a:02x}" if a == b else f"\\x{a:02x}-\\x{b:02x}" for a, b in runs)


# RFC 9110 token (headers.is_token), as a schema pattern.
TOKEN_PATTERN = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"
# Loose on purpose: the validator's parse_origin says the rest (a schema must never refuse
# what the validator takes). "*", "null", or http(s)://[*.]host[:port|:*].
ORIGIN_PATTERN = (
    r"^(\*|null|[Hh][Tt][Tt][Pp][Ss]?://(\[[^\]/?#@]+\]|[^:/?#@\[\]]+)(:([0-9]+|\*))?)$"
)
HOST_PORT_PATTERN = r"^(\[[^\]]+\]|[^:\[][^:]*):[0-9]+$"
PATH_PATTERN = r"^/"
# Characters parse_upstream refuses in an upstream's path prefix.
_NOT_IN_PATH = frozenset(' \\"<>^`{|}\x7f') | frozenset(map(chr, range(32)))
# What parse_upstream accepts: http(s)://host[:port][/prefix] without user@, query,
# fragment, or one of _NOT_IN_PATH in the prefix.
UPSTREAM_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://(\[[^\]/?#@]+\]|[-A-Za-z0-9_.]+)(:[0-9]+)?"
    + f"(/[^?#{char_ranges(_NOT_IN_PATH)}]*)?$"
)

TIMEOUTS = Table(
    "timeouts",
    "Timeouts, in seconds (whole or decimal numbers greater than 0).",
    [
        Key(
            "connect",
            Seconds(),
            "seconds (> 0)",
            f"`{DEFAULT_TIMEOUTS.connect:g}`",
            "Time to open a connection to an upstream.",
            DEFAULT_TIMEOUTS.connect,
        ),
        Key(
            "read",
            Seconds(),
            "seconds (> 0)",
            f"`{DEFAULT_TIMEOUTS.read:g}`",
            "Each wait for the upstream: for the response head once the request (body "
            "included) has been sent, and between two body chunks. Not a limit on the whole "
            "response, so long downloads and event streams keep going, and not a limit on an "
            "upload, however slow.",
            DEFAULT_TIMEOUTS.read,
        ),
        Key(
            "send",
            Seconds(),
            "seconds (> 0)",
            f"`{DEFAULT_TIMEOUTS.send:g}`",
            "How long a client may accept no bytes of its response. Past it, its connection "
            "is reset and the upstream connection released (nginx's `send_timeout`).",
            DEFAULT_TIMEOUTS.send,
        ),
        Key(
            "idle",
            Seconds(),
            "seconds (> 0)",
            f"`{DEFAULT_TIMEOUTS.idle:g}`",
            "An idle keep-alive connection is closed after this long, on the client side and "
            "in the upstream connection pool.",
            DEFAULT_TIMEOUTS.idle,
        ),
        Key(
            "websocket_idle",
            Seconds(),
            "seconds (> 0)",
            f"`{DEFAULT_TIMEOUTS.websocket_idle:g}`",
            "A WebSocket tunnel that carried no byte in either direction for this long is "
            "closed. `read` and `idle` do not apply to tunnels.",
            DEFAULT_TIMEOUTS.websocket_idle,
        ),
        Key(
            "shutdown",
            Seconds(),
            "seconds (> 0)",
            f"`{DEFAULT_TIMEOUTS.shutdown:g}`",
            "On `SIGTERM`/`SIGINT`: how long requests in flight may take to finish.",
            DEFAULT_TIMEOUTS.shutdown,
        ),
    ],
)

TLS_TABLE = Table(
    "tls",
    "PEM certificate and key; the listener then speaks HTTPS. Both are required.",
    [
        Key(
            "cert",
            Text("string"),
            "path",
            "required",
            "PEM certificate (chain) file. A relative path is relative to the config file's "
            "folder.",
            required=True,
        ),
        Key(
            "key",
            Text("string"),
            "path",
            "required",
            "PEM private key file. A relative path is relative to the config file's folder.",
            required=True,
        ),
    ],
)

UPSTREAM_TLS = Table(
    "upstream_tls",
    "How the proxy checks https:// upstreams and the client certificate it presents to "
    "them. A route's upstream_tls replaces the top-level one whole.",
    [
        Key(
            "ca",
            Text("string"),
            "path",
            "none",
            "PEM file, or folder of `.pem`/`.crt`/`.cer` files, of CA certificates to trust, "
            "added to the system's CA store (see `system_ca`). A relative path is relative to "
            "the config file's folder.",
        ),
        Key(
            "system_ca",
            Boolean(),
            "boolean",
            "`true`",
            "`true`: trust the system's CA store as well as `ca`. `false`: trust only `ca` "
            "(needs `ca`).",
            True,
        ),
        Key(
            "cert",
            Text("string"),
            "path",
            "none",
            "PEM client certificate (chain) presented to upstreams that ask for one (mutual "
            "TLS). A relative path is relative to the config file's folder.",
        ),
        Key(
            "key",
            Text("string"),
            "path",
            "the `cert` file",
            "PEM private key of `cert`, unencrypted. A relative path is relative to the config "
            "file's folder.",
        ),
        Key(
            "verify",
            Boolean(),
            "boolean",
            "`true`",
            "`false`: accept any certificate, for a self-signed development server only. "
            "Always warned about.",
            True,
        ),
        Key(
            "server_name",
            Text("string"),
            "host name",
            "the upstream URL's host",
            "Name sent in SNI and checked against the certificate, for an upstream addressed "
            "by IP address or by a name its certificate does not carry.",
        ),
    ],
)

ORIGIN_REGEX = Table(
    "origin_regex",
    "An origin regex entry: {regex: PATTERN}.",
    [
        Key(
            "regex",
            Text("string"),
            "regex",
            "required",
            "A Python regex the whole `Origin` header must match (full match, "
            "case-sensitive). Anchor it with `^...$` and escape dots.",
            required=True,
        ),
    ],
)

CORS = Table(
    "cors",
    "CORS keys: under `defaults`, and under a route's `cors`, where they replace the "
    "`defaults` keys one by one.",
    [
        Key(
            "allow_origins",
            Origins(ORIGIN_REGEX),
            "list of origin entries",
            "`[]`",
            "Which origins may read responses. `[]` means no cross-origin access. See "
            "[Origins](#origins).",
            BUILTIN_CORS["allow_origins"],
        ),
        Key(
            "allow_methods",
            Names("methods", frozenset(m.lower() for m in FORBIDDEN_METHODS)),
            'list of method names, or `["*"]`',
            "`[GET, HEAD, POST]`",
            "Methods a cross-origin page may use. Case-sensitive.",
            BUILTIN_CORS["allow_methods"],
        ),
        Key(
            "allow_headers",
            Names("header_names"),
            'list of header names, or `["*"]`',
            "`[]`",
            "Request headers a preflight may ask for. Case-insensitive.",
            BUILTIN_CORS["allow_headers"],
        ),
        Key(
            "expose_headers",
            Names("expose_names", frozenset({hd.SET_COOKIE})),
            'list of header names, or `["*"]`',
            "`[]`",
            "Response headers the page may read beyond the always-readable ones.",
            BUILTIN_CORS["expose_headers"],
        ),
        Key(
            "allow_credentials",
            Boolean(),
            "boolean",
            "`false`",
            "Allow cookies and `Authorization` on cross-origin requests.",
            BUILTIN_CORS["allow_credentials"],
        ),
        Key(
            "max_age",
            Integer(0, nullable=True, expected="a whole number of seconds >= 0", method="max_age"),
            "whole seconds >= 0, or `null`",
            "unset",
            "`Access-Control-Max-Age` on preflight answers. Unset: no header.",
            BUILTIN_CORS["max_age"],
        ),
        Key(
            "allow_private_network",
            Boolean(),
            "boolean",
            "`false`",
            "Answer `Access-Control-Request-Private-Network: true` with "
            "`Access-Control-Allow-Private-Network: true`.",
            BUILTIN_CORS["allow_private_network"],
        ),
        Key(
            "on_disallowed",
            Choice(("reject", "forward")),
            "`reject` or `forward`",
            "`reject`",
            "What happens to a disallowed actual request: `403` and not forwarded, or "
            "forwarded with no CORS headers.",
            BUILTIN_CORS["on_disallowed"],
        ),
        Key(
            "preflight_status",
            Integer(200, 299, method="preflight_status"),
            "integer 200-299",
            "`204`",
            "Status of an allowed preflight answer.",
            BUILTIN_CORS["preflight_status"],
        ),
        Key(
            "report_only",
            Boolean(),
            "boolean",
            "`false`",
            "Decide, but forward everything untouched (see [report_only](#report_only)).",
            BUILTIN_CORS["report_only"],
        ),
    ],
)

ROUTE = Table(
    "route",
    "A route: the requests it covers, where they go and their CORS policy.",
    [
        Key(
            "path",
            Text("string", PATH_PATTERN),
            "path pattern",
            "required",
            "Which request paths the route covers (see [Paths](#paths)).",
            required=True,
        ),
        Key(
            "host",
            Text("string"),
            "string",
            "any host",
            "Also require this `Host` header. Case-insensitive; a port and a trailing dot are "
            "ignored on both sides.",
        ),
        Key(
            "upstream",
            Text("upstream", UPSTREAM_PATTERN),
            "URL",
            "top-level `upstream`",
            "Where this route's requests go. Required when there is no top-level `upstream`.",
        ),
        Key(
            "upstream_tls",
            Section(UPSTREAM_TLS, "upstream_tls"),
            "mapping (see [Upstream TLS](#upstream-tls))",
            "top-level `upstream_tls`",
            "TLS toward this route's https:// upstream; replaces the top-level `upstream_tls` "
            "whole.",
        ),
        Key(
            "cors",
            SectionOr(CORS, "passthrough"),
            "mapping of CORS keys, or `passthrough`",
            "`{}`",
            "This route's policy: keys set here replace the `defaults` keys.",
        ),
        Key(
            "name",
            Text("string"),
            "non-empty string",
            "the `path` pattern",
            "The route's name in logs and metrics.",
        ),
    ],
)

TOP = Table(
    "corsproxy",
    "corsproxy configuration file (docs/configuration.md).",
    [
        Key(
            "listen",
            Text("host_port", HOST_PORT_PATTERN),
            "`host:port` string",
            f"`{DEFAULT_LISTEN[0]}:{DEFAULT_LISTEN[1]}`",
            'Address the proxy listens on. IPv6 in brackets: `"[::]:8080"`. Port `0` picks a '
            "free port.",
            f"{DEFAULT_LISTEN[0]}:{DEFAULT_LISTEN[1]}",
        ),
        Key(
            "upstream",
            Text("upstream", UPSTREAM_PATTERN),
            "URL",
            "none",
            "Default upstream of every route and of unmatched requests. `http://` or "
            "`https://`, optional port and path prefix.",
        ),
        Key(
            "admin",
            Text("host_port", HOST_PORT_PATTERN),
            "`host:port` string",
            "none",
            "Address of the admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`). "
            "Off unless set. See [operations.md](operations.md).",
        ),
        Key(
            "workers",
            Integer(1, words=("auto",), expected="a positive integer or auto", method="workers"),
            "integer >= 1 or `auto`",
            "`1`",
            "Processes sharing the port (SO_REUSEPORT) under a supervisor; `auto` is the CPU "
            "count. See [operations.md](operations.md).",
            1,
        ),
        Key(
            "tls",
            Section(TLS_TABLE, "tls"),
            "mapping `{cert, key}`",
            "none",
            "PEM certificate and key. The listener then speaks HTTPS.",
        ),
        Key(
            "upstream_tls",
            Section(UPSTREAM_TLS, "upstream_tls"),
            "mapping (see [Upstream TLS](#upstream-tls))",
            "system CAs, verified",
            "TLS toward https:// upstreams: trusted CAs, a client certificate, `verify`, "
            "`server_name`.",
        ),
        Key(
            "timeouts",
            Section(TIMEOUTS, "timeouts"),
            "mapping of seconds",
            "see each",
            "Timeouts in seconds, each greater than 0.",
        ),
        Key(
            "preserve_host",
            Boolean(),
            "boolean",
            "`false`",
            "`true`: send the client's `Host` header upstream instead of the upstream's own.",
            False,
        ),
        Key(
            "trust_forwarded",
            Boolean(),
            "boolean",
            "`false`",
            "`true`: believe `X-Forwarded-Proto` and `X-Forwarded-Host` sent by a TLS "
            "terminator in front of the proxy.",
            False,
        ),
        Key(
            "access_log",
            Choice(("json", "text", "off"), false_means="off"),
            "`json`, `text` or `off`",
            "`json`",
            "One line per request on stdout, as JSON or as `key=value` text; `off` writes "
            "none. `false` means `off`.",
            "json",
        ),
        Key(
            "defaults",
            Section(CORS, "cors_keys"),
            "mapping of CORS keys",
            "built-in values",
            "The policy of every route, key by key (see [Defaults](#how-defaults-merge)).",
        ),
        Key(
            "routes",
            ListOf(ROUTE),
            "list of routes",
            "`[]`",
            "Per-path rules; first match wins.",
        ),
    ],
)

TOP_KEYS = TOP.names
CORS_KEYS = CORS.names
ROUTE_KEYS = ROUTE.names
TIMEOUT_KEYS = TIMEOUTS.names
TLS_KEYS = TLS_TABLE.names
UPSTREAM_TLS_KEYS = UPSTREAM_TLS.names


# --- diagnostics -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagnostic:
    where: str  # "FILE:LINE", or the flag / variable the value came from
    path: str  # key path, e.g. routes[1].cors.allow_origins[0]
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.severity}: {self.message}"


class ConfigInvalid(Exception):
    """The config has errors; ``diagnostics`` holds all of them (and the warnings)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        super().__init__("\n".join(str(d) for d in diagnostics))
        self.diagnostics = list(diagnostics)


# --- the located tree --------------------------------------------------------------


@dataclass(slots=True)
class Node:
    """A config value with where it came from. Mappings hold Nodes keyed by str."""

    value: Any
    where: str


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2's booleans: only true and false (any of the
    spellings True, TRUE, false, False, FALSE) are booleans; YAML 1.1's yes/no/on/off stay
    the plain strings YAML 1.2, JSON Schema tools and editors read them as. So
    ``allow_credentials: yes`` is an error with a hint instead of a silent ``true``, and the
    validator and the schema judge the same values."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

# YAML 1.1's other booleans: strings here, and a hint where a boolean is expected.
YAML11_BOOLEANS = frozenset({"yes", "no", "on", "off", "y", "n"})


def load_yaml(text: str) -> Any:
    """Plain data, read the way the validator reads it (for the JSON Schema, say)."""
    return yaml.load(text, Loader=ConfigLoader)


def from_yaml(text: str, filename: str) -> tuple[Node | None, list[Diagnostic]]:
    """Compose YAML into located Nodes, with the problems (duplicate keys) found on the way.

    Raises ConfigInvalid on a syntax error, since nothing after it can be trusted.
    """
    try:
        root = yaml.compose(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        if "alphabetic or numeric character" in problem:
            problem += ' (a bare * starts a YAML alias: write "*" in quotes)'
        raise ConfigInvalid([Diagnostic(f"{filename}:{line}", "yaml", "error", problem)]) from None
    if root is None:
        return None, []
    constructor = ConfigLoader("")
    errors: list[Diagnostic] = []

    def convert(node: yaml.Node, path: str) -> Node:
        where = f"{filename}:{node.start_mark.line + 1}"
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node)
                key_text = str(key)
                if key_text in out:
                    errors.append(
                        Diagnostic(
                            f"{filename}:{key_node.start_mark.line + 1}",
                            join(path, key_text),
                            "error",
                            "duplicate key",
                        )
                    )
                out[key_text] = convert(value_node, join(path, key_text))
            return Node(out, where)
        if isinstance(node, yaml.SequenceNode):
            return Node([convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)], where)
        try:
            return Node(constructor.construct_object(node), where)
        except yaml.YAMLError as exc:
            errors.append(Diagnostic(where, path or "yaml", "error", str(exc).splitlines()[0]))
            return Node(None, where)

    return convert(root, ""), errors


def from_plain(value: Any, where: str) -> Node:
    """Wrap plain Python data (from flags or the environment) as located Nodes."""
    if isinstance(value, dict):
        return Node({k: from_plain(v, where) for k, v in value.items()}, where)
    if isinstance(value, list):
        return Node([from_plain(v, where) for v in value], where)
    return Node(value, where)


def to_plain(node: Node | None) -> Any:
    if node is None:
        return None
    if isinstance(node.value, dict):
        return {k: to_plain(v) for k, v in node.value.items()}
    if isinstance(node.value, list):
        return [to_plain(v) for v in node.value]
    return node.value


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- overrides from flags and environment ------------------------------------------


@dataclass(frozen=True, slots=True)
class Overrides:
    """What ``serve`` flags and ``$CORSPROXY_*`` variables put on top of (or instead of) a file."""

    upstream: tuple[str, str] | None = None  # (value, where it came from)
    allow_origins: tuple[tuple[str, ...], str] | None = None
    allow_credentials: bool = False
    listen: tuple[str, str] | None = None
    every_upstream: str | None = None  # demo: point every route at one upstream
    upstream_ca: tuple[str, str] | None = None  # (absolute path, where): upstream_tls.ca
    upstream_insecure: str | None = None  # where: upstream_tls.verify: false

    @property
    def empty(self) -> bool:
        return self.upstream is None and self.allow_origins is None and self.listen is None


def apply_overrides(root: Node, overrides: Overrides) -> None:
    top = root.value
    if overrides.upstream is not None:
        value, where = overrides.upstream
        top["upstream"] = Node(value, where)
    if overrides.listen is not None:
        value, where = overrides.listen
        top["listen"] = Node(value, where)
    for key, value, where in (
        ("ca", *(overrides.upstream_ca or (None, ""))),
        ("verify", False, overrides.upstream_insecure),
    ):
        if where:  # the top-level upstream_tls, made or added to
            tls = top.get("upstream_tls")
            if tls is None or not isinstance(tls.value, dict):
                tls = top["upstream_tls"] = Node({}, where)
            tls.value[key] = Node(value, where)
    if overrides.every_upstream is not None:
        top["upstream"] = Node(overrides.every_upstream, "demo")
        routes = top.get("routes")
        if routes is not None and isinstance(routes.value, list):
            for route in routes.value:
                if isinstance(route.value, dict) and "upstream" in route.value:
                    route.value["upstream"] = Node(overrides.every_upstream, "demo")
    if overrides.allow_origins is not None:
        origins, where = overrides.allow_origins
        defaults = top.setdefault("defaults", Node({}, where))
        if isinstance(defaults.value, dict):
            defaults.value["allow_origins"] = from_plain(list(origins), where)
    if overrides.allow_credentials:
        defaults = top.setdefault("defaults", Node({}, "--allow-credentials"))
        if isinstance(defaults.value, dict):
            defaults.value["allow_credentials"] = Node(True, "--allow-credentials")


def flags_tree(overrides: Overrides) -> Node:
    """The no-file mode: one permissive catch-all route, the origin is the gate
    (docs/configuration.md, "Running without a file")."""
    where = "--upstream"
    root = from_plain(
        {
            "defaults": {
                "allow_methods": ["*"],
                "allow_headers": ["*"],
                "expose_headers": ["*"],
                "max_age": 600,
                "allow_origins": [],
            }
        },
        where,
    )
    apply_overrides(root, overrides)
    return root


# --- loading -----------------------------------------------------------------------


def load_settings(
    path: str, overrides: Overrides = Overrides()
) -> tuple[Settings, list[Diagnostic]]:
    """Read, validate and compile a config file. Raises ConfigInvalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigInvalid(
            [Diagnostic(path, "file", "error", f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigInvalid([Diagnostic(path, "file", "error", "not UTF-8 text")]) from None
    return parse_settings(text, path, overrides)


def parse_settings(
    text: str, filename: str, overrides: Overrides = Overrides()
) -> tuple[Settings, list[Diagnostic]]:
    root, problems = from_yaml(text, filename)
    if root is None:
        root = Node({}, f"{filename}:1")
    if not isinstance(root.value, dict):
        raise ConfigInvalid(
            [Diagnostic(root.where, "yaml", "error", "the top level must be a mapping of keys")]
        )
    apply_overrides(root, overrides)
    base_dir = os.path.dirname(os.path.abspath(filename))
    return compile_settings(root, base_dir, filename, problems)


def settings_from_flags(overrides: Overrides) -> tuple[Settings, list[Diagnostic]]:
    return compile_settings(flags_tree(overrides), os.getcwd(), "<command line>")


def compile_settings(
    root: Node, base_dir: str, source: str, problems: Sequence[Diagnostic] = ()
) -> tuple[Settings, list[Diagnostic]]:
    v = Validator(base_dir)
    v.diagnostics.extend(problems)
    settings = v.settings(root, source)
    errors = [d for d in v.diagnostics if d.severity == "error"]
    if errors or settings is None:
        raise ConfigInvalid(unique(v.diagnostics))
    return settings, unique(v.diagnostics)


def unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Drop repeats (a defaults problem shows once, not once per route) and sort by line."""

    def line(d: Diagnostic) -> int:
        tail = d.where.rpartition(":")[2]
        return int(tail) if tail.isdigit() else 0

    return sorted(dict.fromkeys(diagnostics), key=line)


# --- validation --------------------------------------------------------------------


@dataclass(slots=True)
class CorsKeys:
    """The CORS keys one layer (defaults or a route) sets, each with its node."""

    values: dict[str, tuple[Any, Node, str]] = field(default_factory=dict)

    def get(self, key: str, default: Any = _UNSET) -> Any:
        return self.values[key][0] if key in self.values else default


@dataclass(frozen=True, slots=True)
class OriginEntry:
    kind: str  # "any" | "exact" | "pattern" | "regex"
    value: Any
    node: Node
    path: str


class Validator:
    """One pass over the tree; every problem is recorded, none stops the walk."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.diagnostics: list[Diagnostic] = []
        # Keyed by id() of origin-entry tuples; each value holds its tuple, so the tuple
        # outlives the validation and its id cannot be reused by another list.
        self.matchers: dict[int, tuple[tuple[OriginEntry, ...], OriginMatcher]] = {}
        self.checked_origins: dict[tuple[int, int | None], object] = {}

    # reporting
    def error(self, node: Node, path: str, message: str) -> None:
        self.diagnostics.append(Diagnostic(node.where, path, "error", message))

    def warn(self, node: Node, path: str, message: str) -> None:
        self.diagnostics.append(Diagnostic(node.where, path, "warning", message))

    # shapes
    def mapping(self, node: Node, path: str, allowed: Sequence[str]) -> dict[str, Node] | None:
        if not isinstance(node.value, dict):
            self.error(node, path, f"expected a mapping, got {describe(node.value)}")
            return None
        for key, child in node.value.items():
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                tip = f"; did you mean {hint[0]!r}?" if hint else ""
                self.error(child, join(path, key), f"unknown key {key!r}{tip}")
        return {k: n for k, n in node.value.items() if k in allowed}

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node.value, list):
            self.error(node, path, f"expected a list, got {describe(node.value)}")
            return None
        return node.value

    def boolean(self, node: Node, path: str) -> bool | None:
        value = node.value
        if not isinstance(value, bool):
            message = f"expected true or false, got {describe(value)}"
            if isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
                message += (
                    f" (YAML 1.1 read {value} as a boolean; corsproxy reads YAML 1.2, "
                    "where it is a string): write true or false"
                )
            self.error(node, path, message)
            return None
        return value

    def choice(self, node: Node, path: str, kind: Choice) -> str | None:
        value = node.value
        if value is False and kind.false_means is not None:
            return kind.false_means
        if not isinstance(value, str) or value not in kind.values:
            words = ", ".join(kind.values[:-1]) + f" or {kind.values[-1]}"
            self.error(node, path, f"expected {words}, got {describe(value)}")
            return None
        return value

    def integer(self, node: Node, path: str, kind: Integer) -> int | str | None:
        value = node.value
        if value is None and kind.nullable:
            return None
        if isinstance(value, str) and value in kind.words:
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < kind.minimum
            or (kind.maximum is not None and value > kind.maximum)
        ):
            self.error(node, path, f"expected {kind.expected}, got {describe(value)}")
            return None
        return value

    def value(self, table: Table, keys: dict[str, Node], name: str, path: str = "") -> Any:
        """The key's value checked by its kind, or None when it is absent or wrong."""
        if name not in keys:
            return None
        return table[name].kind.check(self, keys[name], join(path, name))

    def string(self, node: Node, path: str) -> str | None:
        if not isinstance(node.value, str) or not node.value:
            self.error(node, path, f"expected a non-empty string, got {describe(node.value)}")
            return None
        return node.value

    def number(self, node: Node, path: str, positive: bool = True) -> float | None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(node, path, f"expected a number of seconds, got {describe(value)}")
            return None
        if positive and value <= 0:
            self.error(node, path, "must be greater than 0")
            return None
        return float(value)

    # top level
    def settings(self, root: Node, source: str) -> Settings | None:
        top = self.mapping(root, "", TOP.names)
        if top is None:
            return None
        listen = self.value(TOP, top, "listen") or DEFAULT_LISTEN
        admin = self.value(TOP, top, "admin")
        workers = self.value(TOP, top, "workers") if "workers" in top else 1
        tls = self.value(TOP, top, "tls")
        timeouts = self.value(TOP, top, "timeouts") if "timeouts" in top else Timeouts()
        preserve_host = self.value(TOP, top, "preserve_host")
        trust_forwarded = self.value(TOP, top, "trust_forwarded")
        access_log = self.value(TOP, top, "access_log") if "access_log" in top else "json"
        upstream_tls = self.value(TOP, top, "upstream_tls")
        upstream = with_tls(self.value(TOP, top, "upstream"), upstream_tls)

        defaults = self.value(TOP, top, "defaults") or CorsKeys()
        fallback_policy = self.policy(defaults, CorsKeys(), "defaults", root)
        fallback = Route("default", None, None, upstream, fallback_policy)

        routes: list[tuple[int, Route]] = []
        inheriting: list[str] = []  # routes under the top-level upstream_tls
        if "routes" in top:
            items = self.sequence(top["routes"], "routes") or []
            for index, item in enumerate(items):
                route = self.route(item, f"routes[{index}]", defaults, upstream, root, upstream_tls)
                if route is not None:
                    routes.append((index, route))
                    if not (isinstance(item.value, dict) and "upstream_tls" in item.value):
                        inheriting.append(route_label(route))
            self.shadowed(routes, items)
        if upstream_tls is not None and not upstream_tls.spec.verify:
            if upstream is not None:
                inheriting.append("the default route")
            self.insecure(top["upstream_tls"], "upstream_tls", inheriting)
        if upstream is None and not routes and "upstream" not in top:
            self.warn(root, "upstream", "no upstream and no routes: every request gets 404")
        if any(d.severity == "error" for d in self.diagnostics):
            return None
        return Settings(
            table=RouteTable(tuple(r for _, r in routes), fallback),
            listen_host=listen[0],
            listen_port=listen[1],
            admin=admin,
            workers=workers or 1,
            tls=tls,
            timeouts=timeouts or Timeouts(),
            preserve_host=bool(preserve_host),
            trust_forwarded=bool(trust_forwarded),
            access_log=access_log or "json",
            source=source,
            effective=to_plain(root),
        )

    def host_port(self, node: Node, path: str) -> tuple[str, int] | None:
        text = node.value
        if not isinstance(text, str):
            self.error(node, path, f"expected host:port, got {describe(text)}")
            return None
        host, port = split_host_port(text)
        if host is None or port is None or not 0 <= port <= 65535:
            self.error(node, path, f"expected host:port such as 127.0.0.1:8080, got {text!r}")
            return None
        return host, port

    def workers(self, node: Node, path: str, kind: Integer) -> int | None:
        value = self.integer(node, path, kind)
        if value == "auto":
            return os.cpu_count() or 1
        return value if isinstance(value, int) else None

    def tls(self, node: Node, path: str) -> TLS | None:
        keys = self.mapping(node, path, TLS_TABLE.names)
        if keys is None:
            return None
        paths: dict[str, str] = {}
        for key in TLS_TABLE:
            if key.required and key.name not in keys:
                self.error(node, join(path, key.name), "missing: tls needs both cert and key")
                continue
            text = self.value(TLS_TABLE, keys, key.name, path)
            if text is None:
                continue
            full = text if os.path.isabs(text) else os.path.join(self.base_dir, text)
            if not os.access(full, os.R_OK) or not os.path.isfile(full):
                self.error(keys[key.name], join(path, key.name), f"cannot read {full!r}")
                continue
            paths[key.name] = full
        if len(paths) != 2:
            return None
        return TLS(paths["cert"], paths["key"])

    def timeouts(self, node: Node, path: str) -> Timeouts | None:
        keys = self.mapping(node, path, TIMEOUTS.names)
        if keys is None:
            return None
        values: dict[str, float] = {}
        for key in keys:
            seconds = self.value(TIMEOUTS, keys, key, path)
            if seconds is not None:
                values[key] = seconds
        return Timeouts(**values)

    def upstream_tls(self, node: Node, path: str) -> utls.UpstreamTLS | None:
        """``upstream_tls``, compiled: its files are read and its SSL context built here,
        once, so a bad file is an error of the key that names it."""
        keys = self.mapping(node, path, UPSTREAM_TLS.names)
        if keys is None:
            return None
        values = {name: self.value(UPSTREAM_TLS, keys, name, path) for name in keys}
        if any(values[name] is None for name in keys):
            return None  # a wrong value, already reported
        for name in ("ca", "cert", "key"):
            if name in values:
                text = values[name]
                values[name] = text if os.path.isabs(text) else os.path.join(self.base_dir, text)
                if not os.access(values[name], os.R_OK):
                    self.error(keys[name], join(path, name), f"cannot read {values[name]!r}")
                    return None
        if "server_name" in values:
            name = values["server_name"].lower().rstrip(".")
            if not _UPSTREAM_HOST.match(name):
                self.error(
                    keys["server_name"],
                    join(path, "server_name"),
                    f"expected a host name, got {values['server_name']!r}",
                )
                return None
            values["server_name"] = name
        if "key" in values and "cert" not in values:
            self.error(keys["key"], join(path, "key"), "a key needs its cert: set cert too")
            return None
        verify = values.get("verify", True)
        if values.get("system_ca") is False and "ca" not in values and verify:
            self.error(
                keys["system_ca"],
                join(path, "system_ca"),
                "system_ca: false trusts only ca, and there is no ca: no upstream "
                "certificate could ever be trusted",
            )
            return None
        try:
            return utls.build(utls.Spec(**values))
        except utls.TLSFileError as exc:
            at = keys.get(exc.key) or keys.get("cert") or node
            self.error(at, join(path, exc.key), exc.message)
            return None

    def insecure(self, node: Node, path: str, routes: Sequence[str]) -> None:
        """``verify: false`` is allowed (local development needs it) and never quiet."""
        verify = node.value.get("verify", node) if isinstance(node.value, dict) else node
        who = f"used by {', '.join(routes)}" if routes else "no route uses it yet"
        self.warn(
            verify,
            join(path, "verify"),
            f"verify: false: upstream certificates are not checked ({who}): anyone on the "
            "network path can pose as the upstream; for local development only",
        )

    def upstream(self, node: Node, path: str) -> Upstream | None:
        text = self.string(node, path)
        if text is None:
            return None
        upstream, problem = parse_upstream(text)
        if problem:
            self.error(node, path, problem)
        return upstream

    # routes
    def route(
        self,
        node: Node,
        path: str,
        defaults: CorsKeys,
        default_upstream: Upstream | None,
        root: Node,
        default_tls: utls.UpstreamTLS | None = None,
    ) -> Route | None:
        keys = self.mapping(node, path, ROUTE.names)
        if keys is None:
            return None
        pattern: PathPattern | None = None
        if "path" not in keys:
            self.error(node, f"{path}.path", "missing: every route needs a path pattern")
        else:
            text = self.value(ROUTE, keys, "path", path)
            if text is not None:
                try:
                    pattern = compile_pattern(text)
                except PatternError as exc:
                    self.error(keys["path"], f"{path}.path", str(exc))
        host = None
        if "host" in keys:
            text = self.value(ROUTE, keys, "host", path)
            if text is not None:
                host = routing_host(text)
        upstream = default_upstream
        tls = default_tls
        if "upstream_tls" in keys:
            tls = self.value(ROUTE, keys, "upstream_tls", path)
        if "upstream" in keys:
            upstream = with_tls(self.value(ROUTE, keys, "upstream", path), tls)
        elif "upstream_tls" in keys:
            upstream = with_tls(default_upstream, tls)
        elif default_upstream is None and not named_somehow(root, "upstream"):
            self.error(node, path, "no upstream: set this route's upstream or a top-level upstream")
        name = pattern.text if pattern is not None else path
        if "name" in keys:
            name = self.value(ROUTE, keys, "name", path) or name
        policy: Policy | None
        cors = keys.get("cors")
        cors_kind = ROUTE["cors"].kind
        assert isinstance(cors_kind, SectionOr)
        if cors is not None and cors.value == cors_kind.word:
            policy = None
        else:
            own = self.cors_keys(cors, f"{path}.cors") if cors is not None else CorsKeys()
            policy = self.policy(defaults, own, path, root)
        if pattern is None:
            return None
        route = Route(name, pattern, host, upstream, policy)
        if tls is not None and not tls.spec.verify and "upstream_tls" in keys:
            self.insecure(keys["upstream_tls"], f"{path}.upstream_tls", [route_label(route)])
        return route

    def shadowed(self, routes: list[tuple[int, Route]], items: list[Node]) -> None:
        for j, (index, later) in enumerate(routes):
            for _, earlier in routes[:j]:
                if earlier.pattern is None or later.pattern is None:
                    continue
                if earlier.host not in (None, later.host):
                    continue
                if earlier.pattern.covers(later.pattern):
                    self.warn(
                        items[index].value["path"],
                        f"routes[{index}].path",
                        f"never matches: the earlier route {route_label(earlier)} "
                        "covers every path it would",
                    )
                    break

    # CORS keys
    def cors_keys(self, node: Node, path: str) -> CorsKeys:
        out = CorsKeys()
        if isinstance(node.value, str):
            hint = "; did you mean 'passthrough'?" if node.value.lower().startswith("pass") else ""
            self.error(
                node,
                path,
                f"expected a mapping of CORS keys or passthrough, got {node.value!r}{hint}",
            )
            return out
        keys = self.mapping(node, path, CORS.names)
        if keys is None:
            return out
        for key, child in keys.items():
            kind = CORS[key].kind
            value = self.value(CORS, keys, key, path)
            if value is not None or (getattr(kind, "nullable", False) and child.value is None):
                out.values[key] = (value, child, join(path, key))
        return out

    def origins(self, node: Node, path: str, kind: Origins) -> tuple[OriginEntry, ...] | None:
        items = self.sequence(node, path)
        if items is None:
            return None
        out: list[OriginEntry] = []
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            value = item.value
            if isinstance(value, dict):
                keys = self.mapping(item, item_path, kind.regex.names)
                if keys is None or "regex" not in keys:
                    if keys is not None:
                        self.error(item, item_path, "expected {regex: PATTERN}")
                    continue
                text = self.string(keys["regex"], f"{item_path}.regex")
                if text is None:
                    continue
                try:
                    compiled = re.compile(text)
                except re.error as exc:
                    self.error(keys["regex"], f"{item_path}.regex", f"invalid regex: {exc}")
                    continue
                self.regex_warnings(keys["regex"], f"{item_path}.regex", text)
                out.append(OriginEntry("regex", compiled, keys["regex"], f"{item_path}.regex"))
            elif value is None:
                self.error(
                    item,
                    item_path,
                    'expected an origin string, got nothing (write "null" in quotes)',
                )
            elif not isinstance(value, str):
                self.error(item, item_path, f"expected an origin string, got {describe(value)}")
            elif value == "*":
                out.append(OriginEntry("any", "*", item, item_path))
            elif value == NULL_ORIGIN:
                # Fetch "serializing a request origin": sandboxed iframes, file: pages and
                # redirects across origins all send `null`, so any site can send it.
                self.warn(
                    item,
                    item_path,
                    "'null' lets any site in: a sandboxed iframe, a file: page and a "
                    "cross-origin redirect all send Origin: null",
                )
                out.append(OriginEntry("exact", NULL_ORIGIN, item, item_path))
            else:
                try:
                    pattern = parse_origin(value)
                except OriginError as exc:
                    self.error(item, item_path, f"{value!r}: {exc}")
                    continue
                if is_exact(pattern):
                    out.append(OriginEntry("exact", serialise(pattern), item, item_path))
                else:
                    out.append(OriginEntry("pattern", pattern, item, item_path))
        if any(e.kind == "any" for e in out) and len(out) > 1:
            self.warn(node, path, "'*' already allows every origin; the other entries do nothing")
        return tuple(out)

    def regex_warnings(self, node: Node, path: str, text: str) -> None:
        if not (text.startswith("^") and text.endswith("$")):
            self.warn(
                node,
                path,
                "regex is not anchored with ^...$: it must match the whole origin anyway, "
                "anchor it so readers see that",
            )
        if has_unescaped_dot(text):
            self.warn(node, path, "regex has an unescaped '.', which matches any character")

    def methods(self, node: Node, path: str, kind: Names) -> tuple[str, ...] | None:
        names = self.tokens(node, path, "method")
        if names is None:
            return None
        for index, name in enumerate(names):
            item = node.value[index]
            if name.lower() in kind.forbidden:
                self.error(item, f"{path}[{index}]", f"{name!r} is a forbidden method")
            elif name != name.upper() and name.upper() in _NORMALISED_METHODS:
                self.warn(
                    item,
                    f"{path}[{index}]",
                    f"methods are case-sensitive and browsers send {name.upper()!r}, not {name!r}",
                )
        return names

    def header_names(self, node: Node, path: str, kind: Names) -> tuple[str, ...] | None:
        names = self.tokens(node, path, "header name")
        if names is None:
            return None
        for index, name in enumerate(names):
            if hd.is_forbidden_request_header(name):
                self.warn(
                    node.value[index],
                    f"{path}[{index}]",
                    f"{name!r} is a forbidden request header: pages can never set it, so "
                    "no preflight asks for it and this entry does nothing",
                )
        return names

    def expose_names(self, node: Node, path: str, kind: Names) -> tuple[str, ...] | None:
        names = self.tokens(node, path, "header name")
        if names is None:
            return None
        for index, name in enumerate(names):
            if name.lower() in kind.forbidden:
                self.error(
                    node.value[index], f"{path}[{index}]", "browsers never expose Set-Cookie"
                )
            elif name.lower() in hd.SAFELISTED_RESPONSE_HEADERS:
                self.warn(
                    node.value[index],
                    f"{path}[{index}]",
                    f"{name!r} is a CORS-safelisted response header: pages can always read "
                    "it, so this entry does nothing",
                )
        return names

    def tokens(self, node: Node, path: str, what: str) -> tuple[str, ...] | None:
        items = self.sequence(node, path)
        if items is None:
            return None
        names: list[str] = []
        for index, item in enumerate(items):
            value = item.value
            if not isinstance(value, str) or not (value == "*" or hd.is_token(value)):
                self.error(item, f"{path}[{index}]", f"not a valid {what}: {value!r}")
                names.append("")
                continue
            names.append(value)
        if "*" in names and len(names) > 1:
            self.warn(node, path, "'*' already allows everything; the other entries do nothing")
        if "" in names:
            return None
        return tuple(names)

    def max_age(self, node: Node, path: str, kind: Integer) -> int | None:
        value = self.integer(node, path, kind)
        if not isinstance(value, int):
            return None
        if value > FIREFOX_MAX_AGE:
            self.warn(node, path, f"{value} s: Firefox caps preflight caching at {FIREFOX_MAX_AGE}")
        elif value > CHROMIUM_MAX_AGE:
            self.warn(
                node, path, f"{value} s: Chromium caps preflight caching at {CHROMIUM_MAX_AGE}"
            )
        return value

    def preflight_status(self, node: Node, path: str, kind: Integer) -> int | None:
        # The bounds come from the table; the message shows the value as written.
        value = node.value
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not whole or value < kind.minimum or (kind.maximum is not None and value > kind.maximum):
            self.error(
                node, path, f"expected a 2xx status (browsers need an ok status), got {value!r}"
            )
            return None
        return value

    # policy: defaults merged key by key, then checked as a whole
    def policy(self, defaults: CorsKeys, own: CorsKeys, path: str, root: Node) -> Policy | None:
        def pick(key: str) -> Any:
            value = own.get(key)
            if value is _UNSET:
                value = defaults.get(key)
            return BUILTIN_CORS[key] if value is _UNSET else value

        def source(key: str) -> tuple[Any, Node, str] | None:
            return own.values.get(key) or defaults.values.get(key)

        entries: tuple[OriginEntry, ...] = pick("allow_origins") or ()
        credentials = bool(pick("allow_credentials"))
        # Routes that inherit one origin list share its entries: check and compile it once,
        # so loading costs routes + origins, not routes x origins.
        cred = source("allow_credentials")
        seen = (id(entries), id(cred[1]) if credentials and cred else None)
        first_time = seen not in self.checked_origins
        self.checked_origins[seen] = (entries, cred)  # holds them, so no id is reused
        if credentials and first_time:
            cred_at = f" (set at {cred[2]})" if cred else ""
            for entry in entries:
                if entry.kind == "any":
                    self.error(
                        entry.node,
                        entry.path,
                        f"'*' cannot be used with allow_credentials: true{cred_at}: "
                        "browsers refuse it; list the origins",
                    )
                elif insecure_origin(entry):
                    self.warn(
                        entry.node,
                        entry.path,
                        f"{entry.node.value!r} is plain http next to allow_credentials: true: "
                        "anyone on the network path can act as it",
                    )
        if bool(pick("allow_private_network")):
            pn = source("allow_private_network")
            message = private_network_warning(entries)
            if pn is not None and message:
                self.warn(pn[1], pn[2], message)
        cached = self.matchers.get(id(entries))
        if cached is not None and cached[0] is entries:
            matcher = cached[1]
        else:
            matcher = OriginMatcher(
                exact=frozenset(e.value for e in entries if e.kind == "exact"),
                patterns=tuple(e.value for e in entries if e.kind == "pattern"),
                regexes=tuple(e.value for e in entries if e.kind == "regex"),
                any_origin=any(e.kind == "any" for e in entries),
            )
            self.matchers[id(entries)] = (entries, matcher)
        return compile_policy(
            origins=matcher,
            methods=tuple(pick("allow_methods")),
            headers=tuple(pick("allow_headers")),
            expose=tuple(pick("expose_headers")),
            allow_credentials=credentials,
            max_age=pick("max_age"),
            allow_private_network=bool(pick("allow_private_network")),
            on_disallowed=pick("on_disallowed"),
            preflight_status=pick("preflight_status"),
            report_only=bool(pick("report_only")),
        )


# Fetch "normalize a method": browsers uppercase these, and only these.
_NORMALISED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})


def private_network_warning(entries: Sequence[OriginEntry]) -> str:
    """Why these origins should not reach the private network, or ``""``.

    ``*`` and ``null`` let any site in; a wildcard or a regex lets in every page it matches,
    which is milder but more than a list says. Loopback patterns are left alone: their pages
    already run on the user's machine, the most private address space there is.
    """
    for entry in entries:
        if entry.kind == "any":
            return f"allow_private_network with '*' origins ({entry.path}) lets any site in"
    for entry in entries:
        if entry.kind == "exact" and entry.value == NULL_ORIGIN:
            return (
                f"allow_private_network with 'null' ({entry.path}) lets any site in "
                "through a sandboxed iframe"
            )
    loose = [
        f"{e.node.value!r} at {e.path}"
        for e in entries
        if e.kind == "regex" or (e.kind == "pattern" and not loopback(e.value))
    ]
    if not loose:
        return ""
    return (
        f"allow_private_network with wildcard or regex origins ({', '.join(loose)}): every "
        "page they match, a forgotten or user-content subdomain too, can reach the private "
        "network; prefer exact origins"
    )


def loopback(pattern: OriginPattern) -> bool:
    return is_loopback(pattern.host) or (pattern.subdomains and pattern.host == "localhost")


# Loopback origins are potentially trustworthy (W3C Secure Contexts 3.2): no network
# attacker sits between a browser and its own machine, so plain http there is fine.
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def insecure_origin(entry: OriginEntry) -> bool:
    if entry.kind == "exact":
        parsed = split_origin(entry.value)
        return parsed is not None and parsed.scheme == "http" and not is_loopback(parsed.host)
    if entry.kind == "pattern":
        return entry.value.scheme == "http" and not loopback(entry.value)
    return False


def is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.endswith(".localhost")


def named_somehow(root: Node, key: str) -> bool:
    """The key is set, or a misspelling of it already got its own error."""
    keys = list(root.value) if isinstance(root.value, dict) else []
    return key in keys or bool(difflib.get_close_matches(key, keys, n=1, cutoff=0.6))


def route_label(route: Route) -> str:
    pattern = route.pattern.text if route.pattern is not None else ""
    return repr(pattern) if route.name == pattern else f"{route.name!r} ({pattern})"


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def split_host_port(text: str) -> tuple[str | None, int | None]:
    """A listen address: ``host:port``, an IPv6 host in brackets (returned without them)."""
    split = split_authority(text)
    if split is None or split[1] is None or not split[1].isdigit() or not split[0]:
        return None, None
    host = split[0][1:-1] if split[0].startswith("[") else split[0]
    return (host, int(split[1])) if host else (None, None)


def parse_upstream(text: str) -> tuple[Upstream | None, str]:
    """``http://host:port[/prefix]`` -> Upstream, or (None, why not)."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return None, f"{text!r}: expected an http:// or https:// URL"
    if "?" in rest or "#" in rest:
        return None, f"{text!r}: an upstream URL has no query or fragment"
    authority, slash, prefix = rest.partition("/")
    if "@" in authority:
        return None, f"{text!r}: an upstream URL has no user:password@"
    if not authority:
        return None, f"{text!r}: missing host"
    split = split_authority(authority)
    if split is None:
        return None, f"{text!r}: invalid IPv6 host"
    host, port_text = split
    port = None
    if port_text is not None:
        if not port_text.isdigit():
            return None, f"{text!r}: invalid port"
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        return None, f"{text!r}: invalid port"
    host = host.lower()
    if not valid_upstream_host(host):
        return None, f"{text!r}: invalid host {host!r}"
    if slash and any(c in prefix for c in _NOT_IN_PATH):
        return None, f"{text!r}: the path prefix has a space or a control character"
    default = 443 if scheme == "https" else 80
    host_header = host if port in (None, default) else f"{host}:{port}"
    base = f"{scheme}://{host}" + ("" if port is None else f":{port}")
    prefix = ("/" + prefix).rstrip("/") if slash else ""
    return Upstream(base, prefix, host_header), ""


def with_tls(upstream: Upstream | None, tls: utls.UpstreamTLS | None) -> Upstream | None:
    """The upstream with its ``upstream_tls``: only an https:// upstream uses one."""
    if upstream is None or tls is None or not upstream.url.startswith("https:"):
        return upstream
    return Upstream(upstream.url, upstream.prefix, upstream.host_header, tls)


_UPSTREAM_HOST = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


def valid_upstream_host(host: str) -> bool:
    """A DNS name (service names with '_' included), an IPv4 or a bracketed IPv6 address."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return host.endswith("]")
    return bool(_UPSTREAM_HOST.match(host))


def has_unescaped_dot(pattern: str) -> bool:
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "." and not in_class:
            return True
    return False


def format_diagnostics(diagnostics: Sequence[Diagnostic]) -> str:
    return "\n".join(str(d) for d in diagnostics)
