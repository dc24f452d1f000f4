"""``corsproxy explain``: the browser's walk (``browser.walk``) against the proxy's own
decision engine (``cors.decide``), with no network. Pure: no sockets, no aiohttp.

The path is normalised and the route matched as the proxy does; the walk sends what the
browser would, and ``ProxyExchange`` answers each request with the status and headers the
proxy would send. On a block it names the smallest config change that would allow the
request (or why none should). ``report_only`` routes are judged as if enforced;
``passthrough`` routes cannot be judged (the upstream decides). docs/troubleshooting.md
shows the output.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from corsproxy.engine import browser
from corsproxy.engine import headers as h
from corsproxy.engine.cors import (
    Action,
    Decision,
    Kind,
    RequestFacts,
    Verdict,
    decide,
    header_allowed,
    method_allowed,
)
from corsproxy.engine.defaults import builtin_cors_plain
from corsproxy.engine.origins import NULL_ORIGIN, addressed_origin, routing_host
from corsproxy.engine.paths import PathError, parse_target
from corsproxy.engine.policy import Policy, Route, Settings

Headers = tuple[tuple[str, str], ...]

# The policy keys, in the order a person reads them, with their built-in values
# (docs/configuration.md, "How defaults merge"),
# as the effective config shows them (lists).
BUILTIN = builtin_cors_plain()
SAFELISTED_RESPONSE_NAMES = (
    "Cache-Control",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "Expires",
    "Last-Modified",
    "Pragma",
)


NO_FIX_FOR_PATH = (
    "no config change helps: the proxy refuses this path for every client; fix the path"
)
PASSTHROUGH_REASON = (
    "cors: passthrough: the proxy adds and removes nothing; the upstream decides "
    "(try corsproxy probe against it)"
)


@dataclass(frozen=True, slots=True)
class ProxyAnswer(browser.Response):
    """What the proxy would send back for one request, and the decision behind it."""

    decision: Decision | None = None  # None: not CORS or passthrough, nothing decided

    @property
    def forwarded(self) -> bool:
        """To the upstream, which answers the status; else the proxy answers itself."""
        return self.status is None

    @property
    def why(self) -> str:
        """The checks the request failed (a 403 body names them); "" when none did, and for
        a preflight the proxy did not refuse (report_only forwards it untouched)."""
        decision = self.decision
        if decision is None:
            return ""
        if decision.kind is Kind.PREFLIGHT and decision.verdict is not Verdict.REJECTED:
            return ""
        return decision.reason

    @property
    def expose_upstream(self) -> bool:
        """expose_headers ["*"] with credentials: the upstream's names listed, unknown here."""
        return self.forwarded and self.decision is not None and self.decision.expose_upstream


@dataclass(frozen=True, slots=True)
class ProxyExchange:
    """Answers the walk's requests as ``serve`` would, from the proxy's decision engine."""

    policy: Policy | None  # None: cors: passthrough
    addressed: str
    bad_path: bool  # answered 400 (docs/configuration.md#what-the-proxy-does-to-the-request-path)
    same_origin: bool

    def answer(self, sent: browser.Sent) -> ProxyAnswer:
        refused = 400 if self.bad_path else None
        if self.same_origin:
            return ProxyAnswer(refused)  # not CORS: the browser reads no CORS header
        if self.policy is None:
            return ProxyAnswer(None if sent.preflight else refused, known=False)
        origins = tuple(v for n, v in sent.headers if n.lower() == h.ORIGIN.lower())
        if sent.preflight:
            facts = RequestFacts(
                "OPTIONS",
                origins,
                self.addressed,
                request_method=browser.get_combined(sent.headers, h.AC_REQUEST_METHOD),
                request_headers=browser.get_combined(sent.headers, h.AC_REQUEST_HEADERS),
            )
            decision = decide(self.policy, facts)
            if self.bad_path:
                return ProxyAnswer(400, vary_only(decision), decision=decision)
            return ProxyAnswer(*answer_of(decision), decision=decision)
        decision = decide(self.policy, RequestFacts(sent.method, origins, self.addressed))
        if sent.method not in LISTENER_METHODS:
            # Refused by the HTTP parser before any rule is read: a 400 with no CORS headers.
            return ProxyAnswer(400, (), decision=decision)
        if self.bad_path:
            return ProxyAnswer(400, error_headers(decision), decision=decision)
        if decision.action is Action.ANSWER:
            return ProxyAnswer(*answer_of(decision), decision=decision)
        return ProxyAnswer(None, with_vary(decision.headers, decision.vary), decision=decision)


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a browser would see for one request through the proxy, and why: the walk, and
    what only the proxy's side knows (route, policy, fixes)."""

    walk: browser.Walk[ProxyAnswer]
    allowed: bool | None  # None: cannot tell (a passthrough route: the upstream decides)
    reason: str  # the verdict's reason, in the browser's terms or the proxy's
    route: str  # the matched route's name
    route_key: str  # "routes[1]", or "defaults" for the catch-all
    route_path: str  # its path pattern, "" for the catch-all
    policy: tuple[tuple[str, Any], ...]  # the effective policy, key by key; () for passthrough
    passthrough: bool
    report_only: bool  # judged as if enforced
    path: str  # as the proxy routes it (normalised), or as given when it is refused
    addressed_origin: str  # scheme://host[:port] of the proxy as addressed
    bad_path: str  # why the proxy answers 400, "" when the path is fine
    readable: tuple[str, ...] = ()  # response header names JS may read (of those known)
    readable_note: str = ""
    fixes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return 3 if self.allowed is None else 0 if self.allowed else 1


