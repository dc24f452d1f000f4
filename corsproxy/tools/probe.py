"""``corsproxy probe``: the browser's walk (``browser.walk``) against a live server
(README.md, docs/troubleshooting.md).

Sends what a browser would send for a page's fetch(): the CORS-preflight request when the
browser would send one (exactly ``Plan.preflight_headers()``, never credentials), then, if
that passes, the actual request with ``Origin`` and the page's headers. The walk judges each
response and says which response headers JavaScript may read; this module only sends.

No cookie jar, no redirects followed (Fetch never follows one on a preflight; on the actual
request the redirect is reported), methods sent exactly as normalised (``patch`` stays
``patch``, which aiohttp alone would uppercase). Any server will do, not only corsproxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from corsproxy import __version__
from corsproxy.engine import browser

Headers = tuple[tuple[str, str], ...]

USER_AGENT = f"corsproxy-probe/{__version__}"
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


@dataclass(frozen=True, slots=True)
class Reply(browser.Response):
    """A live response: every header as received, and what a person sees of it."""

    phrase: str = ""  # the HTTP reason phrase
    body: str = ""  # the first line of a non-2xx body


@dataclass(frozen=True, slots=True)
class Refusal:
    """A corsproxy refusal body that named the failed checks."""

    step: str  # "preflight" or "actual": whose body it was
    checks: str  # "header 'x-trace-id' is not allowed"
    body: str  # that body's first line, as sent


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The walk against the server at ``url``, and what the server's words add to it."""

    url: str
    walk: browser.Walk[Reply]
    notes: tuple[str, ...] = ()
    refusal: Refusal | None = None
    hints: tuple[str, ...] = ()  # where the fix probably is

    @property
    def request(self) -> browser.Request:
        return self.walk.request

    @property
    def allowed(self) -> bool:
        return self.walk.allowed is True

    @property
    def reason(self) -> str:
        """The browser's reason for blocking ("" when allowed)."""
        return self.walk.reason

    @property
    def cause(self) -> str:
        """Why it is blocked, in the server's words when it named the failed check, else in
        the browser's ("" when allowed)."""
        if self.allowed:
            return ""
        if self.refusal is not None:
            what = "the preflight" if self.refusal.step == "preflight" else "the request"
            for prefix, named in REFUSAL_PREFIXES:
                if self.refusal.body.startswith(prefix):
                    what = named
            return f"the server refused {what}: {self.refusal.checks}"
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
    session: aiohttp.ClientSession, sent: browser.Sent, url: URL, timeout: float
) -> Reply:
    method = sent.method
    headers = [*sent.headers, ("User-Agent", USER_AGENT)]
    try:
        async with session.request(method, url, headers=headers, allow_redirects=False) as got:
            raw = tuple(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in got.raw_headers
            )
            body = await _first_body_line(got)
            return Reply(got.status, raw, phrase=got.reason or "", body=body)
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
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout),
        skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent"),
        request_class=_literal_method_request(browser.normalise_method(request.method)),
        auto_decompress=False,
    )
    async with session:
        walk = await browser.drive_async(
            browser.walk(request), lambda sent: _send(session, sent, target, timeout)
        )
    return judged(url, walk)


def judged(url: str, walk: browser.Walk[Reply]) -> ProbeResult:
    """The walk, with the notes, the server's refusal and the hints that go with it."""
    notes = []
    if walk.plan.dropped:
        notes.append(
            "fetch() drops forbidden request headers, not sent: " + ", ".join(walk.plan.dropped)
        )
    if walk.request.credentials and walk.stage != "fetch":
        notes.append(
            "credentials: include (probe has no cookies to send; the checks are a "
            "credentialed request's)"
        )
    if walk.redirect:
        notes.append(
            "a browser would follow the redirect (the request's origin becomes 'null' if "
            "it leads to another origin); probe does not"
        )
    refusal = None
    if not walk.allowed and walk.steps:
        last = walk.steps[-1]
        checks = refusal_checks(last.response.status, last.response.body)
        if checks:
            refusal = Refusal(walk.stage, checks, last.response.body)
    found = hints(walk.request, bool(walk.allowed), walk.reason, refusal.checks if refusal else "")
    return ProbeResult(url, walk, tuple(notes), refusal, tuple(found))


