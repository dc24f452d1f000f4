"""``corsproxy explain``: the browser model (``browser``) against the proxy's own decision
engine (``cors``), with no network. Pure: no sockets, no aiohttp.

It follows one request the way a browser and the proxy would handle it: the path is
normalised and the route matched as the proxy does; ``browser.plan`` says whether a preflight
goes first and what it carries; ``cors.decide`` gives the proxy's answer, turned into the
status and headers the proxy would send; ``browser.judge_preflight`` and ``browser.cors_check``
give the verdict. On a block it names the smallest config change that would allow the request
(or why none should). ``report_only`` routes are judged as if enforced; ``passthrough`` routes
cannot be judged (the upstream decides).
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


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a browser would see for one request through the proxy, and why."""

    allowed: bool | None  # None: cannot tell (a passthrough route: the upstream decides)
    reason: str  # the verdict's reason, in the browser's terms
    route: str  # the matched route's name
    route_key: str  # "routes[1]", or "defaults" for the catch-all
    route_path: str  # its path pattern, "" for the catch-all
    policy: tuple[tuple[str, Any], ...]  # the effective policy, key by key; () for passthrough
    passthrough: bool
    report_only: bool  # judged as if enforced
    origin: str
    method: str  # as the browser sends it (normalised)
    path: str  # as the proxy routes it (normalised), or as given when it is refused
    credentials: bool
    request_headers: Headers  # what the page's request carries, forbidden names dropped
    dropped_headers: tuple[str, ...]  # forbidden names fetch() drops silently
    addressed_origin: str  # scheme://host[:port] of the proxy as addressed
    same_origin: bool
    bad_path: str  # why the proxy answers 400, "" when the path is fine
    preflight_sent: bool
    preflight_reasons: tuple[str, ...]
    preflight_request: Headers
    preflight_status: int | None
    preflight_headers: Headers  # the proxy's answer: CORS headers and Vary
    preflight_proxy_reason: str  # why the proxy refused it
    preflight_ok: bool | None  # the browser's verdict on it; None when not sent
    preflight_reason: str
    preflight_max_age: tuple[int, int, int] | None  # (as sent, Chromium, Firefox) seconds
    actual_sent: bool
    actual_forwarded: bool  # False: the proxy answers itself (actual_status)
    actual_status: int | None  # None: whatever the upstream answers
    actual_headers: Headers  # the CORS headers (and Vary) the proxy puts on the response
    actual_proxy_reason: str
    expose_upstream: bool  # expose_headers ["*"] with credentials: upstream names listed
    readable: tuple[str, ...]  # response header names JS may read (of those known)
    readable_note: str
    fixes: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return 3 if self.allowed is None else 0 if self.allowed else 1


# --- building the request from command-line values ---------------------------------


