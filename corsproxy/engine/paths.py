"""Request-target normalisation and route path patterns (docs/configuration.md, "Paths"). Pure.

The path is normalised once, routes are matched on the result, and the upstream receives
that same result: the path the rules judged is the path the upstream serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Encoded separators would let "/public%2F..%2Fadmin" mean different paths to the proxy
# and to the upstream; a NUL truncates paths in C-based servers. All are refused.
_FORBIDDEN_ESCAPE = re.compile(r"%(?:2[fF]|5[cC]|00)")


class PathError(ValueError):
    """A request target that must be answered 400 and never forwarded."""


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # normalised, other percent-encodings exactly as sent
    query: str | None  # exactly as sent, without the "?"; None when there was no "?"

    @property
    def path_qs(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


def parse_target(raw: str) -> Target:
    """Normalise a raw request target (origin-form or absolute-form).

    The authority of an absolute-form target is dropped: where the proxy connects is
    decided by the config alone (never an open proxy: docs/configuration.md, "Forwarding").
    """
    if not raw.startswith("/"):
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise PathError("request target must be a path")
        stops = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
        raw = rest[min(stops) :] if stops else ""
        if not raw.startswith("/"):
            raw = "/" + raw
    raw = raw.partition("#")[0]
    raw_path, question, query = raw.partition("?")
    return Target(normalise_path(raw_path), query if question else None)


def normalise_path(raw_path: str) -> str:
    """Decode unreserved escapes, then remove dot-segments (RFC 3986 6.2.2.2, 5.2.4).

    Unlike RFC 3986, ``..`` above the root is an error rather than silently ignored:
    such a path is an attack or a bug, and either way nothing sensible to forward.
    """
    if "\x00" in raw_path or "\\" in raw_path:
        raise PathError("path contains a NUL or a backslash")
    if "%" in raw_path:
        if _FORBIDDEN_ESCAPE.search(raw_path):
            raise PathError("path contains an encoded '/', '\\' or NUL")
        raw_path = _decode_unreserved(raw_path)
    segments = raw_path.split("/")[1:]
    if "//" not in raw_path and not any(seg in _DOTS or seg.startswith(_DOTS) for seg in segments):
        return raw_path
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if ";" in segment and segment.partition(";")[0] in _DOTS:
            # "..;/" is ".." to Tomcat, Jetty and Spring: refuse rather than guess.
            raise PathError("path has a dot-segment with a ';' parameter")
        if segment == ".":
            pass
        elif segment == "..":
            if not out:
                raise PathError("path climbs above the root")
            out.pop()
        elif segment or index == last:
            # Empty segments are merged ("//api" is "/api"), as nginx and most frameworks
            # read them; the trailing one stays, so "/a/" keeps its slash.
            out.append(segment)
            continue
        if index == last:
            out.append("")
    return "/" + "/".join(out)


_DOTS = (".", "..")


def _decode_unreserved(path: str) -> str:
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise PathError("path contains a malformed percent-encoding")
        char = chr(int(part[:2], 16))
        out.append(char + part[2:] if char in _UNRESERVED else "%" + part)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled route pattern: literal segments, ``*`` (one non-empty segment) and a
    trailing ``**`` (zero or more segments)."""

    text: str
    segments: tuple[str, ...]
    tail: bool  # ends with **

    def matches(self, path: str) -> bool:
        return self.matches_parts(path_parts(path))

    def matches_parts(self, parts: list[str]) -> bool:
        fixed = self.segments
        if self.tail:
            if len(parts) < len(fixed):
                return False
        elif len(parts) != len(fixed):
            return False
        for want, got in zip(fixed, parts, strict=False):
            if want == "*":
                if not got:
                    return False
            elif want != got:
                return False
        return True

    def covers(self, other: PathPattern) -> bool:
        """True when every path ``other`` matches is matched by this pattern too."""
        mine, theirs = self.segments, other.segments
        if other.tail and not self.tail:
            return False
        if self.tail:
            if len(theirs) < len(mine):
                return False
        elif len(theirs) != len(mine):
            return False
        return all(m == t or (m == "*" and t != "") for m, t in zip(mine, theirs, strict=False))


_ESCAPE = re.compile(r"%[0-9a-f][0-9A-Fa-f]|%[0-9A-F][a-f]")


def path_parts(path: str) -> list[str]:
    """The segments routes are matched on: escapes uppercased (RFC 3986 6.2.2.1), so
    ``/caf%c3%a9`` matches ``/café/**`` as ``/caf%C3%A9`` does. The upstream still gets
    the escapes as they were sent."""
    if "%" in path:
        path = _ESCAPE.sub(lambda m: m.group(0).upper(), path)
    return path.split("/")[1:]


class PatternError(ValueError):
    pass


def compile_pattern(text: str) -> PathPattern:
    """Compile ``/api/*/items/**``; non-ASCII and reserved characters are percent-encoded
    the way a browser would send them, since matching happens on the encoded path."""
    if not text.startswith("/"):
        raise PatternError("a path pattern starts with '/'")
    if "?" in text or "#" in text:
        raise PatternError("a path pattern has no query or fragment")
    raw = text.split("/")[1:]
    tail = bool(raw) and raw[-1] == "**"
    if tail:
        raw = raw[:-1]
    segments: list[str] = []
    for segment in raw:
        if segment == "**":
            raise PatternError("'**' is allowed only as the last segment")
        if "*" in segment and segment != "*":
            raise PatternError(f"'*' must be a whole segment, not part of {segment!r}")
        if segment in (".", ".."):
            raise PatternError("a path pattern has no dot-segments")
        segments.append(segment if segment == "*" else _encode_segment(segment))
    return PathPattern(text, tuple(segments), tail)


def _encode_segment(segment: str) -> str:
    try:
        decoded = _decode_unreserved(segment) if "%" in segment else segment
    except PathError as exc:
        raise PatternError(str(exc)) from None
    return "".join(_PATH_ENCODE.get(c) or _encode_char(c) for c in decoded)


# The URL Standard's path percent-encode set: what a browser escapes in a path. Every other
# printable ASCII character is sent as is, so a pattern must keep it as is to match.
_PATH_ENCODE = {c: c for c in map(chr, range(0x21, 0x7F)) if c not in '"#<>?`{}'}


def _encode_char(char: str) -> str:
    return quote(char, safe="")
