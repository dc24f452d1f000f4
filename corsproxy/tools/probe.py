"""``corsproxy probe``: the browser model (``browser``) against a live server (README.md).

Sends what a browser would send for a page's fetch(): the CORS-preflight request when the
browser would send one (exactly ``Plan.preflight_headers()``, never credentials), then, if
that passes, the actual request with ``Origin`` and the page's headers; judges each response
with the Fetch Standard's rules and says which response headers JavaScript may read.

No cookie jar, no redirects followed (Fetch never follows one on a preflight; on the actual
request the redirect is reported), methods sent exactly as normalised (``patch`` stays
``patch``, which aiohttp alone would uppercase). Any server will do, not only corsproxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from corsproxy import __version__
from corsproxy.engine import browser
from corsproxy.engine import headers as h

Headers = tuple[tuple[str, str], ...]
Exchange = tuple[str, int, Headers]  # (method sent, response status, response headers)

USER_AGENT = f"corsproxy-probe/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# How corsproxy's refusal bodies start (proxy.answer_parts): the rest names the failed checks.
REFUSAL_PREFIXES = (
    ("CORS preflight rejected: ", "the preflight"),
    ("CORS request rejected: ", "the request"),
    ("WebSocket rejected: ", "the WebSocket handshake"),
)
BODY_LINE_LIMIT = 200  # characters of a body's first line shown
_BODY_READ_LIMIT = 4096  # bytes read to find it
# Response headers the text trace shows (JSON carries them all).
_SHOWN_PREFIXES = ("access-control-",)
_SHOWN = frozenset({"vary", "location"})


class ProbeError(Exception):
    """Nothing to judge: a bad URL, a refused connection, a timeout, a broken answer."""


@dataclass(frozen=True)
class ProbeResult:
    url: str
    request: browser.Request
    plan: browser.Plan
    allowed: bool
    reason: str  # empty when allowed
    preflight_sent: bool
    exchanges: list[Exchange]
    readable: list[str]  # response header names the page's JavaScript can read
    rule: str = ""  # the Fetch Standard step the verdict follows
    stage: str = ""  # where it was decided: "fetch" (nothing sent), "preflight", "actual"
    sent: list[tuple[str, Headers]] = field(default_factory=list)  # (method, request headers)
    reasons: list[str] = field(default_factory=list)  # HTTP reason phrases, per exchange
    notes: list[str] = field(default_factory=list)
    max_age: tuple[int, int, int] | None = None  # a passed preflight's cache time
    bodies: list[str] = field(default_factory=list)  # first line of a non-2xx body, per exchange
    refusal: str = ""  # the checks a corsproxy refusal body names, when it decided the verdict
    refused_step: str = ""  # "preflight" or "actual": whose body named them
    refused_body: str = ""  # that body's first line, as sent
    hints: list[str] = field(default_factory=list)  # where the fix probably is

    @property
    def cause(self) -> str:
        """Why it is blocked, in the server's words when it named the failed check, else in
        the browser's ("" when allowed)."""
        if self.allowed:
            return ""
        if self.refusal:
            what = "the preflight" if self.refused_step == "preflight" else "the request"
            for prefix, named in REFUSAL_PREFIXES:
                if self.refused_body.startswith(prefix):
                    what = named
            return f"the server refused {what}: {self.refusal}"
        return self.reason

    @property
    def verdict(self) -> str:
        return "allowed" if self.allowed else f"blocked: {self.cause}"


def _literal_method_request(method: str) -> type[aiohttp.ClientRequest]:
    """aiohttp uppercases every method; Fetch sends ``patch`` as ``patch``."""

    class LiteralMethodRequest(aiohttp.ClientRequest):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.method == method.upper():
                self.method = method

    return LiteralMethodRequest


def check_url(url: str) -> URL:
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ProbeError(f"bad URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ProbeError(f"bad URL {url!r}: give an absolute http:// or https:// URL")
    return parsed


def _printable(line: str) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in line).strip()
    if len(shown) > BODY_LINE_LIMIT:
        shown = shown[:BODY_LINE_LIMIT] + "..."
    return shown