# --- the explanation ---------------------------------------------------------------


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
    key = "defaults" if index is None else f"routes[{index}]"
    planned = browser.plan(request)
    same_origin = request.origin == addressed
    base: dict[str, Any] = {
        "route": route.name,
        "route_key": key,
        "route_path": route.pattern.text if route.pattern is not None else "",
        "policy": (),
        "passthrough": route.policy is None,
        "report_only": False,
        "origin": request.origin,
        "method": planned.method,
        "path": shown_path,
        "credentials": request.credentials,
        "request_headers": planned.headers,
        "dropped_headers": planned.dropped,
        "addressed_origin": addressed,
        "same_origin": same_origin,
        "bad_path": bad_path,
        "preflight_sent": False,
        "preflight_reasons": (),
        "preflight_request": (),
        "preflight_status": None,
        "preflight_headers": (),
        "preflight_proxy_reason": "",
        "preflight_ok": None,
        "preflight_reason": "",
        "preflight_max_age": None,
        "actual_sent": False,
        "actual_forwarded": False,
        "actual_status": None,
        "actual_headers": (),
        "actual_proxy_reason": "",
        "expose_upstream": False,
        "readable": (),
        "readable_note": "",
        "fixes": (),
        "notes": (),
    }

    def finish(**changes: Any) -> Explanation:
        return Explanation(**{**base, "notes": tuple(notes), **changes})

    if planned.dropped:
        notes.append(
            "fetch() silently drops headers a page may not set: " + ", ".join(planned.dropped)
        )
    if route.policy is not None:
        base["policy"] = tuple((k, v) for k, v, _ in effective_policy(settings, index))
    if planned.forbidden_method:
        notes.append("no config change can allow it: browsers never send this method")
        return finish(
            allowed=False,
            reason=f"fetch() refuses the forbidden method {request.method}: nothing is sent",
        )
    if same_origin:
        return finish(
            allowed=True,
            reason=f"same-origin request ({addressed}): not CORS, the browser checks nothing",
            actual_sent=True,
            actual_forwarded=not bad_path,
            actual_status=400 if bad_path else None,
            readable_note="every response header but Set-Cookie (same-origin)",
        )
    if planned.preflight:
        base["preflight_sent"] = True
        base["preflight_reasons"] = planned.reasons
        base["preflight_request"] = planned.preflight_headers(request.origin)
    if route.policy is None:
        return finish(
            allowed=None,
            reason="cors: passthrough: the proxy adds and removes nothing; the upstream decides "
            "(try corsproxy probe against it)",
            actual_sent=True,
            actual_forwarded=not bad_path,
            actual_status=400 if bad_path else None,
        )
    policy = route.policy
    if policy.report_only and not bad_path:
        base["report_only"] = True
        notes.append(
            "report_only: the proxy really forwards this untouched, preflight included, and "
            "the upstream's own CORS headers decide; judged here as if the rules were enforced"
        )
        policy = dataclasses.replace(policy, report_only=False)
    fixer = Fixer(settings, index, request, planned, policy, origins_from, no_file)

    if planned.preflight:
        facts = RequestFacts(
            "OPTIONS",
            (request.origin,),
            addressed,
            request_method=planned.method,
            request_headers=browser.get_combined(base["preflight_request"], h.AC_REQUEST_HEADERS),
        )
        decision = decide(policy, facts)
        if bad_path:
            status, headers = 400, vary_only(decision)
        else:
            status, headers = answer_of(decision)
        verdict = browser.judge_preflight(request, planned, status, headers)
        base.update(
            preflight_status=status,
            preflight_headers=headers,
            preflight_proxy_reason=decision.reason if decision.verdict is Verdict.REJECTED else "",
            preflight_ok=verdict.ok,
            preflight_reason=verdict.reason,
            preflight_max_age=browser.preflight_max_age(headers) if verdict.ok else None,
        )
        if not verdict.ok:
            return finish(
                allowed=False,
                reason=verdict.reason,
                fixes=(NO_FIX_FOR_PATH,) if bad_path else fixer.fixes(),
            )

    decision = decide(policy, RequestFacts(planned.method, (request.origin,), addressed))
    base["actual_sent"] = True
    base["actual_proxy_reason"] = decision.reason
    if planned.method not in LISTENER_METHODS:
        # Refused by the HTTP parser before any rule is read: a 400 with no CORS headers.
        base.update(actual_status=400, actual_headers=())
        upper = planned.method.upper()
        fix = (
            f"call fetch() with method '{upper}': browsers send '{planned.method}' as written "
            "and the proxy's HTTP parser only takes the registered methods in uppercase"
            if upper in LISTENER_METHODS
            else f"use a registered HTTP method: the proxy's HTTP parser refuses '{planned.method}'"
        )
        return finish(
            allowed=False,
            reason=f"the proxy answers 400: its HTTP parser refuses the method "
            f"'{planned.method}' before any CORS rule is read",
            fixes=(fix,),
        )
    if bad_path:
        base.update(actual_status=400, actual_headers=error_headers(decision))
    elif decision.action is Action.ANSWER:
        status, headers = answer_of(decision)
        base.update(actual_status=status, actual_headers=headers)
    else:
        base.update(
            actual_forwarded=True,
            actual_headers=with_vary(decision.headers, decision.vary),
            expose_upstream=decision.expose_upstream,
        )
    check = browser.cors_check(request, base["actual_headers"])
    if not check.ok:
        return finish(
            allowed=False,
            reason=check.reason,
            fixes=(NO_FIX_FOR_PATH,) if bad_path else fixer.fixes(),
        )
    readable, note = readable_of(request, policy, base["actual_headers"], decision)
    passes = "the response passes the browser's CORS check"
    return finish(
        allowed=True,
        reason=f"the page can read the proxy's 400 answer ({passes})" if bad_path else passes,
        readable=readable,
        readable_note=note,
    )


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
    """The status and CORS headers of an answer the proxy makes itself (``proxy.answer``)."""
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
    request: browser.Request, policy: Policy, headers: Headers, decision: Decision
) -> tuple[tuple[str, ...], str]:
    """Which response header names the page's JS may read, as far as known without the
    upstream's response: the safelisted names plus what the proxy exposes."""
    unknown = "the upstream's own headers are unknown without network"
    if decision.kind is Kind.NONE:
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
    candidates = [*headers, *((n, "") for n in SAFELISTED_RESPONSE_NAMES)]
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
    where = ex.route_key
    if not ex.route_path:
        where += ", no route matched"
    elif ex.route_path != ex.route:
        where += f", path {ex.route_path}"
    lines = [f"route: {ex.route} ({where})", *policy_lines(ex)]
    extra = ", credentials: include" if ex.credentials else ""
    lines.append(f"request: {ex.method} {ex.path} from {ex.origin} to {ex.addressed_origin}{extra}")
    lines += [f"  {n}: {v}" for n, v in ex.request_headers]
    lines += [f"note: {note}" for note in ex.notes]
    if ex.bad_path:
        lines.append(f"path: the proxy answers 400 Bad Request ({ex.bad_path}), never forwards")
    if ex.method.upper() not in browser.FORBIDDEN_METHODS:
        lines += preflight_lines(ex)
    if ex.actual_sent and ex.allowed is not None and not ex.same_origin:
        lines += actual_lines(ex)
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
    if ex.same_origin:
        return ["preflight: not sent (same-origin request)"]
    if not ex.preflight_sent:
        return ["preflight: not sent (a CORS-safelisted method and only CORS-safelisted headers)"]
    lines = ["preflight: sent because " + "; ".join(ex.preflight_reasons)]
    lines.append(f"  > OPTIONS {ex.path}")
    lines += [f"  > {n}: {v}" for n, v in ex.preflight_request]
    if ex.passthrough:
        return [*lines, "  < (the upstream answers it)"]
    if ex.preflight_status is None:
        return lines
    lines.append(f"  < {ex.preflight_status}")
    lines += [f"  < {n}: {v}" for n, v in ex.preflight_headers]
    if ex.preflight_proxy_reason:
        lines.append(f"  < (body) CORS preflight rejected: {ex.preflight_proxy_reason}")
    if ex.preflight_ok:
        as_sent, chromium, firefox = ex.preflight_max_age or (0, 0, 0)
        lines.append(
            f"  browser: preflight passes (cached {as_sent} s: Chromium {chromium} s, "
            f"Firefox {firefox} s)"
        )
    else:
        why = ex.preflight_reason.removeprefix("preflight: ")
        lines.append(f"  browser: preflight fails: {why}")
    return lines


