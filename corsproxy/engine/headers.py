"""Header names and the small pure operations on header values the proxy needs.

Every header-name literal of the project lives here, so a typo is a NameError, not a bug.
"""

from __future__ import annotations

from collections.abc import Iterable

ORIGIN = "Origin"
HOST = "Host"
VARY = "Vary"
CONNECTION = "Connection"
UPGRADE = "Upgrade"
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
EXPECT = "Expect"

ACCESS_CONTROL_PREFIX = "access-control-"
AC_REQUEST_METHOD = "Access-Control-Request-Method"
AC_REQUEST_HEADERS = "Access-Control-Request-Headers"
AC_REQUEST_PRIVATE_NETWORK = "Access-Control-Request-Private-Network"
AC_ALLOW_ORIGIN = "Access-Control-Allow-Origin"
AC_ALLOW_CREDENTIALS = "Access-Control-Allow-Credentials"
AC_ALLOW_METHODS = "Access-Control-Allow-Methods"
AC_ALLOW_HEADERS = "Access-Control-Allow-Headers"
AC_ALLOW_PRIVATE_NETWORK = "Access-Control-Allow-Private-Network"
AC_EXPOSE_HEADERS = "Access-Control-Expose-Headers"
AC_MAX_AGE = "Access-Control-Max-Age"

X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_HOST = "X-Forwarded-Host"

SET_COOKIE = "set-cookie"
SEC_WEBSOCKET_PROTOCOL = "Sec-WebSocket-Protocol"
# RFC 9110 7.6.1 plus the legacy names every proxy drops. Lowercase for lookups.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Fetch Standard, "forbidden request-header" (fetch.spec.whatwg.org/#forbidden-request-header):
# names a page can never set (fetch() and XHR drop them silently), so they never appear in
# Access-Control-Request-Headers. The rule on X-HTTP-Method(-Override) and X-Method-Override
# is left out: it forbids some values, not the names.
FORBIDDEN_REQUEST_HEADERS = frozenset(
    {
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "connection",
        "content-length",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "referer",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
    }
)
# Same section: every name starting with these is forbidden too. A tuple, for str.startswith.
FORBIDDEN_REQUEST_PREFIXES = ("proxy-", "sec-")

# Fetch Standard, "CORS-safelisted request-header" (#cors-safelisted-request-header): the only
# names sent without a preflight, and each only for some values: at most 128 bytes, and no
# CORS-unsafe request-header byte (accept), only [0-9A-Za-z *,-.;=] (accept-language,
# content-language), one of three MIME essences (content-type), a single bytes range (range);
# all of them together at most 1024 bytes ("CORS-unsafe request-header names"). No name is
# safelisted whatever its value, so none of these is ever useless in allow_headers.
SAFELISTED_REQUEST_HEADERS = frozenset(
    {"accept", "accept-language", "content-language", "content-type", "range"}
)

# Fetch Standard, "CORS-safelisted response-header name" (#cors-safelisted-response-header-name):
# a page can always read these on a CORS response, so expose_headers never needs them.
SAFELISTED_RESPONSE_HEADERS = frozenset(
    {
        "cache-control",
        "content-language",
        "content-length",
        "content-type",
        "expires",
        "last-modified",
        "pragma",
    }
)

PREFLIGHT_VARY = (ORIGIN, AC_REQUEST_METHOD, AC_REQUEST_HEADERS)
ORIGIN_VARY = (ORIGIN,)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 9110 5.6.1), dropping empty members."""
    return [item.strip() for item in value.split(",") if item.strip()]


def is_token(name: str) -> bool:
    """True for an RFC 9110 token: what method and header names must be."""
    return bool(name) and all(c in _TCHAR for c in name)


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_forbidden_request_header(name: str) -> bool:
    """True when a page can never set ``name`` (Fetch "forbidden request-header", by name)."""
    lower = name.lower()
    return lower in FORBIDDEN_REQUEST_HEADERS or lower.startswith(FORBIDDEN_REQUEST_PREFIXES)


def connection_listed(values: Iterable[str]) -> set[str]:
    """Lowercase names listed in Connection headers: hop-by-hop for this hop only."""
    names: set[str] = set()
    for value in values:
        names.update(item.lower() for item in split_list(value))
    return names


def merge_vary(existing: Iterable[str], add: Iterable[str]) -> str | None:
    """Merge names into Vary without duplicates; ``None`` means leave Vary as it is.

    A ``Vary: *`` already says everything varies (RFC 9110 12.5.5), so it is left alone.
    """
    names: list[str] = []
    seen: set[str] = set()
    for value in existing:
        for name in split_list(value):
            if name == "*":
                return None
            if name.lower() not in seen:
                seen.add(name.lower())
                names.append(name)
    changed = False
    for name in add:
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
            changed = True
    if not changed:
        return None
    return ", ".join(names)