async def _first_body_line(response: aiohttp.ClientResponse) -> str:
    """The first line of a non-2xx response's body ("" for 2xx, no body, or a compressed
    one): what a developer sees in the Network tab, and where corsproxy names the cause."""
    if 200 <= response.status <= 299 or response.method == "HEAD":
        return ""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return ""
    data = b""
    try:
        while b"\n" not in data and len(data) < _BODY_READ_LIMIT:
            chunk = await response.content.read(_BODY_READ_LIMIT - len(data))
            if not chunk:
                break
            data += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status and headers are what the browser judges; the body is a courtesy
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return _printable(line.decode("utf-8", "replace"))


async def _send(
    session: aiohttp.ClientSession, method: str, url: URL, headers: Headers, timeout: float
) -> tuple[int, str, Headers, str]:
    try:
        async with session.request(
            method, url, headers=list(headers), allow_redirects=False
        ) as response:
            raw = tuple(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in response.raw_headers
            )
            body = await _first_body_line(response)
            return response.status, response.reason or "", raw, body
    except TimeoutError:
        raise ProbeError(f"{method} {url}: no answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        errno = exc.os_error.errno
        why = os.strerror(errno) if errno and errno > 0 else exc.strerror or str(exc.os_error)
        raise ProbeError(f"cannot connect to {exc.host}:{exc.port}: {why}") from None
    except aiohttp.ClientError as exc:
        raise ProbeError(f"{method} {url}: {type(exc).__name__}: {exc}") from None


async def probe(url: str, request: browser.Request, timeout: float = 10.0) -> ProbeResult:
    """Do what a browser at ``request.origin`` does for fetch(url, request) and judge it.

    Raises ProbeError when there is nothing to judge (bad URL, no connection, timeout)."""
    target = check_url(url)
    planned = browser.plan(request)
    notes = []
    if planned.dropped:
        notes.append(
            "fetch() drops forbidden request headers, not sent: " + ", ".join(planned.dropped)
        )
    if planned.forbidden_method:
        return ProbeResult(
            url,
            request,
            planned,
            allowed=False,
            reason=f"fetch() refuses the forbidden method {planned.method}: nothing is sent",
            preflight_sent=False,
            exchanges=[],
            readable=[],
            rule="Fetch 'forbidden method'",
            stage="fetch",
            notes=notes,
        )
    if request.credentials:
        notes.append(
            "credentials: include (probe has no cookies to send; the checks are a "
            "credentialed request's)"
        )
    exchanges: list[Exchange] = []
    sent: list[tuple[str, Headers]] = []
    phrases: list[str] = []
    max_age = None
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout),
        skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent"),
        request_class=_literal_method_request(planned.method),
        auto_decompress=False,
    )

    bodies: list[str] = []

    def result(
        allowed: bool, reason: str, rule: str, stage: str, readable: list[str]
    ) -> ProbeResult:
        refusal = refused_body = ""
        if not allowed and exchanges and stage in ("preflight", "actual"):
            refused_body = bodies[-1]
            refusal = refusal_checks(exchanges[-1][1], refused_body)
            if not refusal:
                refused_body = ""
        return ProbeResult(
            url,
            request,
            planned,
            allowed,
            reason,
            preflight_sent=planned.preflight,
            exchanges=exchanges,
            readable=readable,
            rule=rule,
            stage=stage,
            sent=sent,
            reasons=phrases,
            notes=notes,
            max_age=max_age,
            bodies=bodies,
            refusal=refusal,
            refused_step=stage if refusal else "",
            refused_body=refused_body,
            hints=hints(request, allowed, reason, refusal),
        )

    async with session:
        if planned.preflight:
            preflight = planned.preflight_headers(request.origin)
            status, phrase, got, body = await _send(
                session, "OPTIONS", target, (*preflight, ("User-Agent", USER_AGENT)), timeout
            )
            sent.append(("OPTIONS", preflight))
            exchanges.append(("OPTIONS", status, got))
            phrases.append(phrase)
            bodies.append(body)
            verdict = browser.judge_preflight(request, planned, status, got)
            if not verdict.ok:
                reason = verdict.reason
                if not reason.startswith("preflight"):
                    reason = f"preflight: {reason}"
                if status in REDIRECT_STATUSES:
                    reason += " (a browser never follows a redirect on a preflight)"
                return result(False, reason, verdict.rule, "preflight", [])
            max_age = browser.preflight_max_age(got)
        actual = ((h.ORIGIN, request.origin), *planned.headers)
        status, phrase, got, body = await _send(
            session, planned.method, target, (*actual, ("User-Agent", USER_AGENT)), timeout
        )
    sent.append((planned.method, actual))
    exchanges.append((planned.method, status, got))
    phrases.append(phrase)
    bodies.append(body)
    check = browser.cors_check(request, got)
    location = browser.get_combined(got, "Location")
    if status in REDIRECT_STATUSES and location is not None:
        if not check.ok:
            reason = f"{check.reason} (on the {status} redirect response)"
            return result(False, reason, check.rule, "actual", [])
        notes.append(
            "a browser would follow the redirect (the request's origin becomes 'null' if "
            "it leads to another origin); probe does not"
        )
        reason = (
            f"not verified: the server redirects ({status}) to {location}; the redirect "
            "passes the CORS check, but what the page reads is the next response: probe "
            "that URL"
        )
        return result(False, reason, "Fetch 'HTTP-redirect fetch'", "actual", [])
    if not check.ok:
        return result(False, check.reason, check.rule, "actual", [])
    return result(True, "", check.rule, "actual", browser.readable_headers(request, got))


