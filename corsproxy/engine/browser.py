"""The browser's side of CORS, after the Fetch Standard. Pure.

``walk`` is the one place the browser's steps are taken: ``explain`` drives it against the
proxy's own decision engine, ``probe`` against a live server, so the two cannot drift
apart. Section names in the docstrings are the Fetch Standard's
(https://fetch.spec.whatwg.org/). Where Chromium departs from the standard, the model
follows the standard and the departure is noted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from corsproxy.engine import headers as h

HeaderList = Sequence[tuple[str, str]]

SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
# "normalize a method": only these are uppercased; `patch` stays `patch`.
NORMALISED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
SAFELISTED_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
# The forbidden and safelisted name sets live in headers.py (config's warnings use them too).
METHOD_OVERRIDE_HEADERS = frozenset(
    {"x-http-method", "x-http-method-override", "x-method-override"}
)
FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
FORBIDDEN_RESPONSE = frozenset({"set-cookie", "set-cookie2"})
# "CORS-unsafe request-header byte".
_UNSAFE_BYTES = frozenset(chr(b) for b in range(0x20) if b != 0x09) | set('"():<>?@[\\]{}\x7f')
_LANGUAGE_BYTES = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz *,-.;=")
_HTTP_WHITESPACE = " \t\r\n"  # Fetch "HTTP whitespace" (str.strip() would also take \xa0 etc.)
_HTTP_TAB_OR_SPACE = " \t"
SAFELISTED_VALUE_LIMIT = 128  # per header value
SAFELISTED_TOTAL_LIMIT = 1024  # all safelisted values together
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_MAX_AGE = 5  # seconds a preflight is cached without Access-Control-Max-Age
CHROMIUM_MAX_AGE = 7200
FIREFOX_MAX_AGE = 86400


@dataclass(frozen=True, slots=True)
class Request:
    """What the page asked fetch() for."""

    origin: str  # the page's origin, serialised: what the browser sends in Origin
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    credentials: bool = False  # credentials: 'include'


@dataclass(frozen=True, slots=True)
class Plan:
    """What the browser will send for a Request."""

    method: str  # normalised
    headers: tuple[tuple[str, str], ...]  # what is sent, forbidden names dropped
    dropped: tuple[str, ...]  # forbidden header names the page asked for in vain
    unsafe_names: tuple[str, ...]  # "CORS-unsafe request-header names", sorted lowercase
    preflight: bool
    reasons: tuple[str, ...]  # why a preflight is sent
    forbidden_method: bool = False  # fetch() throws before sending anything

    def preflight_headers(self, origin: str) -> tuple[tuple[str, str], ...]:
        """The CORS-preflight request's headers (no credentials, ever), in the Fetch
        Standard's order after Origin: ``Accept: */*``, the method, the unsafe names."""
        out = [(h.ORIGIN, origin), ("Accept", "*/*"), (h.AC_REQUEST_METHOD, self.method)]
        if self.unsafe_names:
            out.append((h.AC_REQUEST_HEADERS, ",".join(self.unsafe_names)))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""  # why not, in the words a developer needs
    rule: str = ""  # the Fetch Standard step it follows


def normalise_method(method: str) -> str:
    upper = method.upper()
    return upper if upper in NORMALISED_METHODS else method


def is_forbidden_request_header(name: str, value: str = "") -> bool:
    """Fetch "forbidden request-header": by name, or X-HTTP-Method(-Override) and
    X-Method-Override when one of their values is a forbidden method."""
    if h.is_forbidden_request_header(name):
        return True
    if name.lower() in METHOD_OVERRIDE_HEADERS:
        return any(m.upper() in FORBIDDEN_METHODS for m in split_values(value))
    return False


def split_values(value: str) -> list[str]:
    """Fetch "get, decode, and split": commas inside double quotes do not split."""
    values, current, quoted, escaped = [], [], False, False
    for c in value:
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            values.append("".join(current).strip(_HTTP_TAB_OR_SPACE))
            current = []
            continue
        current.append(c)
    values.append("".join(current).strip(_HTTP_TAB_OR_SPACE))
    return values


