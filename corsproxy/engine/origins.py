"""Origins: parsing and normalising configured entries, and matching a request's Origin.

Pure. Configured origins are normalised once at load time (lowercase, default port dropped,
IDN to punycode); a request's ``Origin`` is compared as sent, because browsers always send
the serialised form (Fetch "ASCII serialization of an origin"), and a non-browser sending
anything else gains nothing by being refused.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}
NULL_ORIGIN = "null"
ANY_PORT = -1  # a configured ``:*`` port

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$|^[a-z0-9_]$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


class OriginError(ValueError):
    """A configured origin that cannot be used, with a message naming why."""


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """``scheme://host[:port]`` where the host may be ``*.domain`` and the port ``*``."""

    scheme: str
    host: str  # the domain for a subdomain wildcard, else the exact host
    subdomains: bool
    port: int | None  # None: the default port; ANY_PORT: any

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        if scheme != self.scheme:
            return False
        if self.port != ANY_PORT and port != self.port:
            return False
        if self.subdomains:
            # One or more labels before the domain: never the bare domain, never a
            # look-alike such as ``evilexample.com`` (the dot is part of the suffix).
            return (
                len(host) > len(self.host) + 1
                and host.endswith(self.host)
                and host[-len(self.host) - 1] == "."
            )
        return host == self.host


@dataclass(frozen=True, slots=True)
class ParsedOrigin:
    scheme: str
    host: str
    port: int | None


def split_authority(authority: str) -> tuple[str, str | None] | None:
    """``host[:port]`` -> (host, port text or None). An IPv6 host keeps its brackets.

    None when a bracket is unbalanced or something other than a port follows it. The one
    place the project splits a host from its port: origins, Host headers, listen
    addresses and upstream URLs all come through here.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, tail = authority[: end + 1], authority[end + 1 :]
        if not tail:
            return host, None
        return (host, tail[1:]) if tail.startswith(":") else None
    host, colon, port = authority.partition(":")
    return host, (port if colon else None)


def addressed_origin(scheme: str, host: str) -> str:
    """The origin a request was addressed to: ``scheme://host[:port]`` with the
    host lowercased and the scheme's default port dropped. The proxy and ``explain`` both
    tell same-origin requests by it, so they cannot disagree."""
    host = host.lower()
    default = DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(f":{default}"):
        host = host[: -len(f":{default}")]
    return f"{scheme}://{host}"


def routing_host(host_header: str) -> str:
    """A Host as routes compare it: lowercase, no port, and no trailing dot
    (``api.example.com.`` names the same host and must not dodge a ``host:`` route)."""
    lowered = host_header.lower()
    split = split_authority(lowered)
    host = split[0] if split is not None else lowered
    return host if host.startswith("[") else host.removesuffix(".")


def split_origin(origin: str) -> ParsedOrigin | None:
    """Split a request's serialised origin; ``None`` when it is not one.

    A default port counts as none, so ``https://a.test:443`` equals ``https://a.test``.
    """
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in DEFAULT_PORTS or not rest:
        return None
    if any(c in rest for c in "/?#@\\ "):
        return None
    split = split_authority(rest)
    if split is None:
        return None
    host, port_text = split
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit():
            return None
        port = int(port_text)
    if not host:
        return None
    host = host.lower()
    # Only a real host name may meet a wildcard: "x,y<>.example.com" must not match
    # https://*.example.com and be reflected back.
    if not host.startswith("[") and not all(_LABEL.match(label) for label in host.split(".")):
        return None
    if port == DEFAULT_PORTS[scheme]:
        port = None
    return ParsedOrigin(scheme, host, port)


def _normalise_host(host: str, allow_wildcard: bool) -> tuple[str, bool]:
    """Lowercase and punycode a host; returns (host, is_subdomain_wildcard)."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise OriginError("invalid IPv6 host") from None
        if not host.endswith("]"):
            raise OriginError("invalid IPv6 host")
        return host.lower(), False
    subdomains = False
    if host.startswith("*."):
        if not allow_wildcard:
            raise OriginError("a wildcard is not allowed here")
        subdomains = True
        host = host[2:]
    if "*" in host:
        raise OriginError("'*' may only be the whole leftmost label, as in https://*.example.com")
    if not host:
        raise OriginError("missing host")
    if host.endswith("."):
        raise OriginError("host ends with a dot")
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise OriginError(f"invalid host name: {exc}") from None
    if not _IPV4.match(ascii_host):
        for label in ascii_host.split("."):
            if not _LABEL.match(label):
                raise OriginError(f"invalid host label {label!r}")
    if subdomains and _IPV4.match(ascii_host):
        raise OriginError("a wildcard cannot precede an IP address")
    return ascii_host, subdomains


def parse_origin(text: str) -> OriginPattern:
    """Parse a configured origin (exact or wildcard) into a normalised pattern.

    Raises ``OriginError`` for anything that is not ``scheme://host[:port]``.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise OriginError("not an origin: expected scheme://host[:port]")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise OriginError(f"scheme {scheme!r} is not allowed: use http or https")
    if "@" in rest:
        raise OriginError("an origin has no userinfo (user@)")
    for char, what in (("?", "query"), ("#", "fragment"), ("/", "path or trailing slash")):
        if char in rest:
            raise OriginError(f"an origin has no {what}: remove everything after the host[:port]")
    if not rest:
        raise OriginError("missing host")
    split = split_authority(rest)
    if split is None:
        raise OriginError("invalid host or port")
    host, port_text = split
    port: int | None = None
    if port_text is not None:
        if port_text == "*":
            port = ANY_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
            if port == DEFAULT_PORTS[scheme]:
                port = None
        else:
            raise OriginError(f"invalid port {port_text!r}")
    host, subdomains = _normalise_host(host, allow_wildcard=True)
    return OriginPattern(scheme, host, subdomains, port)


def serialise(pattern: OriginPattern) -> str:
    """The origin a browser would send for an exact pattern."""
    port = "" if pattern.port is None else f":{pattern.port}"
    return f"{pattern.scheme}://{pattern.host}{port}"


def is_exact(pattern: OriginPattern) -> bool:
    return not pattern.subdomains and pattern.port != ANY_PORT


@dataclass(frozen=True, slots=True)
class OriginMatcher:
    """Answers "is this origin allowed?" for one policy.

    Exact origins sit in a frozenset, so the cost does not grow with their number;
    wildcard patterns and regexes are tried only when the set misses.
    """

    exact: frozenset[str] = frozenset()
    patterns: tuple[OriginPattern, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()
    any_origin: bool = False  # "*": every origin, null included

    def matches(self, origin: str) -> bool:
        if self.any_origin or origin in self.exact:
            return True
        if self.patterns and origin != NULL_ORIGIN:
            parsed = split_origin(origin)
            if parsed is not None:
                for pattern in self.patterns:
                    if pattern.matches(parsed.scheme, parsed.host, parsed.port):
                        return True
        return any(regex.fullmatch(origin) for regex in self.regexes)

    @property
    def empty(self) -> bool:
        return not (self.any_origin or self.exact or self.patterns or self.regexes)