def refusal_checks(status: int, body_line: str) -> str:
    """The failed checks a corsproxy refusal names ("header 'x-trace-id' is not allowed"),
    from its status and the first line of its body; "" when it is no such refusal."""
    if 200 <= status <= 299:
        return ""
    for prefix, _ in REFUSAL_PREFIXES:
        if body_line.startswith(prefix):
            return body_line[len(prefix) :].strip()
    return ""


_ORIGIN_REFUSED = re.compile(r"^origin '(?P<origin>[^']*)' is not allowed")
_METHOD_REFUSED = re.compile(r"^method '(?P<method>[^']*)' is not allowed$")
_HEADER_REFUSED = re.compile(r"^header '(?P<header>[^']*)' is not allowed$")


def hints(request: browser.Request, allowed: bool, reason: str, refusal: str) -> list[str]:
    """Where the fix probably is, for the causes a config change on corsproxy's side fixes:
    each check a refusal names, and credentials the response does not allow."""
    if allowed:
        return []
    out: list[str] = []
    for check in (part.strip() for part in refusal.split(";") if part.strip()):
        if match := _ORIGIN_REFUSED.match(check):
            origin = match["origin"]
            shown = '"null"' if origin == "null" else origin
            out.append(
                f"the server's rules do not allow the origin {origin}: add {shown} to the "
                f"route's allow_origins (serve without a file: another --allow-origin "
                f"{origin}, or add it to $CORSPROXY_ALLOW_ORIGINS)"
            )
        elif match := _METHOD_REFUSED.match(check):
            method = match["method"]
            upper = method.upper()
            text = f"add {method} to the route's allow_methods"
            if method != upper:
                text += f" (or call fetch() with '{upper}': browsers send '{method}' as written)"
            out.append(text)
        elif match := _HEADER_REFUSED.match(check):
            out.append(f"add {match['header']} to the route's allow_headers")
    if request.credentials and "credentials were included but" in reason:
        out.append(
            "the response does not allow credentials: with corsproxy, set allow_credentials: "
            "true (serve without a file: add --allow-credentials), or call fetch() without "
            "credentials"
        )
    elif request.credentials and "which a credentialed request never accepts" in reason:
        out.append(
            f"'*' never works with credentials: with corsproxy, list the origins in "
            f"allow_origins and set allow_credentials: true (serve without a file: "
            f"--allow-origin {request.origin} --allow-credentials), or call fetch() without "
            "credentials"
        )
    return out


