"""The HTTP layer: reads a request, asks the engine, answers or forwards (docs/configuration.md,
"What happens to a request" and "Forwarding").

All I/O lives here and in the two connection modules under it (``listener`` for clients,
``upstream`` for upstreams). The CORS decision is made before anything is forwarded and
applied to the response head before it is written; bodies stream through in bounded memory.
Headers stay the bytes they arrived as: the proxy filters them and appends its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter, time

from corsproxy.engine import headers as h
from corsproxy.engine import origins
from corsproxy.engine.cors import (
    PASSTHROUGH,
    Action,
    Decision,
    Kind,
    RequestFacts,
    decide,
    expose_value_for,
)
from corsproxy.engine.origins import routing_host
from corsproxy.engine.paths import PathError, Target, parse_target
from corsproxy.engine.policy import Route, Settings, Upstream
from corsproxy.http import wire
from corsproxy.http.listener import CONTINUE, ClientConnection, Exchange, RawHeaders, date_line
from corsproxy.http.tunnel import GOING_AWAY_GRACE, Tunnel
from corsproxy.http.upstream import BrokenBody, UpstreamConnection, UpstreamError, UpstreamPool
from corsproxy.observe import accesslog
from corsproxy.observe.live import REFUSED, LiveLog
from corsproxy.observe.metrics import RequestMetrics
from corsproxy.observe.traffic import RawKey

log = logging.getLogger("corsproxy")

BAD_GATEWAY = 502
GATEWAY_TIMEOUT = 504
NOT_FOUND = 404
BAD_REQUEST = 400
METHOD_NOT_ALLOWED = 405
CLIENT_CLOSED = 499  # nginx's code for a client that hung up before the answer (logs only)
FAULT_LOG_INTERVAL = 60.0  # seconds between two log lines for one upstream and cause
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_ACCESS_CONTROL = h.ACCESS_CONTROL_PREFIX.encode()
# Never passed to the upstream as the client sent them: the proxy sets its own (framing
# included: the one framing line of a forwarded request is the proxy's, wire.Framing).
_REPLACED = wire.HOP_BY_HOP | wire.PROTECTED | {b"expect", b"x-forwarded-for"}
# Never relayed from an upstream answer: the proxy frames the body toward the client itself.
_NOT_RELAYED = wire.HOP_BY_HOP | wire.FRAMING
_DROP = {
    # (keep the client's X-Forwarded-Proto, keep its X-Forwarded-Host) -> names not forwarded
    (False, False): _REPLACED | {b"x-forwarded-proto", b"x-forwarded-host"},
    (True, False): _REPLACED | {b"x-forwarded-host"},
    (False, True): _REPLACED | {b"x-forwarded-proto"},
    (True, True): _REPLACED,
}


@dataclass(slots=True)
class Outcome:
    """What one request came to, for logs and metrics."""

    route: str
    decision: Decision
    upstream_status: int | None = None
    upstream_error: str | None = None  # connect | tls | timeout | protocol
    received: int | None = None  # bytes from the client, for a WebSocket session
    note: str = ""  # why the proxy answered an error itself, for the log
    started: float = field(default_factory=perf_counter)
    prepared: Prepared | None = None  # the memoised decision, with what logs and counts need


class UpstreamFault(Exception):
    """The upstream could not be reached or misbehaved; ``reason`` is a metric label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class Proxy:
    """The request handler. ``settings`` is swapped whole on reload; each request reads it once."""

    def __init__(self, settings: Settings, pool: UpstreamPool, metrics: RequestMetrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.memo = Memo(settings)
        self.tunnels: set[Tunnel] = set()  # open WebSocket sessions
        self.fault_logged: dict[tuple[str, str, str], float] = {}  # upstream cause -> when
        self.live = LiveLog()  # the admin page's recent refusals and upstream faults

    def handle(self, request: Exchange, conn: ClientConnection) -> None:
        """Called once per request, in order, when its head has arrived."""
        self.metrics.in_flight.inc()  # metric hook: until finished() below
        settings = self.settings
        memo = self.memo
        if memo.settings is not settings:
            memo = self.memo = Memo(settings)
        if request.invalid is not None:
            # Refused by the listener before any rule looks at it (wire.refuse_request and
            # the limits): answered here all the same, so it is logged and counted.
            status, note = request.invalid
            request.outcome = Outcome(
                settings.table.fallback.name, PASSTHROUGH, note=note, started=request.started
            )
            extra = [b"Allow: %s\r\n" % wire.ALLOW] if status == METHOD_NOT_ALLOWED else []
            return self.error(conn, request, status, note, extra)
        target, path_error, route = memo.route(request)
        websocket = b"upgrade" in request.fields and is_websocket(request)
        prepared = memo.decision(route, request, websocket)
        decision = prepared.decision
        outcome = request.outcome = Outcome(
            route.name, decision, started=request.started, prepared=prepared
        )
        if target is None:
            # Refused whatever the policy says, preflights included (configuration.md); the
            # decision only tells whether an allowed page may read the 400.
            outcome.note = f"bad request path: {path_error}"
            return self.error(conn, request, BAD_REQUEST, outcome.note)
        if prepared.answer is not None:
            return conn.answer(request, *prepared.answer)
        upstream = route.upstream
        if upstream is None:
            outcome.note = "no route for this path"
            return self.error(conn, request, NOT_FOUND, outcome.note)
        if websocket and not valid_handshake(request):
            outcome.note = "malformed WebSocket handshake"
            return self.error(conn, request, BAD_REQUEST, outcome.note)
        if request.upgrade and request.has_body:
            # llhttp stops at an upgrade before the body; served as plain HTTP, it would be lost.
            outcome.note = "an upgrade request with a body is not supported"
            return self.error(conn, request, BAD_REQUEST, outcome.note)
        request.task = asyncio.ensure_future(
            self.forward(conn, request, upstream, target, prepared, settings, websocket)
        )

    async def forward(
        self,
        conn: ClientConnection,
        request: Exchange,
        upstream: Upstream,
        target: Target,
        prepared: Prepared,
        settings: Settings,
        websocket: bool = False,
    ) -> None:
        outcome: Outcome = request.outcome
        head = upstream_request_head(request, conn.peer, upstream, target, settings, websocket)
        up: UpstreamConnection | None = None
        try:
            up = await self.send(conn, request, upstream, head, settings, websocket)
            outcome.upstream_status = up.status
            lines = relayed_lines(up.headers, up.tokens, prepared)
            if up.status == 101:
                switched, up = up, None  # the tunnel owns its connection from now on
                return await self.tunnel(conn, request, switched, lines, settings)
            first = up.attach(partial(conn.send_one, request))
            conn.start_response(request, up.status, up.reason, lines, up.framing, first)
            conn.source = up
            if conn.write_paused and not up.complete:
                up.pause_reading()
            if not up.complete:
                assert up.done is not None
                await up.done
            conn.end_response(request)
        except UpstreamError as exc:
            outcome.upstream_error = exc.reason
            self.explain_upstream_fault(upstream, outcome.route, exc)
            if request.head_sent:
                # Too late for a 502: cut the client's connection, so a truncated body is
                # never mistaken for a whole one.
                outcome.note = f"upstream failed mid-body: {exc.explained}"
                conn.cut(request, outcome.note)
            else:
                outcome.note = exc.explained
                status = GATEWAY_TIMEOUT if exc.reason == "timeout" else BAD_GATEWAY
                self.error(conn, request, status, exc.message)
        except BrokenBody as exc:
            # The client's own body was malformed or stalled: its fault, not the upstream's.
            outcome.note = exc.refusal.reason
            if request.head_sent:
                conn.cut(request, outcome.note)
            else:
                self.error(conn, request, exc.refusal.status, exc.refusal.reason)
        except Exception:
            # A bug, not the client's or the upstream's fault: logged with its traceback, and
            # the client still gets an answer (or, mid-body, a cut connection).
            log.exception("internal error while forwarding %s %s", request.method, target.path)
            outcome.note = "internal error"
            if request.head_sent:
                conn.cut(request, "internal error")
            else:
                request.close_after("internal error")
                self.error(conn, request, 500, "internal error")
        except asyncio.CancelledError:
            # The client hung up (or the server is stopping): the upstream request goes too.
            outcome.note = conn.closing or (
                "client went away" + (" mid-body" if request.head_sent else "")
            )
            if not request.head_sent:
                request.status = CLIENT_CLOSED  # nothing was sent; logged as nginx does
            conn.finish(request)
        finally:
            conn.source = None
            if up is not None:
                self.pool.release(up)

    async def send(
        self,
        conn: ClientConnection,
        request: Exchange,
        upstream: Upstream,
        head: bytes,
        settings: Settings,
        websocket: bool = False,
    ) -> UpstreamConnection:
        """Send the request and wait for the response head.

        A pooled connection the upstream has just closed fails before any answer. Only a
        bodiless idempotent request is sent again (RFC 9110 9.2.2): a POST is never
        replayed, and a streamed body cannot be rewound.
        """
        retry = not request.has_body and request.method in IDEMPOTENT_METHODS
        timeouts = settings.timeouts
        while True:
            if request.body_error is not None:
                # The body broke before anything was sent (it came in the head's packet):
                # the upstream never sees this request at all.
                raise BrokenBody(request.body_error)
            up = self.pool.take(upstream) or await self.pool.connect(upstream, timeouts.connect)
            if request.body_error is not None:
                self.pool.release(up)
                raise BrokenBody(request.body_error)
            up.begin(
                head,
                conn,
                timeouts.read,
                timeouts.send,
                head_only=request.method == "HEAD",
                body=request.has_body,
                chunked=request.framing.body is wire.Body.CHUNKED,
                upgrade=websocket,
            )
            if request.has_body:
                expect = request.header(b"expect")
                if (
                    expect is not None
                    and expect.lower() == "100-continue"
                    and (request.version == "1.1")
                ):
                    conn.write(CONTINUE)
                conn.attach_body(request, up.send_body, up.end_body, up.body_broken)
            try:
                assert up.head is not None
                await up.head
                return up
            except UpstreamError as exc:
                up.close()
                if not (exc.stale and retry):
                    raise
                retry = False
            except BaseException:
                up.close()
                raise

    def explain_upstream_fault(self, upstream: Upstream, route: str, exc: UpstreamError) -> None:
        """Tell the operator why clients get 502/504, with the upstream's address: once per
        upstream and cause a minute (a dead upstream under load is one line, not thousands)."""
        if exc.stale:
            return  # a pooled connection the upstream had closed: retried or reported below
        self.live.fault(upstream.url, route, exc.reason, exc.cause or exc.message)
        key = (upstream.url, exc.reason, exc.cause or exc.message)
        now = perf_counter()
        if now - self.fault_logged.get(key, -FAULT_LOG_INTERVAL) < FAULT_LOG_INTERVAL:
            return
        if len(self.fault_logged) >= MEMO_SIZE:
            self.fault_logged.clear()
        self.fault_logged[key] = now
        log.warning(
            "upstream %s (route %s): %s: clients get %s (said once a minute per cause)",
            upstream.url,
            route,
            exc.cause or exc.message,
            GATEWAY_TIMEOUT if exc.reason == "timeout" else BAD_GATEWAY,
        )

    async def tunnel(
        self,
        conn: ClientConnection,
        request: Exchange,
        up: UpstreamConnection,
        lines: list[bytes],
        settings: Settings,
    ) -> None:
        """The upstream accepted the WebSocket: relay its 101, whole, then join the two
        connections until either side ends the session; it is logged and counted then."""
        upgrade = next((v for name, _, v in up.headers if name == b"upgrade"), b"websocket")
        lines = [*lines, b"Connection: Upgrade\r\n", b"Upgrade: %s\r\n" % upgrade]
        client, client_tail = conn.start_tunnel(request, up.reason, lines)
        upstream, upstream_tail = up.transport, up.switched or b""
        up.reset()
        up.transport = None  # the tunnel writes to it now, never this object
        assert upstream is not None
        timeouts = settings.timeouts
        tunnel = Tunnel(client, upstream, timeouts.websocket_idle, timeouts.send)
        self.tunnels.add(tunnel)
        self.metrics.websocket_sessions.inc()
        try:
            tunnel.start(client_tail, upstream_tail)
            await tunnel.done
        finally:
            self.tunnels.discard(tunnel)
            self.metrics.websocket_sessions.dec()
        request.outcome.note = tunnel.reason
        request.outcome.received = tunnel.client.received
        request.sent += tunnel.upstream.received
        conn.finish(request)

    async def close_tunnels(self, timeout: float) -> None:
        """Shutdown: open WebSocket sessions get ``timeout`` to end by themselves, then each
        side a Close 1001 ("going away") at a frame boundary."""
        if self.tunnels:
            await asyncio.wait([t.done for t in self.tunnels], timeout=timeout)
        for tunnel in list(self.tunnels):
            tunnel.go_away()
        if self.tunnels:
            await asyncio.wait([t.done for t in self.tunnels], timeout=GOING_AWAY_GRACE + 1)

    def error(
        self,
        conn: ClientConnection,
        request: Exchange,
        status: int,
        message: str,
        extra: list[bytes] | None = None,
    ) -> None:
        pairs, body = error_parts(message, request.outcome.decision)
        lines = encode(pairs)
        if extra:
            lines += extra
        conn.answer(request, status, lines, body)

    def finished(self, request: Exchange, conn: ClientConnection) -> None:
        self.metrics.in_flight.dec()  # metric hook: handle() counted it
        outcome: Outcome | None = request.outcome
        if outcome is not None:
            self.record(
                outcome,
                conn.peer,
                request.method,
                request.target,
                request.status,
                request.sent,
                request.header(b"origin"),
                outcome.received,
                request.keyed,
                request.headers,
            )

    def record(
        self,
        outcome: Outcome,
        client: str | None,
        method: str,
        path: str,
        status: int,
        size: int,
        origin: str | None,
        received: int | None = None,
        keyed: Sequence[bytes] = (),
        headers: Sequence[tuple[bytes, bytes, bytes]] = (),
    ) -> None:
        """Count a finished request and write its access-log line. What only the suggestion
        and the access log use (credentials, the preflight's requested names) is worked out
        only when one of them is on."""
        decision = outcome.decision
        if decision.verdict in REFUSED:  # live page hook: one append to a bounded deque
            self.live.refused((time(), outcome.route, decision, origin, method, path, keyed))
        seconds = perf_counter() - outcome.started
        self.metrics.observe(
            outcome.route,
            decision.kind.value,
            decision.verdict.value,
            outcome.upstream_error,
            seconds,
        )
        self.metrics.respond(outcome.route, status)  # metric hook: corsproxy_responses_total
        prepared = outcome.prepared
        counted = prepared.counted if prepared is not None else None
        style = self.settings.access_log
        if counted is None and style == "off":
            return
        credentials = carries_credentials(headers) if decision.kind is not Kind.NONE else None
        if counted is not None and credentials is not None:
            # the admin page's suggestion: one dict increment, on a key built once per decision
            self.live.traffic.count(counted[credentials])
        if style == "off":
            return
        asked_method, asked_headers = prepared.asked if prepared is not None else (None, None)
        accesslog.write(
            accesslog.record(
                client=client,
                method=method,
                path=path,
                status=status,
                duration=seconds,
                route=outcome.route,
                origin=decision.origin or origin,
                kind=decision.kind.value,
                decision=decision.verdict.value,
                reason=decision.reason or outcome.note,
                upstream_status=outcome.upstream_status,
                size=size,
                received=received,
                request_method=asked_method,
                request_headers=asked_headers,
                credentials=credentials,
            ),
            style,
        )

    def malformed(self, conn: ClientConnection, message: str) -> None:
        log.info("refused a request from %s: %s", conn.peer or "?", message)


def carries_credentials(headers: Iterable[tuple[bytes, bytes, bytes]]) -> bool:
    """A Cookie or Authorization header was sent (the access log's ``credentials``)."""
    return any(lname in (b"cookie", b"authorization") for lname, _, _ in headers)


def preflight_asked(keyed: Sequence[bytes]) -> tuple[str | None, str | None]:
    """The method and the header names (lowercase, comma-separated) a preflight asks for,
    from the request's KEYED (name, value, name, value...) headers."""
    method: str | None = None
    names: list[str] = []
    for i in range(0, len(keyed) - 1, 2):
        name, value = keyed[i], keyed[i + 1].decode("latin-1")
        if name == b"access-control-request-method" and method is None:
            method = value.strip()
        elif name == b"access-control-request-headers":
            names += (n.lower() for n in h.split_list(value))
    return method, ",".join(names)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A decision with its header lines encoded once: ``lines`` for a forwarded response
    whose upstream sent no Vary, ``answer`` (status, lines, body) when the proxy answers."""

    decision: Decision
    lines: list[bytes]
    answer: tuple[int, list[bytes], bytes] | None
    # A preflight's requested method and header names (the access log's request_method and
    # request_headers), and the admin page's traffic keys without and with credentials
    # (None: not a CORS request, or no admin listener to show them): worked out once.
    asked: tuple[str | None, str | None] = (None, None)
    counted: tuple[RawKey, RawKey] | None = None


def prepare(
    decision: Decision,
    route: str = "",
    request: Exchange | None = None,
    count: bool = False,
) -> Prepared:
    answer = None
    if decision.action is Action.ANSWER:
        pairs, body = answer_parts(decision)
        answer = (decision.status, encode(pairs), body)
    asked: tuple[str | None, str | None] = (None, None)
    counted = None
    if request is not None and decision.kind is not Kind.NONE:
        if decision.kind is Kind.PREFLIGHT:
            asked = preflight_asked(request.keyed)
        origin = decision.origin or request.header(b"origin")
        if count and origin is not None:
            fields = (route, origin, decision.kind.value, request.method, *asked)
            counted = ((*fields, False), (*fields, True))
    return Prepared(decision, encode(decision_pairs(decision)), answer, asked, counted)


MEMO_SIZE = 1024  # entries per table
MEMO_KEY_BYTES = 1024  # larger keys (long targets, long header values) are not kept


class Memo:
    """Routes and decisions already worked out under one ``Settings``, keyed by the raw
    request values they depend on: both are pure functions of those values and the
    settings, and the same few combinations come back request after request. A reload
    starts a new memo; a full table is emptied, so unique requests cost bounded memory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.admin is not None  # count traffic only for an admin page
        self.routes: dict[tuple[bytes, str], tuple[Target | None, str, Route]] = {}
        self.decisions: dict[tuple[object, ...], Prepared] = {}

    def route(self, request: Exchange) -> tuple[Target | None, str, Route]:
        host = request.fields.get(b"host", (b"",))[0]
        key = (host, request.target)
        found = self.routes.get(key)
        if found is None:
            table = self.settings.table
            try:
                target = parse_target(request.target)
            except PathError as exc:
                found = (None, str(exc), table.fallback)
            else:
                found = (target, "", table.match(routing_host(host.decode("latin-1")), target.path))
            if len(request.target) + len(host) <= MEMO_KEY_BYTES:
                if len(self.routes) >= MEMO_SIZE:
                    self.routes.clear()
                self.routes[key] = found
        return found

    def decision(self, route: Route, request: Exchange, websocket: bool) -> Prepared:
        # id(route) is safe as a key: every route lives in self.settings, held here.
        key = (id(route), request.method, websocket, *request.keyed)
        found = self.decisions.get(key)
        if found is None:
            decision = PASSTHROUGH
            if route.policy is not None:
                decision = decide(route.policy, request_facts(request, self.settings, websocket))
            found = prepare(decision, route.name, request, self.count)
            if sum(map(len, request.keyed)) <= MEMO_KEY_BYTES:
                if len(self.decisions) >= MEMO_SIZE:
                    self.decisions.clear()
                self.decisions[key] = found
        return found


def request_facts(request: Exchange, settings: Settings, websocket: bool) -> RequestFacts:
    fields = request.fields
    raw_origins = fields.get(b"origin")
    if not raw_origins:
        return RequestFacts(request.method, (), "", websocket=websocket)
    request_headers = fields.get(b"access-control-request-headers")
    private = request.header(b"access-control-request-private-network")
    return RequestFacts(
        method=request.method,
        origins=tuple(v.decode("latin-1") for v in raw_origins),
        addressed_origin=addressed_origin(request, settings),
        request_method=request.header(b"access-control-request-method"),
        request_headers=b",".join(request_headers).decode("latin-1") if request_headers else None,
        request_private_network=private is not None and private.lower() == "true",
        websocket=websocket,
    )


def addressed_origin(request: Exchange, settings: Settings) -> str:
    """``scheme://host[:port]`` the client addressed, to tell same-origin requests."""
    scheme = "https" if settings.tls is not None else "http"
    host = request.header(b"host") or ""
    if settings.trust_forwarded:
        proto = request.header(b"x-forwarded-proto")
        if proto:
            scheme = proto.split(",")[0].strip().lower()
        forwarded_host = request.header(b"x-forwarded-host")
        if forwarded_host:
            host = forwarded_host.split(",")[0].strip()
    return origins.addressed_origin(scheme, host)


def is_websocket(request: Exchange) -> bool:
    upgrade = request.header(b"upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return False
    return "upgrade" in h.connection_listed(request.header_all(b"connection"))


def valid_handshake(request: Exchange) -> bool:
    """RFC 6455 4.2.1, the parts a server checks: GET, version 13, a 16-byte key."""
    if request.method != "GET" or request.header(b"sec-websocket-version") != "13":
        return False
    if request.has_body:
        return False
    key = request.header(b"sec-websocket-key") or ""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def forwarded_headers(
    request: Exchange, peer: str, upstream: Upstream, settings: Settings
) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones, with Host and X-Forwarded-* set
    (docs/configuration.md, "Forwarding")."""
    fields = request.fields
    trust = settings.trust_forwarded
    keep_proto = trust and b"x-forwarded-proto" in fields
    keep_host = trust and b"x-forwarded-host" in fields
    drop = _DROP[keep_proto, keep_host]
    listed = fields.get(b"connection")
    if listed:
        drop = drop | wire.hop_by_hop(listed_names(tuple(listed)))
    out = [(name, value) for lname, name, value in request.headers if lname not in drop]
    client_host = fields.get(b"host", (b"",))[0]
    host = client_host if settings.preserve_host and client_host else upstream.host_header.encode()
    out.append((b"Host", host))
    prior = b", ".join(fields.get(b"x-forwarded-for", ()))
    remote = peer.encode()
    out.append((b"X-Forwarded-For", prior + b", " + remote if prior else remote))
    if not keep_proto:
        out.append((b"X-Forwarded-Proto", b"https" if settings.tls else b"http"))
    if not keep_host and client_host:  # HTTP/1.0 without Host: never the client's own claim
        out.append((b"X-Forwarded-Host", client_host))
    return out


def upstream_request_head(
    request: Exchange,
    peer: str,
    upstream: Upstream,
    target: Target,
    settings: Settings,
    websocket: bool = False,
) -> bytes:
    path = (upstream.prefix + target.path_qs).encode("latin-1")
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), path)]
    lines.extend(
        b"%s: %s\r\n" % pair for pair in forwarded_headers(request, peer, upstream, settings)
    )
    lines.append(request.framing.header())  # the proxy's own, never the client's (wire.py)
    if websocket:  # the handshake's own hop-by-hop pair; Sec-WebSocket-* pass as they are
        lines.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@functools.lru_cache(maxsize=64)
def listed_names(values: tuple[bytes, ...]) -> frozenset[bytes]:
    """Lowercase names in Connection values; nearly always ``keep-alive`` or ``close``."""
    return wire.connection_tokens(values)


def relayed_lines(
    upstream: RawHeaders, tokens: frozenset[bytes], prepared: Prepared
) -> list[bytes]:
    """Upstream response head -> client response head lines, with the decision applied.
    Framing headers are never relayed: the client side writes its own (wire.Framing)."""
    drop = _NOT_RELAYED | wire.hop_by_hop(tokens) if tokens else _NOT_RELAYED
    decision = prepared.decision
    strip = decision.strip
    lines: list[bytes] = []
    vary: list[bytes] = []
    has_date = False
    for lname, name, value in upstream:
        if lname in drop:
            continue
        if strip and lname.startswith(_ACCESS_CONTROL):
            continue
        if lname == b"vary":
            vary.append(value)
            continue
        if lname == b"date":
            has_date = True
        lines.append(b"%s: %s\r\n" % (name, value))
    if not has_date:
        lines.append(date_line())  # RFC 9110 6.6.1: a recipient forwarding without one adds it
    if vary or decision.expose_upstream:
        names = (n.decode("latin-1") for _, n, _ in upstream) if decision.expose_upstream else ()
        lines.extend(encode(decision_pairs(decision, names, [v.decode("latin-1") for v in vary])))
    else:
        lines.extend(prepared.lines)
    return lines


def decision_pairs(
    decision: Decision, upstream_names: Iterable[str] = (), vary: list[str] | None = None
) -> list[tuple[str, str]]:
    """The decision's headers, plus Vary merged with the response's own ``vary`` values."""
    pairs = list(decision.headers)
    if decision.expose_upstream and decision.cors_allowed:
        exposed = expose_value_for(upstream_names)
        if exposed:
            pairs.append((h.AC_EXPOSE_HEADERS, exposed))
    vary = vary or []
    merged = h.merge_vary(vary, decision.vary) if decision.vary else None
    if merged is not None:
        pairs.append((h.VARY, merged))
    else:
        pairs.extend((h.VARY, value) for value in vary)
    return pairs


def encode(pairs: Iterable[tuple[str, str]]) -> list[bytes]:
    return [f"{name}: {value}\r\n".encode("latin-1") for name, value in pairs]


_REFUSAL_PREFIX = {
    Kind.PREFLIGHT: "CORS preflight rejected",
    Kind.ACTUAL: "CORS request rejected",
    Kind.WEBSOCKET: "WebSocket rejected",
}
_TEXT = (h.CONTENT_TYPE, "text/plain; charset=utf-8")


def answer_parts(decision: Decision) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of the proxy's own answer to a request it does not forward."""
    if decision.reason:
        prefix = _REFUSAL_PREFIX.get(decision.kind, "Bad request")
        return [_TEXT, *decision_pairs(decision)], f"{prefix}: {decision.reason}\n".encode()
    return decision_pairs(decision), b""


def error_parts(message: str, decision: Decision) -> tuple[list[tuple[str, str]], bytes]:
    """400/404/502/504 made by the proxy. An allowed cross-origin page gets the same CORS
    headers a forwarded response would carry, so it can read the error (configuration.md)."""
    pairs = (
        decision_pairs(decision)
        if decision.cors_allowed
        else decision_pairs(
            Decision(decision.kind, decision.verdict, decision.action, vary=decision.vary)
        )
    )
    return [_TEXT, *pairs], (message + "\n").encode()
