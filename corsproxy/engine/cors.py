"""The decision engine: the facts of one request in, a ``Decision`` out. Pure.

Read it next to docs/configuration.md#what-happens-to-a-request, which says the same in
prose: ``decide`` is the ladder of early returns (several Origins -> not CORS -> WebSocket
-> preflight -> actual), and each rung is one function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum

from corsproxy.engine import headers as h
from corsproxy.engine.policy import Policy

# Browsers never let a page send these (Fetch "forbidden method"); a "*" policy must not
# reflect them either.
FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
REJECTED_STATUS = 403
BAD_REQUEST_STATUS = 400


class Kind(StrEnum):
    NONE = "none"
    PREFLIGHT = "preflight"
    ACTUAL = "actual"
    WEBSOCKET = "websocket"


class Verdict(StrEnum):
    ALLOWED = "allowed"
    REJECTED = "rejected"  # answered 403
    FORWARDED = "forwarded"  # disallowed, forwarded under on_disallowed: forward
    WOULD_ALLOW = "would_allow"  # report_only
    WOULD_REJECT = "would_reject"  # report_only
    NOT_CORS = "not_cors"
    PASSTHROUGH = "passthrough"  # cors: passthrough, nothing decided
    BAD_REQUEST = "bad_request"  # several Origin headers


class Action(Enum):
    FORWARD = "forward"  # to the upstream, then apply the decision to its response
    ANSWER = "answer"  # the proxy answers with `status`, `headers` and `body`


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the engine needs to know about a request, already read off the wire."""

    method: str
    origins: tuple[str, ...]  # every Origin header value, as sent
    addressed_origin: str  # scheme://host[:port] the request was sent to, default port dropped
    request_method: str | None = None  # Access-Control-Request-Method
    request_headers: str | None = None  # Access-Control-Request-Headers, joined
    request_private_network: bool = False
    websocket: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Kind
    verdict: Verdict
    action: Action
    reason: str = ""
    status: int = 0  # when answering
    headers: Headers = ()  # CORS headers for the answer or the forwarded response
    vary: tuple[str, ...] = ()  # names merged into the response's Vary
    strip: bool = True  # remove the upstream's Access-Control-* response headers
    expose_upstream: bool = False  # expose "*" with credentials: name the upstream's headers
    origin: str | None = None

    @property
    def cors_allowed(self) -> bool:
        """True when the response (even one the proxy makes, such as a 502) gets CORS headers."""
        return self.verdict is Verdict.ALLOWED and self.kind is Kind.ACTUAL


PASSTHROUGH = Decision(Kind.NONE, Verdict.PASSTHROUGH, Action.FORWARD, strip=False)


def decide(policy: Policy, facts: RequestFacts) -> Decision:
    """Classify a request and decide what happens to it (docs/configuration.md, "What
    happens to a request")."""
    if len(facts.origins) > 1:
        return Decision(
            Kind.NONE,
            Verdict.BAD_REQUEST,
            Action.ANSWER,
            reason="more than one Origin header",
            status=BAD_REQUEST_STATUS,
        )
    vary = () if policy.literal_star_origin else h.ORIGIN_VARY
    origin = facts.origins[0] if facts.origins else None
    if origin is None or origin == facts.addressed_origin:
        if policy.report_only:
            return Decision(Kind.NONE, Verdict.NOT_CORS, Action.FORWARD, strip=False)
        return Decision(Kind.NONE, Verdict.NOT_CORS, Action.FORWARD, vary=vary, origin=origin)
    if facts.websocket:
        decision = decide_websocket(policy, origin, vary)
    elif facts.method == "OPTIONS" and facts.request_method is not None:
        decision = decide_preflight(policy, facts, origin)
    else:
        decision = decide_actual(policy, facts.method, origin, vary)
    return shadow(decision) if policy.report_only else decision


def decide_preflight(policy: Policy, facts: RequestFacts, origin: str) -> Decision:
    """Preflights are answered here, never forwarded; every failing check is named at
    once (docs/configuration.md, "Preflights")."""
    failures: list[str] = []
    if not policy.origins.matches(origin):
        failures.append(f"origin {origin!r} is not allowed")
    method = facts.request_method or ""
    if not method_allowed(policy, method):
        failures.append(f"method {method!r} is not allowed")
    names = [n.lower() for n in h.split_list(facts.request_headers or "")]
    for name in names:
        if not header_allowed(policy, name):
            failures.append(f"header {name!r} is not allowed")
    if facts.request_private_network and not policy.allow_private_network:
        failures.append("private network access is not allowed")
    if failures:
        reason = "; ".join(failures)
        return Decision(
            Kind.PREFLIGHT,
            Verdict.REJECTED,
            Action.ANSWER,
            reason=reason,
            status=REJECTED_STATUS,
            vary=h.PREFLIGHT_VARY,
            origin=origin,
        )
    out = list(allow_origin_headers(policy, origin))
    out.append((h.AC_ALLOW_METHODS, method if policy.any_method else policy.methods_value))
    if names:
        value = ", ".join(names) if policy.any_header else policy.headers_value
        out.append((h.AC_ALLOW_HEADERS, value))
    if policy.max_age_value is not None:
        out.append((h.AC_MAX_AGE, policy.max_age_value))
    if facts.request_private_network:
        out.append((h.AC_ALLOW_PRIVATE_NETWORK, "true"))
    return Decision(
        Kind.PREFLIGHT,
        Verdict.ALLOWED,
        Action.ANSWER,
        status=policy.preflight_status,
        headers=tuple(out),
        vary=h.PREFLIGHT_VARY,
        origin=origin,
    )