def _shown(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(_SHOWN_PREFIXES) or lower in _SHOWN


def format_text(result: ProbeResult) -> str:
    """A short trace a person can read: each exchange, the verdict, the readable headers."""
    req, planned = result.request, result.plan
    credentials = "include" if req.credentials else "omit"
    lines = [
        f"probe: {planned.method} {result.url} from a page at {req.origin} "
        f"(credentials: {credentials})"
    ]
    lines += [f"note: {note}" for note in result.notes]
    if planned.preflight:
        lines.append("preflight: needed: " + "; ".join(planned.reasons))
    else:
        if not planned.forbidden_method:
            lines.append("preflight: not needed (safelisted method and request headers)")
    for index, (method, status, got) in enumerate(result.exchanges):
        lines.append(f"> {method} {result.url}")
        if index < len(result.sent):
            lines += [f"> {name}: {value}" for name, value in result.sent[index][1]]
        phrase = result.reasons[index] if index < len(result.reasons) else ""
        lines.append(f"< {status} {phrase}".rstrip())
        shown = [f"< {name}: {value}" for name, value in got if _shown(name)]
        lines += shown or ["< (no Access-Control-* headers)"]
        body = result.bodies[index] if index < len(result.bodies) else ""
        if body:
            lines.append(f"< (body) {body}")
        if method == "OPTIONS" and planned.preflight and result.max_age is not None:
            seconds, chromium, firefox = result.max_age
            lines.append(
                f"preflight: passed (cacheable {seconds} s: Chromium {chromium} s, "
                f"Firefox {firefox} s)"
            )
    if result.refusal:
        lines.append(f"browser: {result.reason} (what the console reports)")
    lines += [f"hint: {hint}" for hint in result.hints]
    lines.append(f"verdict: {result.verdict}")
    if result.allowed:
        lines.append("readable by JavaScript: " + (", ".join(result.readable) or "(none)"))
    return "\n".join(lines)


def as_dict(result: ProbeResult) -> dict[str, Any]:
    """The trace as a JSON-ready object."""
    req, planned = result.request, result.plan
    exchanges = []
    for index, (method, status, got) in enumerate(result.exchanges):
        preflight = method == "OPTIONS" and planned.preflight and index == 0
        body = result.bodies[index] if index < len(result.bodies) else ""
        exchanges.append(
            {
                "step": "preflight" if preflight else "actual",
                "method": method,
                "request_headers": [list(pair) for pair in result.sent[index][1]]
                if index < len(result.sent)
                else [],
                "status": status,
                "response_headers": [list(pair) for pair in got],
                "body_first_line": body or None,
            }
        )
    max_age = None
    if result.max_age is not None:
        seconds, chromium, firefox = result.max_age
        max_age = {"seconds": seconds, "chromium": chromium, "firefox": firefox}
    return {
        "url": result.url,
        "origin": req.origin,
        "method": planned.method,
        "credentials": req.credentials,
        "dropped_headers": list(planned.dropped),
        "preflight": {
            "needed": planned.preflight,
            "reasons": list(planned.reasons),
            "sent": result.preflight_sent,
            "max_age": max_age,
        },
        "exchanges": exchanges,
        "allowed": result.allowed,
        "verdict": "allowed" if result.allowed else "blocked",
        "reason": result.reason,
        "cause": result.cause,
        "refused_by_server": {
            "step": result.refused_step,
            "checks": result.refusal,
            "body_first_line": result.refused_body,
        }
        if result.refusal
        else None,
        "hints": list(result.hints),
        "rule": result.rule,
        "stage": result.stage,
        "readable": list(result.readable),
        "notes": list(result.notes),
    }


def to_json(result: ProbeResult) -> str:
    """The trace as a JSON object (text), for ``--json``."""
    return json.dumps(as_dict(result), indent=2)


def run_probe(url: str, request: browser.Request, timeout: float = 10.0) -> ProbeResult:
    """Synchronous wrapper for the command line."""
    return asyncio.run(probe(url, request, timeout))
