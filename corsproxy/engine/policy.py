"""The compiled, immutable runtime objects the per-request path reads. Pure.

Everything that does not depend on the request is computed here once: origin matchers,
lowercase name sets, and the joined header values the engine sends as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from corsproxy.engine.origins import OriginMatcher
from corsproxy.engine.paths import PathPattern, path_parts

if TYPE_CHECKING:
    from corsproxy.config.upstream_tls import UpstreamTLS

OnDisallowed = Literal["reject", "forward"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One route's CORS policy, compiled."""

    origins: OriginMatcher
    methods: frozenset[str]  # case-sensitive tokens
    any_method: bool
    headers: frozenset[str]  # lowercase
    any_header: bool
    expose_any: bool
    allow_credentials: bool
    max_age: int | None
    allow_private_network: bool
    on_disallowed: OnDisallowed
    preflight_status: int
    report_only: bool
    # Header values, joined once.
    methods_value: str
    headers_value: str
    expose_value: str | None
    max_age_value: str | None

    @property
    def literal_star_origin(self) -> bool:
        """``allow_origins: ["*"]``: the answer is ``*`` and does not vary by origin.

        Config refuses ``*`` with credentials, so ``*`` never meets a credentialed answer.
        """
        return self.origins.any_origin


def compile_policy(
    *,
    origins: OriginMatcher,
    methods: tuple[str, ...],
    headers: tuple[str, ...],
    expose: tuple[str, ...],
    allow_credentials: bool,
    max_age: int | None,
    allow_private_network: bool,
    on_disallowed: OnDisallowed,
    preflight_status: int,
    report_only: bool,
) -> Policy:
    any_expose = "*" in expose
    return Policy(
        origins=origins,
        methods=frozenset(methods),
        any_method="*" in methods,
        headers=frozenset(h.lower() for h in headers),
        any_header="*" in headers,
        expose_any=any_expose,
        allow_credentials=allow_credentials,
        max_age=max_age,
        allow_private_network=allow_private_network,
        on_disallowed=on_disallowed,
        preflight_status=preflight_status,
        report_only=report_only,
        methods_value=", ".join(methods),
        headers_value=", ".join(headers),
        expose_value=("*" if any_expose else ", ".join(expose)) if expose else None,
        max_age_value=None if max_age is None else str(max_age),
    )


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route's requests go. Only these ever get a connection."""

    url: str  # scheme://host[:port], no path
    prefix: str  # path prefix without a trailing slash, "" for none
    host_header: str  # host[:port] as the upstream expects it in Host
    tls: UpstreamTLS | None = None  # https:// with upstream_tls set; None: the system's CAs
    # The connection pool's key: the URL, and for upstream_tls its fingerprint, so routes
    # with different TLS settings never share a connection.
    key: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        key = self.url if self.tls is None else f"{self.url} tls:{self.tls.fingerprint}"
        object.__setattr__(self, "key", key)

    def target(self, path_qs: str) -> str:
        return self.url + self.prefix + path_qs


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    pattern: PathPattern | None  # None: the catch-all built from `defaults`
    host: str | None  # lowercase, no port
    upstream: Upstream | None
    policy: Policy | None  # None: cors: passthrough

    def matches(self, host: str, parts: list[str]) -> bool:
        if self.host is not None and host != self.host:
            return False
        return self.pattern is None or self.pattern.matches_parts(parts)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routes in config order; the first that matches wins.

    Compiled into an index on the first path segment: a request only tries the routes
    whose first segment is its own, plus those starting with a wildcard, still in config
    order. A thousand routes cost about what a handful do.
    """

    routes: tuple[Route, ...]
    fallback: Route  # unmatched requests: `defaults` and the default `upstream`
    by_first: dict[str, tuple[Route, ...]] = field(default_factory=dict, compare=False)
    wild: tuple[Route, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        wild = [r for r in self.routes if first_literal(r) is None]
        literal: dict[str, list[Route]] = {}
        for route in self.routes:
            first = first_literal(route)
            if first is not None:
                literal.setdefault(first, []).append(route)
        order = {id(route): n for n, route in enumerate(self.routes)}
        by_first = {
            first: tuple(sorted(routes + wild, key=lambda r: order[id(r)]))
            for first, routes in literal.items()
        }
        object.__setattr__(self, "by_first", by_first)
        object.__setattr__(self, "wild", tuple(wild))

    def match(self, host: str, path: str) -> Route:
        parts = path_parts(path)  # split once, not once per route tried
        for route in self.by_first.get(parts[0], self.wild) if parts else self.routes:
            if route.matches(host, parts):
                return route
        return self.fallback


def first_literal(route: Route) -> str | None:
    """The first segment a route's pattern requires as is; None when any first segment
    can match (``*``, a pattern that is all ``**``, or no pattern)."""
    if route.pattern is None or not route.pattern.segments:
        return None
    first = route.pattern.segments[0]
    return None if first == "*" else first


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0
    send: float = 60.0
    idle: float = 75.0
    shutdown: float = 30.0
    websocket_idle: float = 3600.0


@dataclass(frozen=True, slots=True)
class TLS:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole validated config: listener settings plus the route table."""

    table: RouteTable
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin: tuple[str, int] | None = None
    workers: int = 1
    tls: TLS | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    preserve_host: bool = False
    trust_forwarded: bool = False
    access_log: Literal["json", "text", "off"] = "json"
    source: str = "<flags>"
    effective: dict[str, object] = field(default_factory=dict, compare=False)