def actual_lines(ex: Explanation) -> list[str]:
    if ex.actual_forwarded:
        head = f"actual: {ex.method} {ex.path}: forwarded; the proxy sets on the response:"
        if ex.actual_proxy_reason:
            head = (
                f"actual: {ex.method} {ex.path}: not allowed ({ex.actual_proxy_reason}) but "
                "forwarded (on_disallowed: forward), with no CORS headers:"
            )
    else:
        head = f"actual: {ex.method} {ex.path}: the proxy answers {ex.actual_status}:"
    lines = [head]
    lines += [f"  < {n}: {v}" for n, v in ex.actual_headers]
    if ex.actual_status == 403 and ex.actual_proxy_reason:
        lines.append(f"  < (body) CORS request rejected: {ex.actual_proxy_reason}")
    if ex.expose_upstream:
        lines.append(f"  < {h.AC_EXPOSE_HEADERS}: (the upstream response's header names)")
    return lines


def to_json(ex: Explanation) -> str:
    data = dataclasses.asdict(ex)
    data["policy"] = dict(ex.policy)
    for key in ("request_headers", "preflight_request", "preflight_headers", "actual_headers"):
        data[key] = [[n, v] for n, v in getattr(ex, key)]
    data["exit_code"] = ex.exit_code
    return json.dumps(data, indent=2)
