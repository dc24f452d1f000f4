"""The key tables: every key of the config file, once.

One ``Table`` per mapping of the file (``TOP`` and the tables it nests). Each key's kind
(what the validator accepts), its columns in docs/configuration.md and its description live
here and nowhere else: ``validate.Validator`` checks every value through ``Key.kind``,
``schema`` turns the same tables into the JSON Schema (``corsproxy schema``), and
tests/test_schema.py holds the tables of docs/configuration.md to these texts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corsproxy.config.addresses import NOT_IN_PATH
from corsproxy.engine import headers as hd
from corsproxy.engine.cors import FORBIDDEN_METHODS
from corsproxy.engine.defaults import BUILTIN_CORS
from corsproxy.engine.policy import Timeouts

if TYPE_CHECKING:
    from corsproxy.config.tree import Node
    from corsproxy.config.validate import Validator

DEFAULT_LISTEN = ("127.0.0.1", 8080)
DEFAULT_TIMEOUTS = Timeouts()
UNSET: Any = object()  # no default value (``Key.value``), a key not set (``CorsKeys``)


class Kind:
    """What a key's value may be. ``check`` validates and converts it (through the
    Validator, so the problems are recorded there); ``schema`` says the same in JSON
    Schema."""

    __slots__ = ()

    def check(self, v: Validator, node: Node, path: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is checked by its caller")


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    """``true`` or ``false``. YAML 1.1's yes/no/on/off are strings here (see tree.ConfigLoader)."""

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
    value: Any = UNSET  # the default as data: the schema's "default", the built-in CORS value
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
# What parse_upstream accepts: http(s)://host[:port][/prefix] without user@, query,
# fragment, or one of NOT_IN_PATH in the prefix.
UPSTREAM_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://(\[[^\]/?#@]+\]|[-A-Za-z0-9_.]+)(:[0-9]+)?"
    + f"(/[^?#{char_ranges(NOT_IN_PATH)}]*)?$"
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