def decide_actual(policy: Policy, method: str, origin: str, vary: tuple[str, ...]) -> Decision:
    """An allowed actual request is forwarded and its response gets CORS headers
    (docs/configuration.md, "Actual requests")."""
    if not policy.origins.matches(origin):
        reason = f"origin {origin!r} is not allowed"
    elif not method_allowed(policy, method):
        reason = f"method {method!r} is not allowed"
    else:
        out = list(allow_origin_headers(policy, origin))
        expose_upstream = policy.expose_any and policy.allow_credentials
        if policy.expose_value is not None and not expose_upstream:
            out.append((h.AC_EXPOSE_HEADERS, policy.expose_value))
        return Decision(
            Kind.ACTUAL,
            Verdict.ALLOWED,
            Action.FORWARD,
            headers=tuple(out),
            vary=vary,
            expose_upstream=expose_upstream,
            origin=origin,
        )
    return refuse(policy, Kind.ACTUAL, reason, vary, origin)


def decide_websocket(policy: Policy, origin: str, vary: tuple[str, ...]) -> Decision:
    """Browsers apply no CORS to WebSockets, so a foreign origin is refused here
    whatever ``on_disallowed`` says (cross-site WebSocket hijacking)."""
    if policy.origins.matches(origin):
        return Decision(Kind.WEBSOCKET, Verdict.ALLOWED, Action.FORWARD, vary=vary, origin=origin)
    return Decision(
        Kind.WEBSOCKET,
        Verdict.REJECTED,
        Action.ANSWER,
        reason=f"origin {origin!r} is not allowed to open a WebSocket",
        status=REJECTED_STATUS,
        vary=vary,
        origin=origin,
    )


def refuse(policy: Policy, kind: Kind, reason: str, vary: tuple[str, ...], origin: str) -> Decision:
    if policy.on_disallowed == "forward":
        return Decision(kind, Verdict.FORWARDED, Action.FORWARD, reason, vary=vary, origin=origin)
    return Decision(
        kind, Verdict.REJECTED, Action.ANSWER, reason, REJECTED_STATUS, vary=vary, origin=origin
    )


def shadow(decision: Decision) -> Decision:
    """report_only: keep the verdict for logs and metrics, forward everything untouched."""
    would_allow = decision.verdict is Verdict.ALLOWED
    return Decision(
        decision.kind,
        Verdict.WOULD_ALLOW if would_allow else Verdict.WOULD_REJECT,
        Action.FORWARD,
        decision.reason,
        strip=False,
        origin=decision.origin,
    )


def allow_origin_headers(policy: Policy, origin: str) -> Headers:
    if policy.literal_star_origin:
        return ((h.AC_ALLOW_ORIGIN, "*"),)
    if policy.allow_credentials:
        return ((h.AC_ALLOW_ORIGIN, origin), (h.AC_ALLOW_CREDENTIALS, "true"))
    return ((h.AC_ALLOW_ORIGIN, origin),)


def method_allowed(policy: Policy, method: str) -> bool:
    if method in policy.methods:
        return True
    return policy.any_method and h.is_token(method) and method.upper() not in FORBIDDEN_METHODS


def header_allowed(policy: Policy, name: str) -> bool:
    """``name`` is lowercase. ``*`` reflects, so only well-formed names are echoed back."""
    if name in policy.headers:
        return True
    return policy.any_header and h.is_token(name)


# Never worth naming in Access-Control-Expose-Headers: stripped or unexposable ones.
_NOT_EXPOSED = h.HOP_BY_HOP | {h.SET_COOKIE, "set-cookie2"}


def expose_value_for(response_names: Iterable[str]) -> str | None:
    """``expose_headers: ["*"]`` with credentials: browsers read ``*`` literally there, so
    the upstream response's own header names are listed instead (configuration.md)."""
    seen: dict[str, str] = {}
    for name in response_names:
        lower = name.lower()
        if lower in _NOT_EXPOSED or lower.startswith(h.ACCESS_CONTROL_PREFIX):
            continue
        seen.setdefault(lower, name)
    return ", ".join(seen.values()) if seen else None