def byte_length(value: str) -> int:
    """A header value's length in bytes: fetch() values are byte strings (isomorphic
    encoding, one byte a character); UTF-8 for characters fetch() would refuse."""
    try:
        return len(value.encode("latin-1"))
    except UnicodeEncodeError:
        return len(value.encode("utf-8"))


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def is_safelisted_request_header(name: str, value: str) -> bool:
    """Fetch "CORS-safelisted request-header": the name *and* the value count."""
    if byte_length(value) > SAFELISTED_VALUE_LIMIT:
        return False
    lower = name.lower()
    if lower == "accept":
        return not any(c in _UNSAFE_BYTES for c in value)
    if lower in ("accept-language", "content-language"):
        return all(c in _LANGUAGE_BYTES for c in value)
    if lower == "content-type":
        if any(c in _UNSAFE_BYTES for c in value):
            return False
        essence = value.split(";", 1)[0].strip(_HTTP_WHITESPACE).lower()
        return essence in SAFELISTED_CONTENT_TYPES
    if lower == "range":
        return is_simple_range(value)
    return False


def is_simple_range(value: str) -> bool:
    """``bytes=N-`` or ``bytes=N-M`` with N <= M: a single, simple range."""
    unit, eq, spec = value.partition("=")
    if unit != "bytes" or not eq:
        return False
    start, dash, end = spec.partition("-")
    if not dash or not _ascii_digits(start) or not (end == "" or _ascii_digits(end)):
        return False
    return end == "" or int(start) <= int(end)


def unsafe_header_names(headers: HeaderList) -> tuple[str, ...]:
    """Fetch "CORS-unsafe request-header names": sorted, lowercase, no duplicates."""
    unsafe: set[str] = set()
    potentially: set[str] = set()
    total = 0
    for name, value in headers:
        if is_safelisted_request_header(name, value):
            potentially.add(name.lower())
            total += byte_length(value)
        else:
            unsafe.add(name.lower())
    if total > SAFELISTED_TOTAL_LIMIT:
        unsafe |= potentially
    return tuple(sorted(unsafe))


def plan(request: Request) -> Plan:
    """Fetch "main fetch" -> "CORS-preflight fetch": whether a preflight goes first."""
    method = normalise_method(request.method)
    if method.upper() in FORBIDDEN_METHODS:
        return Plan(method, (), (), (), False, (), forbidden_method=True)
    # Headers.append normalises each value (strips leading and trailing HTTP whitespace).
    asked = [(n, v.strip(_HTTP_WHITESPACE)) for n, v in request.headers]
    sent = tuple((n, v) for n, v in asked if not is_forbidden_request_header(n, v))
    dropped = tuple(n for n, v in asked if is_forbidden_request_header(n, v))
    unsafe = unsafe_header_names(sent)
    reasons = []
    if method not in SAFELISTED_METHODS:
        reasons.append(f"method {method} is not GET, HEAD or POST")
    for name in unsafe:
        reasons.append(f"header {name} is not CORS-safelisted (name and value)")
    return Plan(method, sent, dropped, unsafe, bool(reasons), tuple(reasons))


def get_combined(headers: HeaderList, name: str) -> str | None:
    """Fetch "get": every value of the name, joined with ", "; None when absent."""
    values = [v for n, v in headers if n.lower() == name.lower()]
    return ", ".join(values) if values else None


