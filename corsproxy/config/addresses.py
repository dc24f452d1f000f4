"""The address-valued keys: ``listen`` and ``admin`` (``host:port``) and upstream URLs.

``parse_upstream`` is the one reader of an upstream URL (the ``upstream`` keys and the
``--upstream`` flag); ``keys.UPSTREAM_PATTERN`` says the same in the JSON Schema, and
tests/test_schema.py holds the two together.
"""

from __future__ import annotations

import ipaddress
import re

from corsproxy.engine.origins import split_authority
from corsproxy.engine.policy import Upstream

# Characters parse_upstream refuses in an upstream's path prefix.
NOT_IN_PATH = frozenset(' \\"<>^`{|}\x7f') | frozenset(map(chr, range(32)))


def split_host_port(text: str) -> tuple[str | None, int | None]:
    """A listen address: ``host:port``, an IPv6 host in brackets (returned without them)."""
    split = split_authority(text)
    if split is None or split[1] is None or not split[1].isdigit() or not split[0]:
        return None, None
    host = split[0][1:-1] if split[0].startswith("[") else split[0]
    return (host, int(split[1])) if host else (None, None)


def parse_upstream(text: str) -> tuple[Upstream | None, str]:
    """``http://host:port[/prefix]`` -> Upstream, or (None, why not)."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return None, f"{text!r}: expected an http:// or https:// URL"
    if "?" in rest or "#" in rest:
        return None, f"{text!r}: an upstream URL has no query or fragment"
    authority, slash, prefix = rest.partition("/")
    if "@" in authority:
        return None, f"{text!r}: an upstream URL has no user:password@"
    if not authority:
        return None, f"{text!r}: missing host"
    split = split_authority(authority)
    if split is None:
        return None, f"{text!r}: invalid IPv6 host"
    host, port_text = split
    port = None
    if port_text is not None:
        if not port_text.isdigit():
            return None, f"{text!r}: invalid port"
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        return None, f"{text!r}: invalid port"
    host = host.lower()
    if not valid_upstream_host(host):
        return None, f"{text!r}: invalid host {host!r}"
    if slash and any(c in prefix for c in NOT_IN_PATH):
        return None, f"{text!r}: the path prefix has a space or a control character"
    default = 443 if scheme == "https" else 80
    host_header = host if port in (None, default) else f"{host}:{port}"
    base = f"{scheme}://{host}" + ("" if port is None else f":{port}")
    prefix = ("/" + prefix).rstrip("/") if slash else ""
    return Upstream(base, prefix, host_header), ""


UPSTREAM_HOST = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


def valid_upstream_host(host: str) -> bool:
    """A DNS name (service names with '_' included), an IPv4 or a bracketed IPv6 address."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return host.endswith("]")
    return bool(UPSTREAM_HOST.match(host))