def explain(
    settings: Settings,
    request: browser.Request,
    path: str,
    host: str | None = None,
    *,
    origins_from: str | None = None,
    no_file: bool = False,
) -> Explanation:
    """What a browser at ``request.origin`` would see for ``request`` to ``path`` through
    the proxy configured by ``settings``. ``host`` is the Host the page addresses
    (default: the listen address); ``origins_from`` names where ``defaults.allow_origins``
    came from when not the file (``--allow-origin``, ``$CORSPROXY_ALLOW_ORIGINS``), for the
    fix text; ``no_file``: the settings are serve's no-file mode (``--upstream``), so a fix
    is a flag, not a key."""
    scheme = "https" if settings.tls is not None else "http"
    host_given = host is not None
    if host is None:
        listen = settings.listen_host
        host = f"[{listen}]" if ":" in listen else listen
        host = f"{host}:{settings.listen_port}"
    addressed = addressed_origin(scheme, host)
    notes: list[str] = []
    bad_path = ""
    try:
        target = parse_target(path)
        route = settings.table.match(routing_host(host), target.path)
        shown_path = target.path_qs
    except PathError as exc:
        bad_path = str(exc)
        route, shown_path = settings.table.fallback, path
    if not host_given and any(r.host is not None for r in settings.table.routes):
        notes.append("routes with a host: key match only when --host names that host")
    index = route_index(settings, route)
    same_origin = request.origin == addressed
    policy = route.policy
    if policy is not None and policy.report_only and not bad_path:
        policy = dataclasses.replace(policy, report_only=False)  # judged as if enforced
    exchange = ProxyExchange(policy, addressed, bool(bad_path), same_origin)
    walked = browser.drive(browser.walk(request, same_origin), exchange.answer)
    planned = walked.plan
    if planned.dropped:
        notes.append(
            "fetch() silently drops headers a page may not set: " + ", ".join(planned.dropped)
        )
    if planned.forbidden_method:
        notes.append("no config change can allow it: browsers never send this method")
    cors = not planned.forbidden_method and not same_origin
    report_only = cors and route.policy is not None and route.policy.report_only and not bad_path
    if report_only:
        notes.append(
            "report_only: the proxy really forwards this untouched, preflight included, and "
            "the upstream's own CORS headers decide; judged here as if the rules were enforced"
        )
    ex = Explanation(
        walk=walked,
        allowed=walked.allowed,
        reason=walked.reason,
        route=route.name,
        route_key="defaults" if index is None else f"routes[{index}]",
        route_path=route.pattern.text if route.pattern is not None else "",
        policy=tuple((k, v) for k, v, _ in effective_policy(settings, index))
        if route.policy is not None
        else (),
        passthrough=route.policy is None,
        report_only=report_only,
        path=shown_path,
        addressed_origin=addressed,
        bad_path=bad_path,
        notes=tuple(notes),
    )
    if walked.stage == "fetch":
        return ex
    if same_origin:
        return dataclasses.replace(
            ex,
            reason=f"same-origin request ({addressed}): not CORS, the browser checks nothing",
            readable_note="every response header but Set-Cookie (same-origin)",
        )
    if walked.verdict is None or policy is None:
        return dataclasses.replace(ex, allowed=None, reason=PASSTHROUGH_REASON)
    actual = walked.actual
    if actual is not None and actual.sent.method not in LISTENER_METHODS:
        reason, fix = parser_refusal(actual.sent.method)
        return dataclasses.replace(ex, reason=reason, fixes=(fix,))
    if not walked.allowed or actual is None:
        fixer = Fixer(settings, index, request, planned, policy, origins_from, no_file)
        return dataclasses.replace(ex, fixes=(NO_FIX_FOR_PATH,) if bad_path else fixer.fixes())
    readable, note = readable_of(request, policy, actual.response)
    passes = "the response passes the browser's CORS check"
    return dataclasses.replace(
        ex,
        reason=f"the page can read the proxy's 400 answer ({passes})" if bad_path else passes,
        readable=readable,
        readable_note=note,
    )