def cors_check(request: Request, headers: HeaderList) -> Verdict:
    """Fetch "CORS check": byte-exact Access-Control-Allow-Origin, and with credentials
    a literal ``true`` in Access-Control-Allow-Credentials and no ``*``."""
    rule = "Fetch 'CORS check'"
    allow_origin = get_combined(headers, h.AC_ALLOW_ORIGIN)
    if allow_origin is None:
        return Verdict(False, "no Access-Control-Allow-Origin header in the response", rule)
    if allow_origin == "*" and not request.credentials:
        return Verdict(True, "", rule)
    if allow_origin == "*":
        return Verdict(
            False,
            "Access-Control-Allow-Origin is '*', which a credentialed request never accepts",
            rule,
        )
    if allow_origin != request.origin:
        if "," in allow_origin:
            why = f"Access-Control-Allow-Origin has several values ({allow_origin!r})"
        else:
            why = (
                f"Access-Control-Allow-Origin is {allow_origin!r}, "
                f"not the page's origin {request.origin!r}"
            )
        return Verdict(False, why, rule)
    if not request.credentials:
        return Verdict(True, "", rule)
    allow_credentials = get_combined(headers, h.AC_ALLOW_CREDENTIALS)
    if allow_credentials != "true":
        shown = "absent" if allow_credentials is None else repr(allow_credentials)
        return Verdict(
            False,
            f"credentials were included but Access-Control-Allow-Credentials is {shown}, "
            "not 'true'",
            rule,
        )
    return Verdict(True, "", rule)


def header_list_values(headers: HeaderList, name: str) -> list[str] | None:
    """Fetch "extract header list values"; raises ValueError when a member is no token."""
    value = get_combined(headers, name)
    if value is None:
        return None
    items = [item.strip(_HTTP_TAB_OR_SPACE) for item in value.split(",")]
    items = [item for item in items if item]
    for item in items:
        if not h.is_token(item):
            raise ValueError(f"{name} has a value that is not a token: {item!r}")
    return items


def judge_preflight(request: Request, planned: Plan, status: int, headers: HeaderList) -> Verdict:
    """Fetch "CORS-preflight fetch", steps after the response arrives."""
    check = cors_check(request, headers)
    if not check.ok:
        return Verdict(False, f"preflight: {check.reason}", check.rule)
    if not 200 <= status <= 299:
        return Verdict(
            False,
            f"preflight answered {status}, not an ok status (200-299)",
            "Fetch 'CORS-preflight fetch': response status must be ok",
        )
    try:
        methods = header_list_values(headers, h.AC_ALLOW_METHODS) or []
        names = header_list_values(headers, h.AC_ALLOW_HEADERS) or []
    except ValueError as exc:
        return Verdict(False, f"preflight: {exc}", "Fetch 'extract header list values'")
    rule = "Fetch 'CORS-preflight fetch'"
    star_methods = "*" in methods and not request.credentials
    if (
        planned.method not in methods
        and planned.method not in SAFELISTED_METHODS
        and not star_methods
    ):
        extra = " ('*' does not count with credentials)" if "*" in methods else ""
        return Verdict(
            False,
            f"method {planned.method} is not in Access-Control-Allow-Methods{extra}",
            rule,
        )
    allowed = {n.lower() for n in names}
    sent_names = {n.lower() for n, _ in planned.headers}
    if "authorization" in sent_names and "authorization" not in allowed:
        return Verdict(
            False,
            "header authorization must be listed by name in Access-Control-Allow-Headers "
            "('*' never covers it)",
            rule,
        )
    star_headers = "*" in allowed and not request.credentials
    for name in planned.unsafe_names:
        if name not in allowed and not star_headers:
            extra = " ('*' does not count with credentials)" if "*" in allowed else ""
            return Verdict(
                False, f"header {name} is not in Access-Control-Allow-Headers{extra}", rule
            )
    return Verdict(True, "", rule)


def preflight_max_age(headers: HeaderList) -> tuple[int, int, int]:
    """(as sent or the default, Chromium's cache time, Firefox's cache time) in seconds."""
    raw = get_combined(headers, h.AC_MAX_AGE)
    seconds = int(raw) if raw is not None and _ascii_digits(raw) else DEFAULT_MAX_AGE
    return seconds, min(seconds, CHROMIUM_MAX_AGE), min(seconds, FIREFOX_MAX_AGE)