def refusal_checks(status: int | None, body_line: str) -> str:
    """The failed checks a corsproxy refusal names ("header 'x-trace-id' is not allowed"),
    from its status and the first line of its body; "" when it is no such refusal."""
    if status is None or 200 <= status <= 299:
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
    walk = result.walk
    req, planned = walk.request, walk.plan
    credentials = "include" if req.credentials else "omit"
    lines = [
        f"probe: {planned.method} {result.url} from a page at {req.origin} "
        f"(credentials: {credentials})"
    ]
    lines += [f"note: {note}" for note in result.notes]
    if planned.preflight:
        lines.append("preflight: needed: " + "; ".join(planned.reasons))
    elif not planned.forbidden_method:
        lines.append("preflight: not needed (safelisted method and request headers)")
    for step in walk.steps:
        reply = step.response
        lines.append(f"> {step.sent.method} {result.url}")
        lines += [f"> {name}: {value}" for name, value in step.sent.headers]
        lines.append(f"< {reply.status} {reply.phrase}".rstrip())
        shown = [f"< {name}: {value}" for name, value in reply.headers if _shown(name)]
        lines += shown or ["< (no Access-Control-* headers)"]
        if reply.body:
            lines.append(f"< (body) {reply.body}")
        if step.max_age is not None:
            seconds, chromium, firefox = step.max_age
            lines.append(
                f"preflight: passed (cacheable {seconds} s: Chromium {chromium} s, "
                f"Firefox {firefox} s)"
            )
    if result.refusal is not None:
        lines.append(f"browser: {result.reason} (what the console reports)")
    lines += [f"hint: {hint}" for hint in result.hints]
    lines.append(f"verdict: {result.verdict}")
    if result.allowed:
        lines.append("readable by JavaScript: " + (", ".join(readable(walk)) or "(none)"))
    return "\n".join(lines)


def readable(walk: browser.Walk[Reply]) -> list[str]:
    return list(walk.actual.readable) if walk.allowed and walk.actual is not None else []


def as_dict(result: ProbeResult) -> dict[str, Any]:
    """The trace as a JSON-ready object."""
    walk = result.walk
    req, planned = walk.request, walk.plan
    exchanges = [
        {
            "step": "preflight" if step.sent.preflight else "actual",
            "method": step.sent.method,
            "request_headers": [list(pair) for pair in step.sent.headers],
            "status": step.response.status,
            "response_headers": [list(pair) for pair in step.response.headers],
            "body_first_line": step.response.body or None,
        }
        for step in walk.steps
    ]
    max_age = None
    if walk.preflight is not None and walk.preflight.max_age is not None:
        seconds, chromium, firefox = walk.preflight.max_age
        max_age = {"seconds": seconds, "chromium": chromium, "firefox": firefox}
    refusal = result.refusal
    return {
        "url": result.url,
        "origin": req.origin,
        "method": planned.method,
        "credentials": req.credentials,
        "dropped_headers": list(planned.dropped),
        "preflight": {
            "needed": planned.preflight,
            "reasons": list(planned.reasons),
            "sent": walk.preflight is not None,
            "max_age": max_age,
        },
        "exchanges": exchanges,
        "allowed": result.allowed,
        "verdict": "allowed" if result.allowed else "blocked",
        "reason": result.reason,
        "cause": result.cause,
        "refused_by_server": {
            "step": refusal.step,
            "checks": refusal.checks,
            "body_first_line": refusal.body,
        }
        if refusal is not None
        else None,
        "hints": list(result.hints),
        "rule": walk.verdict.rule if walk.verdict is not None else "",
        "stage": walk.stage,
        "readable": readable(walk),
        "notes": list(result.notes),
    }


def to_json(result: ProbeResult) -> str:
    """The trace as a JSON object (text), for ``--json``."""
    return json.dumps(as_dict(result), indent=2)


def run_probe(url: str, request: browser.Request, timeout: float = 10.0) -> ProbeResult:
    """Synchronous wrapper for the command line."""
    return asyncio.run(probe(url, request, timeout))