def parser_refusal(method: str) -> tuple[str, str]:
    """Why and the fix when the listener's HTTP parser refuses the method (a 400 before
    any CORS rule: LISTENER_METHODS)."""
    upper = method.upper()
    fix = (
        f"call fetch() with method '{upper}': browsers send '{method}' as written "
        "and the proxy's HTTP parser only takes the registered methods in uppercase"
        if upper in LISTENER_METHODS
        else f"use a registered HTTP method: the proxy's HTTP parser refuses '{method}'"
    )
    reason = (
        f"the proxy answers 400: its HTTP parser refuses the method '{method}' before any "
        "CORS rule is read"
    )
    return reason, fix


# The request methods the listener's HTTP parser (llhttp, through httptools) takes; any
# other method, and any of these in lowercase (a browser sends `patch` as written), gets 400
# before the proxy runs.
LISTENER_METHODS = frozenset(
    [
        "ACL",
        "BIND",
        "CHECKOUT",
        "COPY",
        "DELETE",
        "GET",
        "HEAD",
        "LINK",
        "LOCK",
        "M-SEARCH",
        "MERGE",
        "MKACTIVITY",
        "MKCALENDAR",
        "MKCOL",
        "MOVE",
        "NOTIFY",
        "OPTIONS",
        "PATCH",
        "POST",
        "PROPFIND",
        "PROPPATCH",
        "PURGE",
        "PUT",
        "QUERY",
        "REBIND",
        "REPORT",
        "SEARCH",
        "SOURCE",
        "SUBSCRIBE",
        "TRACE",
        "UNBIND",
        "UNLINK",
        "UNLOCK",
        "UNSUBSCRIBE",
    ]
)


def route_index(settings: Settings, route: Route) -> int | None:
    for index, candidate in enumerate(settings.table.routes):
        if candidate is route:
            return index
    return None


def answer_of(decision: Decision) -> tuple[int, Headers]:
    """The status and CORS headers of an answer the proxy makes itself
    (``http.proxy.answer_parts``)."""
    return decision.status, with_vary(decision.headers, decision.vary)


def vary_only(decision: Decision) -> Headers:
    return with_vary((), decision.vary)


def error_headers(decision: Decision) -> Headers:
    """A 400 the proxy makes: the CORS headers a forwarded response would get, if allowed."""
    if decision.cors_allowed:
        return with_vary(decision.headers, decision.vary)
    return vary_only(decision)


def with_vary(headers: Headers, vary: Sequence[str]) -> Headers:
    return (*headers, (h.VARY, ", ".join(vary))) if vary else headers