def readable_headers(request: Request, headers: HeaderList) -> list[str]:
    """Which response header names the page's JavaScript can read (Fetch "CORS-filtered
    response"): the safelisted ones plus Access-Control-Expose-Headers, where ``*`` means
    all of them only without credentials. Set-Cookie never."""
    try:
        exposed = {n.lower() for n in header_list_values(headers, h.AC_EXPOSE_HEADERS) or []}
    except ValueError:
        exposed = set()
    everything = "*" in exposed and not request.credentials
    out: dict[str, str] = {}
    for name, _ in headers:
        lower = name.lower()
        if lower in FORBIDDEN_RESPONSE:
            continue
        if everything or lower in h.SAFELISTED_RESPONSE_HEADERS or lower in exposed:
            out.setdefault(lower, name)
    return list(out.values())


def names_of(headers: Iterable[tuple[str, str]]) -> list[str]:
    return [n for n, _ in headers]


# --- the walk: one fetch(), step by step ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """A request the browser sends: the CORS-preflight request or the actual one."""

    method: str
    headers: tuple[tuple[str, str], ...]
    preflight: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """A response as the browser's checks see it. Exchanges may subclass it to carry
    their own facts (the proxy's decision, a status phrase, a body line)."""

    status: int | None  # None: not known here (whatever the upstream answers)
    headers: tuple[tuple[str, str], ...] = ()
    known: bool = True  # False: its CORS headers are the upstream's, so nothing is judged


R = TypeVar("R", bound=Response)
Stage = Literal["fetch", "preflight", "actual"]  # where a walk was decided


@dataclass(frozen=True, slots=True)
class Step(Generic[R]):
    """One request sent, its response, and the browser's check of it."""

    sent: Sent
    response: R
    verdict: Verdict | None  # None: not judged (the response is not known)
    max_age: tuple[int, int, int] | None = None  # a passed preflight's cache time
    readable: tuple[str, ...] = ()  # an allowed response's header names JS may read


@dataclass(frozen=True, slots=True)
class Walk(Generic[R]):
    """What a browser did for one fetch(): an optional preflight, then the actual request."""

    request: Request
    plan: Plan
    preflight: Step[R] | None
    actual: Step[R] | None
    verdict: Verdict | None  # None: cannot tell (a response was not known)
    stage: Stage  # "fetch": nothing was sent
    same_origin: bool = False
    redirect: str = ""  # the Location a browser would follow next (not followed here)

    @property
    def allowed(self) -> bool | None:
        return None if self.verdict is None else self.verdict.ok

    @property
    def reason(self) -> str:
        return "" if self.verdict is None else self.verdict.reason

    @property
    def steps(self) -> tuple[Step[R], ...]:
        return tuple(s for s in (self.preflight, self.actual) if s is not None)


