"""The Validator: one walk over the located tree into the engine's frozen objects.

Every key is checked through its kind in the key tables (``keys``); every problem is
recorded with its file, line and key path, and none stops the walk, so one run reports them
all. The warnings (a config that works but does less, or more, than it seems to) are here
too, next to the checks that find them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corsproxy.config import upstream_tls as utls
from corsproxy.config.addresses import UPSTREAM_HOST, parse_upstream, split_host_port
from corsproxy.config.keys import (
    CORS,
    DEFAULT_LISTEN,
    ROUTE,
    TIMEOUTS,
    TLS_TABLE,
    TOP,
    UNSET,
    UPSTREAM_TLS,
    Choice,
    Integer,
    Names,
    Origins,
    SectionOr,
    Table,
)
from corsproxy.config.tree import YAML11_BOOLEANS, Diagnostic, Node, join, to_plain
from corsproxy.engine import headers as hd
from corsproxy.engine.browser import CHROMIUM_MAX_AGE, FIREFOX_MAX_AGE
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


@dataclass(slots=True)
class CorsKeys:
    """The CORS keys one layer (defaults or a route) sets, each with its node."""

    values: dict[str, tuple[Any, Node, str]] = field(default_factory=dict)

    def get(self, key: str, default: Any = UNSET) -> Any:
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
            if not UPSTREAM_HOST.match(name):
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
            if value is UNSET:
                value = defaults.get(key)
            return BUILTIN_CORS[key] if value is UNSET else value

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


# Loopback origins are potentially trustworthy to browsers (docs/configuration.md#warnings):
# no network attacker sits between a browser and its own machine, so plain http there is fine.
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


def with_tls(upstream: Upstream | None, tls: utls.UpstreamTLS | None) -> Upstream | None:
    """The upstream with its ``upstream_tls``: only an https:// upstream uses one."""
    if upstream is None or tls is None or not upstream.url.startswith("https:"):
        return upstream
    return Upstream(upstream.url, upstream.prefix, upstream.host_header, tls)


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