def readable_of(
    request: browser.Request, policy: Policy, answer: ProxyAnswer
) -> tuple[tuple[str, ...], str]:
    """Which response header names the page's JS may read, as far as known without the
    upstream's response: the safelisted names plus what the proxy exposes."""
    unknown = "the upstream's own headers are unknown without network"
    decision = answer.decision
    if decision is None or decision.kind is Kind.NONE:
        return (), "every response header but Set-Cookie (not a CORS request)"
    if decision.expose_upstream:
        return (), (
            "every header the upstream sends, except Set-Cookie: with credentials the proxy "
            "lists the upstream response's own header names in Access-Control-Expose-Headers "
            "(a literal '*' would not count)"
        )
    if policy.expose_any and not request.credentials:
        return (), "every response header but Set-Cookie (Access-Control-Expose-Headers: *)"
    exposed = h.split_list(policy.expose_value or "")
    candidates = [*answer.headers, *((n, "") for n in SAFELISTED_RESPONSE_NAMES)]
    candidates += [(n, "") for n in exposed]
    readable = tuple(browser.readable_headers(request, candidates))
    return readable, f"of the response's headers, these names only; {unknown}"


# --- the effective policy and where each key is set --------------------------------


def effective_policy(settings: Settings, index: int | None) -> list[tuple[str, Any, str | None]]:
    """(key, value, key path where it is set, or None for the built-in) for one route."""
    top = settings.effective if isinstance(settings.effective, dict) else {}
    defaults = top.get("defaults") if isinstance(top.get("defaults"), dict) else {}
    own: dict[str, Any] = {}
    if index is not None:
        routes = top.get("routes")
        if isinstance(routes, list) and index < len(routes) and isinstance(routes[index], dict):
            cors = routes[index].get("cors")
            own = cors if isinstance(cors, dict) else {}
    out: list[tuple[str, Any, str | None]] = []
    for key, builtin in BUILTIN.items():
        if key in own:
            out.append((key, own[key], f"routes[{index}].cors.{key}"))
        elif key in defaults:
            out.append((key, defaults[key], f"defaults.{key}"))
        else:
            out.append((key, builtin, None))
    return out


class Fixer:
    """The smallest config change that would let the request through, key by key."""

    def __init__(
        self,
        settings: Settings,
        index: int | None,
        request: browser.Request,
        planned: browser.Plan,
        policy: Policy,
        origins_from: str | None,
        no_file: bool = False,
    ) -> None:
        self.keys = {k: (v, where) for k, v, where in effective_policy(settings, index)}
        self.index = index
        self.request = request
        self.planned = planned
        self.policy = policy
        self.origins_from = origins_from
        self.no_file = no_file

    def fixes(self) -> tuple[str, ...]:
        out: list[str] = []
        request, policy, planned = self.request, self.policy, self.planned
        if not policy.origins.matches(request.origin):
            shown = '"null"' if request.origin == NULL_ORIGIN else request.origin
            text = self.add(shown, "allow_origins")
            if request.origin == NULL_ORIGIN:
                text += " (careful: every sandboxed iframe and file: page sends null)"
            out.append(text)
        if not method_allowed(policy, planned.method):
            out.append(self.method_fix())
        if planned.preflight:
            for name in planned.unsafe_names:
                if not header_allowed(policy, name):
                    out.append(self.add(self.written(name), "allow_headers"))
        if request.credentials and policy.literal_star_origin:
            where = self.where("allow_origins")
            out.append(
                f"must not: {where} is ['*'], which browsers never accept on a credentialed "
                "request, and '*' with allow_credentials: true is a config error; list the "
                f"origins instead (e.g. {request.origin}) and set "
                f"{self.where('allow_credentials')}: true, or send the request without "
                "credentials"
            )
        elif request.credentials and not policy.allow_credentials:
            if self.no_file:
                out.append(
                    "add --allow-credentials (serve's flag; with a file: "
                    "defaults.allow_credentials: true)"
                )
            else:
                out.append(f"set {self.where('allow_credentials')}: true")
        return tuple(out) or ("no single config key explains this: see the reason above",)

    def method_fix(self) -> str:
        method = self.planned.method
        upper = method.upper()
        if method != upper and upper in self.policy.methods:
            return (
                f"call fetch() with method '{upper}': {upper} is what "
                f"{self.where('allow_methods')} lists, and the browser sends '{method}' as "
                "written (it uppercases only DELETE, GET, HEAD, OPTIONS, POST and PUT; "
                "methods are case-sensitive)"
            )
        return self.add(method, "allow_methods")

    def written(self, lower: str) -> str:
        """A header name as the page wrote it."""
        for name, _ in self.planned.headers:
            if name.lower() == lower:
                return name
        return lower

    def where(self, key: str) -> str:
        _, where = self.keys[key]
        if key == "allow_origins" and self.origins_from and where == "defaults.allow_origins":
            return self.origins_from
        if where is not None:
            return where
        return "defaults." + key if self.index is None else f"routes[{self.index}].cors.{key}"

    def add(self, item: str, key: str) -> str:
        value, where = self.keys[key]
        place = self.where(key)
        if key == "allow_origins" and place == self.origins_from:
            if place.startswith("--"):
                return f"add another {place} {item} (serve's flag)"
            return f"add {item} to {place}"
        if where is None:
            listed = [*(str(v) for v in value), item]
            return f"set {place}: [{', '.join(listed)}]"
        text = f"add {item} to {place}"
        if self.index is not None and where.startswith("defaults."):
            text += f" (or give routes[{self.index}].cors its own {key})"
        return text