def walk(request: Request, same_origin: bool = False) -> Generator[Sent, R, Walk[R]]:
    """Fetch "main fetch" for one fetch(): yields each request the browser sends and takes
    the response back, then returns the walk. A generator, so the engine stays pure: the
    caller does the sending (docs/troubleshooting.md: explain and probe)."""
    planned = plan(request)
    if planned.forbidden_method:
        reason = f"fetch() refuses the forbidden method {planned.method}: nothing is sent"
        verdict = Verdict(False, reason, "Fetch 'forbidden method'")
        return Walk(request, planned, None, None, verdict, "fetch", same_origin)
    if same_origin:
        return (yield from _same_origin(request, planned))
    preflight: Step[R] | None = None
    if planned.preflight:
        sent = Sent("OPTIONS", planned.preflight_headers(request.origin), preflight=True)
        response = yield sent
        preflight = _judge_preflight(request, planned, sent, response)
        # An unknown answer (cors: passthrough) is not judged: the walk goes on, verdict None.
        if preflight.verdict is not None and not preflight.verdict.ok:
            failed = _preflight_failure(preflight.verdict, response.status)
            return Walk(request, planned, preflight, None, failed, "preflight")
    sent = Sent(planned.method, ((h.ORIGIN, request.origin), *planned.headers))
    response = yield sent
    if not response.known or (preflight is not None and preflight.verdict is None):
        return Walk(request, planned, preflight, Step(sent, response, None), None, "actual")
    check = cors_check(request, response.headers)
    location = get_combined(response.headers, "Location")
    if response.status in REDIRECT_STATUSES and location is not None:
        # Fetch "HTTP-redirect fetch": the CORS check runs on the redirect itself.
        actual = Step(sent, response, check)
        if not check.ok:
            why = f"{check.reason} (on the {response.status} redirect response)"
            return Walk(
                request, planned, preflight, actual, Verdict(False, why, check.rule), "actual"
            )
        why = (
            f"not verified: the server redirects ({response.status}) to {location}; the "
            "redirect passes the CORS check, but what the page reads is the next response: "
            "check that URL as well"
        )
        verdict = Verdict(False, why, "Fetch 'HTTP-redirect fetch'")
        return Walk(request, planned, preflight, actual, verdict, "actual", redirect=location)
    readable = tuple(readable_headers(request, response.headers)) if check.ok else ()
    actual = Step(sent, response, check, readable=readable)
    return Walk(request, planned, preflight, actual, check, "actual")


def _same_origin(request: Request, planned: Plan) -> Generator[Sent, R, Walk[R]]:
    """Fetch "main fetch": a same-origin request is a basic fetch, no CORS check; Origin
    goes only on methods other than GET and HEAD ("append a request Origin header")."""
    origin = () if planned.method in ("GET", "HEAD") else ((h.ORIGIN, request.origin),)
    sent = Sent(planned.method, (*origin, *planned.headers))
    response = yield sent
    verdict = Verdict(True, "", "Fetch 'main fetch': same origin, no CORS check")
    names = tuple(n for n, _ in response.headers if n.lower() not in FORBIDDEN_RESPONSE)
    actual = Step(sent, response, verdict, readable=names)
    return Walk(request, planned, None, actual, verdict, "actual", same_origin=True)


def _judge_preflight(request: Request, planned: Plan, sent: Sent, response: R) -> Step[R]:
    if not response.known or response.status is None:
        return Step(sent, response, None)
    verdict = judge_preflight(request, planned, response.status, response.headers)
    max_age = preflight_max_age(response.headers) if verdict.ok else None
    return Step(sent, response, verdict, max_age=max_age)


def _preflight_failure(verdict: Verdict, status: int | None) -> Verdict:
    """The walk's verdict on a failed preflight: named as the preflight's, in the words the
    console uses."""
    reason = verdict.reason
    if not reason.startswith("preflight"):
        reason = f"preflight: {reason}"
    if status in REDIRECT_STATUSES:
        reason += " (a browser never follows a redirect on a preflight)"
    return Verdict(False, reason, verdict.rule)


def advance(steps: Generator[Sent, R, Walk[R]], response: R | None) -> Sent | Walk[R]:
    """One step of a walk: give it the last response (None to start it), get the next
    request to send, or the finished Walk."""
    try:
        return next(steps) if response is None else steps.send(response)
    except StopIteration as done:
        return done.value


def drive(steps: Generator[Sent, R, Walk[R]], answer: Callable[[Sent], R]) -> Walk[R]:
    """Run a walk to its end, ``answer`` giving each response (explain: the proxy's
    decision engine)."""
    step = advance(steps, None)
    while isinstance(step, Sent):
        step = advance(steps, answer(step))
    return step


async def drive_async(
    steps: Generator[Sent, R, Walk[R]], answer: Callable[[Sent], Awaitable[R]]
) -> Walk[R]:
    """``drive`` for an exchange that must be awaited (probe: the network)."""
    step = advance(steps, None)
    while isinstance(step, Sent):
        step = advance(steps, await answer(step))
    return step