# --- output ------------------------------------------------------------------------


def describe_value(key: str, value: Any) -> str:
    if isinstance(value, list):
        items = [
            f"regex {v['regex']}" if isinstance(v, dict) and "regex" in v else str(v) for v in value
        ]
        return "[" + ", ".join(items) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "unset"
    return str(value)


def policy_lines(ex: Explanation) -> list[str]:
    if ex.passthrough:
        return ["policy: passthrough (no CORS processing: the upstream's own headers stand)"]
    values = dict(ex.policy)
    first = ["allow_origins", "allow_methods", "allow_headers"]
    second = ["expose_headers", "allow_credentials", "max_age"]
    for key in ("on_disallowed", "preflight_status", "allow_private_network", "report_only"):
        if values.get(key) != BUILTIN[key]:
            second.append(key)
    return [
        "policy: " + "; ".join(f"{k} {describe_value(k, values[k])}" for k in first),
        "        " + "; ".join(f"{k} {describe_value(k, values[k])}" for k in second),
    ]


def format_text(ex: Explanation) -> str:
    walk = ex.walk
    request, planned = walk.request, walk.plan
    where = ex.route_key
    if not ex.route_path:
        where += ", no route matched"
    elif ex.route_path != ex.route:
        where += f", path {ex.route_path}"
    lines = [f"route: {ex.route} ({where})", *policy_lines(ex)]
    extra = ", credentials: include" if request.credentials else ""
    lines.append(
        f"request: {planned.method} {ex.path} from {request.origin} to {ex.addressed_origin}"
        + extra
    )
    lines += [f"  {n}: {v}" for n, v in planned.headers]
    lines += [f"note: {note}" for note in ex.notes]
    if ex.bad_path:
        lines.append(f"path: the proxy answers 400 Bad Request ({ex.bad_path}), never forwards")
    if not planned.forbidden_method:
        lines += preflight_lines(ex)
    if walk.actual is not None and ex.allowed is not None and not walk.same_origin:
        lines += actual_lines(ex, walk.actual)
    if ex.allowed is None:
        lines.append(f"verdict: cannot tell: {ex.reason}")
    elif ex.allowed:
        lines.append(f"verdict: allowed: {ex.reason}")
        if ex.readable:
            lines.append("JS may read: " + ", ".join(ex.readable))
            if ex.readable_note:
                lines.append(f"  ({ex.readable_note})")
        elif ex.readable_note:
            lines.append(f"JS may read: {ex.readable_note}")
    else:
        lines.append(f"verdict: blocked: {ex.reason}")
        lines += [f"fix: {fix}" for fix in ex.fixes]
    return "\n".join(lines) + "\n"


def preflight_lines(ex: Explanation) -> list[str]:
    step = ex.walk.preflight
    if ex.walk.same_origin:
        return ["preflight: not sent (same-origin request)"]
    if step is None:
        return ["preflight: not sent (a CORS-safelisted method and only CORS-safelisted headers)"]
    lines = ["preflight: sent because " + "; ".join(ex.walk.plan.reasons)]
    lines.append(f"  > OPTIONS {ex.path}")
    lines += [f"  > {n}: {v}" for n, v in step.sent.headers]
    answer = step.response
    if not answer.known:
        return [*lines, "  < (the upstream answers it)"]
    if step.verdict is None:
        return lines
    lines.append(f"  < {answer.status}")
    lines += [f"  < {n}: {v}" for n, v in answer.headers]
    if answer.why:
        lines.append(f"  < (body) CORS preflight rejected: {answer.why}")
    if step.verdict.ok:
        as_sent, chromium, firefox = step.max_age or (0, 0, 0)
        lines.append(
            f"  browser: preflight passes (cached {as_sent} s: Chromium {chromium} s, "
            f"Firefox {firefox} s)"
        )
    else:
        why = step.verdict.reason.removeprefix("preflight: ")
        lines.append(f"  browser: preflight fails: {why}")
    return lines


def actual_lines(ex: Explanation, step: browser.Step[ProxyAnswer]) -> list[str]:
    answer, method = step.response, step.sent.method
    if answer.forwarded:
        head = f"actual: {method} {ex.path}: forwarded; the proxy sets on the response:"
        if answer.why:
            head = (
                f"actual: {method} {ex.path}: not allowed ({answer.why}) but "
                "forwarded (on_disallowed: forward), with no CORS headers:"
            )
    else:
        head = f"actual: {method} {ex.path}: the proxy answers {answer.status}:"
    lines = [head]
    lines += [f"  < {n}: {v}" for n, v in answer.headers]
    if answer.status == 403 and answer.why:
        lines.append(f"  < (body) CORS request rejected: {answer.why}")
    if answer.expose_upstream:
        lines.append(f"  < {h.AC_EXPOSE_HEADERS}: (the upstream response's header names)")
    return lines


def as_dict(ex: Explanation) -> dict[str, Any]:
    """The JSON object: the walk's two steps, flattened as ``preflight_*`` and ``actual_*``
    keys (the --json shape docs/troubleshooting.md promises)."""
    walk = ex.walk
    request, planned = walk.request, walk.plan
    pre, actual = walk.preflight, walk.actual
    pre_answer = pre.response if pre is not None else None
    answer = actual.response if actual is not None else None
    return {
        "allowed": ex.allowed,
        "reason": ex.reason,
        "route": ex.route,
        "route_key": ex.route_key,
        "route_path": ex.route_path,
        "policy": dict(ex.policy),
        "passthrough": ex.passthrough,
        "report_only": ex.report_only,
        "origin": request.origin,
        "method": planned.method,
        "path": ex.path,
        "credentials": request.credentials,
        "request_headers": pairs(planned.headers),
        "dropped_headers": list(planned.dropped),
        "addressed_origin": ex.addressed_origin,
        "same_origin": walk.same_origin,
        "bad_path": ex.bad_path,
        "preflight_sent": pre is not None,
        "preflight_reasons": list(planned.reasons) if pre is not None else [],
        "preflight_request": pairs(pre.sent.headers) if pre is not None else [],
        "preflight_status": pre_answer.status if pre_answer is not None else None,
        "preflight_headers": pairs(pre_answer.headers) if pre_answer is not None else [],
        "preflight_proxy_reason": pre_answer.why if pre_answer is not None else "",
        "preflight_ok": pre.verdict.ok if pre is not None and pre.verdict else None,
        "preflight_reason": pre.verdict.reason if pre is not None and pre.verdict else "",
        "preflight_max_age": list(pre.max_age) if pre is not None and pre.max_age else None,
        "actual_sent": actual is not None,
        "actual_forwarded": answer.forwarded if answer is not None else False,
        "actual_status": answer.status if answer is not None else None,
        "actual_headers": pairs(answer.headers) if answer is not None else [],
        "actual_proxy_reason": answer.why if answer is not None else "",
        "expose_upstream": answer.expose_upstream if answer is not None else False,
        "readable": list(ex.readable),
        "readable_note": ex.readable_note,
        "fixes": list(ex.fixes),
        "notes": list(ex.notes),
        "exit_code": ex.exit_code,
    }


def pairs(headers: Headers) -> list[list[str]]:
    return [[n, v] for n, v in headers]


def to_json(ex: Explanation) -> str:
    return json.dumps(as_dict(ex), indent=2)
