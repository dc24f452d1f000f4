"""``corsproxy suggest``: observed requests in, the tightest rules that serve them out. Pure.

Three steps, no I/O, run together by ``suggest_config`` for both callers (the command
line, ``cli.run_suggest``, reads the files and prints; the admin page's ``/suggest.yaml``,
runtime/admin.py, counts the last hour's traffic, observe/traffic.py):

1. ``Observations.add_line`` reads one JSON access-log line and counts it under its key
   (route, origin, kind, method, requested headers, credentials), with the first and last
   time seen. Only the counts are kept, never the lines, and at most ``MAX_KEYS`` keys: a
   log of a million lines (or of a scan sending a million different origins) costs bounded
   memory; lines past the cap are counted as untracked and said so.
2. ``plan`` turns the counts into one ``Plan`` per policy of the config (``defaults`` for
   the catch-all route ``default``, and each ``routes[i]`` not ``cors: passthrough``): the
   origins seen at least ``min_count`` times that are not risky, then the methods, the
   header names and the credentials those origins used, each again at least ``min_count``
   times. Everything else is kept as a comment: entries below the threshold, risky origins
   with the reason, and a ``*.domain`` wildcard where ten or more subdomains were seen.
3. ``render`` writes the plans into the config's text. It edits lines, not a re-dumped
   tree, so every other key and comment of the file stays as written: in each policy
   mapping, the four keys ``allow_origins``, ``allow_methods``, ``allow_headers`` and
   ``allow_credentials`` replace the lines they took (found through the YAML node marks)
   or are added after its last key; a route without ``cors`` gets one. A policy mapping
   written in flow style (``cors: {max_age: 60}``) or through an alias is written out again
   as a block mapping; comments inside it are the only ones lost.

``suggest_config`` then checks the result as ``corsproxy check`` would: what it returns
always loads; otherwise it raises ``NoSuggestion``.

Every route gets its own four keys, so what a route allows no longer depends on
``defaults`` (which then serve the catch-all route only). Other keys (``max_age``,
``expose_headers``, ``report_only``...) are left as they are.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any

import yaml

from corsproxy.config.load import parse_settings
from corsproxy.config.tree import ConfigInvalid, ConfigLoader, Diagnostic
from corsproxy.engine import headers as h
from corsproxy.engine.origins import NULL_ORIGIN, ParsedOrigin, split_origin
from corsproxy.engine.policy import Settings

POLICY_KEYS = ("allow_origins", "allow_methods", "allow_headers", "allow_credentials")
MAX_KEYS = 50_000  # distinct (route, origin, kind, method, headers, credentials) counted
MAX_COMMENTS = 20  # comment lines per key for entries left out (the most seen ones)
WILDCARD_MIN = 10  # subdomains of one domain seen before a wildcard is offered
CORS_KINDS = frozenset({"preflight", "actual", "websocket"})
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# --- 1. counting ---------------------------------------------------------------------

Key = tuple[str, str, str, str, str, bool]  # route, origin, kind, method, headers, credentials


@dataclass(slots=True)
class Observations:
    """Counts per key, with the first and last time seen. ``since``: an access-log time
    (``2026-11-27T09:57:41Z``); older lines are skipped."""

    since: str | None = None
    max_keys: int = MAX_KEYS
    counts: dict[Key, list[Any]] = field(default_factory=dict)  # [count, first, last]
    lines: int = 0  # read
    not_json: int = 0  # not a JSON access-log line (a text-style line, a stray message)
    older: int = 0  # before --since
    not_cors: int = 0  # same-origin, no Origin, passthrough, refused before deciding
    odd_origin: int = 0  # an Origin no browser sends (not a serialised origin)
    untracked: int = 0  # past max_keys

    def add_line(self, line: str) -> None:
        self.lines += 1
        # Fast path: most lines of a busy API are not CORS. The quotes of "kind":"none"
        # cannot occur unescaped inside a JSON string, so this only ever skips such a line.
        if '"kind":"none"' in line:
            self.not_cors += 1
            return
        try:
            entry = json.loads(line)
        except ValueError:
            self.not_json += 1
            return
        if not isinstance(entry, dict):
            self.not_json += 1
            return
        self.add(entry)

    def add(self, entry: dict[str, Any], count: int = 1, until: str = "") -> None:
        """One access-log entry; or ``count`` alike seen from ``entry["time"]`` to ``until``
        (the admin page's per-minute counts, observe/traffic.py)."""
        stamp = entry.get("time")
        if not isinstance(stamp, str) or not _TIME.match(stamp):
            stamp = ""
        last = until if until and _TIME.match(until) else stamp
        if self.since is not None and stamp < self.since:
            self.older += count
            return
        kind, route, origin = entry.get("kind"), entry.get("route"), entry.get("origin")
        if kind not in CORS_KINDS or not isinstance(route, str) or not isinstance(origin, str):
            self.not_cors += count
            return
        method = entry.get("request_method") if kind == "preflight" else entry.get("method")
        if kind == "websocket" or not isinstance(method, str):
            method = ""  # a handshake is checked on its origin only (configuration.md)
        elif method not in _known:
            method = remember(method, method if h.is_token(method) else "")
        else:
            method = _known[method]
        asked = entry.get("request_headers") if kind == "preflight" else ""
        if not isinstance(asked, str):
            asked = ""
        elif asked:
            found_names = _known.get(asked)
            if found_names is None:
                found_names = remember(asked, ",".join(sorted(set(names(asked)))))
            asked = found_names
        key = (route, origin, kind, method, asked, entry.get("credentials") is True)
        found = self.counts.get(key)
        if found is not None:
            found[0] += count
            if stamp and (not found[1] or stamp < found[1]):
                found[1] = stamp
            if last > found[2]:
                found[2] = last
        elif len(self.counts) < self.max_keys:
            key = (intern(route), origin, intern(kind), intern(method), asked, key[5])
            self.counts[key] = [count, stamp, last]
        else:
            self.untracked += count

    @property
    def cors_requests(self) -> int:
        return sum(c[0] for c in self.counts.values()) + self.untracked


_known: dict[str, str] = {}  # method or header list as logged -> as counted (memo)


def remember(raw: str, value: str) -> str:
    if len(_known) >= 4096:
        _known.clear()
    _known[raw] = value
    return value


def names(value: str) -> list[str]:
    """Header names of a preflight's ``request_headers``, lowercase; tokens only."""
    return [n.lower() for n in h.split_list(value) if h.is_token(n)]


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds. Raises ValueError."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30m, 24h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


# --- 2. planning ---------------------------------------------------------------------


@dataclass(slots=True)
class Stat:
    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, count: int, first: str, last: str) -> None:
        self.count += count
        if first and (not self.first or first < self.first):
            self.first = first
        if last > self.last:
            self.last = last

    def describe(self, what: str = "request") -> str:
        plural = what if self.count == 1 else what + "s"
        if not self.first:
            return f"{self.count} {plural}"
        if self.first == self.last:
            return f"{self.count} {plural}, seen {self.first}"
        return f"{self.count} {plural}, first {self.first}, last {self.last}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One value of a key, with how often it was seen and, when not suggested, why."""

    value: str
    stat: Stat
    note: str = ""  # why it is a comment: "" for a suggested entry


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """A policy of the config: ``where`` is ``defaults`` or ``routes[i]``; ``names`` the
    route names the access log uses for it."""

    where: str
    names: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    where: str
    requests: Stat = field(default_factory=Stat)
    origins: list[Entry] = field(default_factory=list)  # suggested
    methods: list[Entry] = field(default_factory=list)
    headers: list[Entry] = field(default_factory=list)
    credentials: Stat | None = None  # suggested allow_credentials: true, from these
    skipped: list[tuple[str, list[Entry]]] = field(default_factory=list)  # (key, comments)
    risky: list[Entry] = field(default_factory=list)
    wildcards: list[Entry] = field(default_factory=list)
    min_count: int = 1

    @property
    def suggested_origins(self) -> list[str]:
        return [e.value for e in self.origins]

    def comments(self, key: str) -> list[Entry]:
        return [e for k, entries in self.skipped if k == key for e in entries]


def plan(obs: Observations, refs: Sequence[PolicyRef], min_count: int = 1) -> list[Plan]:
    """One Plan per policy: the smallest allow_* keys that would have allowed every
    request seen at least ``min_count`` times from an origin that is not risky."""
    by_name: dict[str, list[str]] = {}
    for ref in refs:
        for name in ref.names:
            by_name.setdefault(name, []).append(ref.where)
    keys_of: dict[str, list[tuple[Key, list[Any]]]] = {ref.where: [] for ref in refs}
    for key, value in obs.counts.items():
        for where in by_name.get(key[0], ()):
            keys_of[where].append((key, value))
    return [plan_one(ref.where, keys_of[ref.where], min_count) for ref in refs]


def policy_refs(settings: Settings) -> list[PolicyRef]:
    """The policies of ``settings`` a plan is made for: ``defaults`` (the catch-all route
    ``default``) and each route that is not ``cors: passthrough``."""
    refs = [PolicyRef("defaults", ("default",))]
    refs += [
        PolicyRef(f"routes[{i}]", (route.name,))
        for i, route in enumerate(settings.table.routes)
        if route.policy is not None
    ]
    return refs


def report_only_note(settings: Settings) -> list[str]:
    """The comment that says the suggested rules would still only be reported."""
    every = (*settings.table.routes, settings.table.fallback)
    if any(r.policy is not None and r.policy.report_only for r in every):
        return [
            "# report_only: true is still set: these rules are only reported; remove it to "
            "enforce them"
        ]
    return []


def unknown_routes(obs: Observations, refs: Sequence[PolicyRef]) -> dict[str, int]:
    """Route names of the log that no policy of the config carries (renamed, removed,
    or passthrough routes), with their request counts."""
    known = {name for ref in refs for name in ref.names}
    out: dict[str, int] = {}
    for key, value in obs.counts.items():
        if key[0] not in known:
            out[key[0]] = out.get(key[0], 0) + value[0]
    return out


def plan_one(where: str, keys: list[tuple[Key, list[Any]]], min_count: int) -> Plan:
    out = Plan(where, min_count=min_count)
    origins: dict[str, Stat] = {}
    credentialed: dict[str, Stat] = {}
    odd: dict[str, Stat] = {}
    parsed: dict[str, ParsedOrigin | None] = {}
    for (_, origin, _, _, _, creds), (count, first, last) in keys:
        out.requests.add(count, first, last)
        if origin not in parsed:
            parsed[origin] = split_origin(origin)
        table = origins if browser_origin(origin, parsed[origin]) else odd
        table.setdefault(origin, Stat()).add(count, first, last)
        if creds:
            credentialed.setdefault(origin, Stat()).add(count, first, last)

    risky: dict[str, str] = {}
    for origin in origins:
        reason = risk(origin, parsed[origin])
        if reason:
            risky[origin] = reason
    common = [o for o in origins if o not in risky and origins[o].count >= min_count]
    # credentials from the origins that would be suggested: an http:// one among them
    # would then be allowed with credentials
    creds_seen = Stat()
    for origin in common:
        if origin in credentialed:
            stat = credentialed[origin]
            creds_seen.add(stat.count, stat.first, stat.last)
    with_creds = creds_seen.count >= min_count
    for origin in origins:
        if origin.startswith("http://") and origin not in risky:
            if origin in credentialed:
                risky[origin] = (
                    "http:// origin that sent credentials: anyone on its network path can "
                    "impersonate it and read the credentialed responses; serve it over https"
                )
            elif with_creds:
                risky[origin] = (
                    "http:// origin on a route that allows credentials: anyone on its "
                    "network path can impersonate it; serve it over https"
                )
    suggested = [o for o in common if o not in risky]
    bases = Bases([(s, parsed[s]) for s in suggested])
    for origin in origins:
        if origin in risky or origin == NULL_ORIGIN:
            continue
        base = bases.lookalike(parsed[origin])
        if base is not None:
            risky[origin] = (
                f"differs from {base} only by a suffix: a look-alike domain anyone can "
                "register, not a subdomain"
            )
    suggested = [o for o in suggested if o not in risky]

    out.origins = [Entry(o, origins[o]) for o in sorted(suggested)]
    rare = [
        Entry(o, origins[o], f"below --min-count {min_count}")
        for o in sorted(origins)
        if o not in risky and o not in suggested
    ]
    out.risky = [Entry(o, origins[o], risky[o]) for o in sorted(risky)]
    out.risky += [
        Entry(json.dumps(o), odd[o], "not an origin a browser sends (not serialised)")
        for o in sorted(odd)
    ]
    out.wildcards = wildcards(suggested, origins, parsed)

    chosen = set(suggested)
    methods: dict[str, Stat] = {}
    headers: dict[str, Stat] = {}
    creds = Stat()
    for (_, origin, kind, method, asked, cred), (count, first, last) in keys:
        if origin not in chosen:
            continue
        if method:
            methods.setdefault(method, Stat()).add(count, first, last)
        if kind == "preflight":
            for name in asked.split(",") if asked else ():
                headers.setdefault(name, Stat()).add(count, first, last)
        if cred:
            creds.add(count, first, last)
    out.methods, rare_methods = split(methods, min_count)
    out.headers, rare_headers = split(headers, min_count)
    if creds.count >= min_count:
        out.credentials = creds
    out.skipped = [
        ("allow_origins", rare),
        ("allow_methods", rare_methods),
        ("allow_headers", rare_headers),
    ]
    if 0 < creds.count < min_count:
        out.skipped.append(("allow_credentials", [Entry("true", creds, "below --min-count")]))
    return out


def split(table: dict[str, Stat], min_count: int) -> tuple[list[Entry], list[Entry]]:
    keep = [Entry(k, s) for k, s in sorted(table.items()) if s.count >= min_count]
    rare = [
        Entry(k, s, f"below --min-count {min_count}")
        for k, s in sorted(table.items())
        if s.count < min_count
    ]
    return keep, rare


def browser_origin(origin: str, parsed: ParsedOrigin | None) -> bool:
    """``null``, or an origin exactly as a browser serialises it (``parsed``: split)."""
    if origin == NULL_ORIGIN:
        return True
    if parsed is None:
        return False
    if parsed.host.startswith("["):
        try:
            ipaddress.IPv6Address(parsed.host[1:-1])
        except ValueError:
            return False
    port = "" if parsed.port is None else f":{parsed.port}"
    return origin == f"{parsed.scheme}://{parsed.host}{port}"


def risk(origin: str, parsed: ParsedOrigin | None) -> str:
    """Why an origin must not be allowed without a person deciding, or ""."""
    if origin == NULL_ORIGIN:
        return (
            "null is sent by sandboxed iframes, file: pages and redirected requests: "
            "allowing it allows any of them, whoever wrote them"
        )
    if parsed is None:
        return "not an origin"
    host = parsed.host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return ""
    return (
        "an IP address: no name vouches for it (a developer machine, a test box, a scan); "
        "allow it by name if it is really yours"
    )


class Bases:
    """The suggested origins, indexed to find look-alikes of them fast: a host is one when
    a suggested host of the same scheme is a strict prefix of it."""

    def __init__(self, bases: list[tuple[str, ParsedOrigin | None]]) -> None:
        self.hosts: dict[tuple[str, str], str] = {}
        for origin, p in bases:
            if p is not None:
                self.hosts.setdefault((p.scheme, p.host), origin)
        self.lengths = sorted({len(host) for _, host in self.hosts})

    def lookalike(self, p: ParsedOrigin | None) -> str | None:
        if p is None:
            return None
        for n in self.lengths:
            if n >= len(p.host):
                break
            found = self.hosts.get((p.scheme, p.host[:n]))
            if found is not None:
                return found
        return None


def wildcards(
    seen: Iterable[str], stats: dict[str, Stat], split: dict[str, ParsedOrigin | None]
) -> list[Entry]:
    """``scheme://*.domain[:port]`` where ``WILDCARD_MIN`` or more hosts directly under
    ``domain`` (at least two labels) were seen."""
    groups: dict[tuple[str, str, int | None], list[str]] = {}
    for origin in seen:
        parsed = split[origin]
        if parsed is None or parsed.host.startswith("["):
            continue
        labels = parsed.host.split(".")
        if len(labels) < 3 or all(p.isdigit() for p in labels):
            continue
        groups.setdefault((parsed.scheme, ".".join(labels[1:]), parsed.port), []).append(origin)
    out = []
    for (scheme, domain, port), members in sorted(groups.items(), key=lambda g: g[0][:2]):
        if len(members) < WILDCARD_MIN:
            continue
        total = Stat()
        for origin in members:
            s = stats[origin]
            total.add(s.count, s.first, s.last)
        tail = "" if port is None else f":{port}"
        note = f"{len(members)} subdomains of {domain} seen"
        out.append(Entry(f"{scheme}://*.{domain}{tail}", total, note))
    return out


# --- 3. rendering --------------------------------------------------------------------


def scalar(text: str) -> str:
    """A YAML scalar that reads back as the string ``text``."""
    if text[:1].isalpha() and "://" in text and _PLAIN.match(text):
        return text  # an origin: no implicit type (true, null, 1e3, a date) looks like one
    if _PLAIN.match(text) and yaml.load(text, Loader=ConfigLoader) == text:
        return text
    return json.dumps(text)


def key_lines(p: Plan, key: str, indent: str) -> list[str]:
    """The lines of one allow_* key, its comments included, at ``indent``."""
    item = indent + "  "
    if key == "allow_credentials":
        if p.credentials is not None:
            seen = p.credentials.describe("credentialed request")
            line = f"{indent}allow_credentials: true  # {seen}"
        else:
            line = f"{indent}allow_credentials: false  # no credentialed request seen"
        out = [line]
        out += [
            f"{item}# not suggested: true ({e.stat.describe()}, {e.note})" for e in p.comments(key)
        ]
        return out
    entries = {"allow_origins": p.origins, "allow_methods": p.methods, "allow_headers": p.headers}[
        key
    ]
    out = [f"{indent}{key}:" if entries else f"{indent}{key}: []"]
    out += [f"{item}- {scalar(e.value)}  # {e.stat.describe()}" for e in entries]
    rare, more = most_seen(p.comments(key))
    for e in rare:
        out.append(f"{item}# not suggested ({e.note}): {e.value}  ({e.stat.describe()})")
    if more:
        out.append(f"{item}# not suggested: {more} more below --min-count {p.min_count}")
    if key == "allow_origins":
        risky, more = most_seen(p.risky)
        for e in risky:
            out.append(f"{item}# RISKY, not suggested: {e.value}  ({e.stat.describe()}): {e.note}")
        if more:
            out.append(f"{item}# RISKY, not suggested: {more} more (the least seen ones)")
        for e in p.wildcards:
            out.append(
                f"{item}# alternative to listing them: - {e.value}  ({e.note}, {e.stat.describe()})"
            )
    return out


def most_seen(entries: list[Entry]) -> tuple[list[Entry], int]:
    """At most ``MAX_COMMENTS`` entries, the most seen first (a scan sending thousands of
    origins is one line, not thousands), and how many were left out."""
    if len(entries) <= MAX_COMMENTS:
        return entries, 0
    top = sorted(entries, key=lambda e: -e.stat.count)[:MAX_COMMENTS]
    return top, len(entries) - MAX_COMMENTS


def header_line(p: Plan, indent: str) -> str:
    if not p.requests.count:
        return f"{indent}# corsproxy suggest: no cross-origin request seen: nothing allowed"
    return (
        f"{indent}# corsproxy suggest: {p.requests.describe('cross-origin request')} "
        f"(--min-count {p.min_count})"
    )


@dataclass(frozen=True, slots=True)
class Edit:
    start: int  # first line replaced (0-based)
    end: int  # one past the last line replaced; == start for an insertion
    lines: list[str]


def last_line(node: yaml.Node) -> int:
    """The last line (0-based) a node's own text takes, trailing comments excluded."""
    if isinstance(node, yaml.ScalarNode):
        end = node.end_mark
        return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line
    if node.flow_style:
        return node.end_mark.line
    if not node.value:
        return node.start_mark.line
    last = node.value[-1]
    return last_line(last[1] if isinstance(node, yaml.MappingNode) else last)


def entry_of(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None


def block_mapping(node: yaml.Node, owner: yaml.Node) -> bool:
    """A mapping written here in block style (not flow, not an alias to elsewhere)."""
    return (
        isinstance(node, yaml.MappingNode)
        and not node.flow_style
        and bool(node.value)
        and node.start_mark.line >= owner.start_mark.line
    )


def policy_edits(p: Plan, holder: yaml.MappingNode, key: str | None) -> list[Edit]:
    """Edits writing ``p`` into ``holder`` (the top mapping with key ``defaults``, or a
    route mapping with key ``cors``)."""
    assert key is not None
    found = entry_of(holder, key)
    holder_indent = " " * holder.value[0][0].start_mark.column
    if found is None:  # no defaults / no cors: add the mapping after the holder's last key
        at = last_line(holder) + 1
        inner = holder_indent + "  "
        lines = [f"{holder_indent}{key}:", header_line(p, inner)]
        for name in POLICY_KEYS:
            lines += key_lines(p, name, inner)
        return [Edit(at, at, lines)]
    key_node, mapping = found
    if not block_mapping(mapping, key_node):  # flow style, alias, empty: written out again
        constructor = ConfigLoader("")
        plain = constructor.construct_object(mapping, deep=True) if mapping.value else None
        plain = plain if isinstance(plain, dict) else {}
        inner = holder_indent + "  "
        lines = [f"{holder_indent}{key}:", header_line(p, inner)]
        rest = {k: v for k, v in plain.items() if k not in POLICY_KEYS}
        if rest:
            dumped = yaml.safe_dump(rest, default_flow_style=False, sort_keys=False)
            lines += [inner + line for line in dumped.splitlines()]
        for name in POLICY_KEYS:
            lines += key_lines(p, name, inner)
        end = max(
            key_node.start_mark.line,
            last_line(mapping) if mapping.start_mark.line >= key_node.start_mark.line else 0,
        )
        return [Edit(key_node.start_mark.line, end + 1, lines)]
    inner = " " * mapping.value[0][0].start_mark.column
    edits: list[Edit] = []
    first = True
    missing: list[str] = []
    for name in POLICY_KEYS:
        pair = entry_of(mapping, name)
        if pair is None:
            missing.append(name)
            continue
        k, v = pair
        end = k.start_mark.line
        if v.start_mark.line >= k.start_mark.line:  # not an alias to an earlier node
            end = max(end, last_line(v))
        lines = key_lines(p, name, inner)
        if first:
            lines.insert(0, header_line(p, inner))
            first = False
        edits.append(Edit(k.start_mark.line, end + 1, lines))
    if missing:
        lines = [] if not first else [header_line(p, inner)]
        for name in missing:
            lines += key_lines(p, name, inner)
        at = last_line(mapping) + 1
        edits.append(Edit(at, at, lines))
    return edits


def render(text: str, plans: Sequence[Plan], preamble: Sequence[str] = ()) -> str:
    """The config ``text`` with each plan written into its policy mapping (see module
    docstring), ``preamble`` comment lines at the top. ``text`` must be a valid config."""
    root = yaml.compose(text, Loader=ConfigLoader)
    lines = text.split("\n")
    newline_cr = bool(lines) and lines[0].endswith("\r")
    if root is None or not isinstance(root, yaml.MappingNode) or not root.value:
        raise ValueError("the config is empty: nothing to write the rules into")
    edits: list[Edit] = []
    for p in plans:
        if p.where == "defaults":
            edits += policy_edits(p, root, "defaults")
            continue
        index = int(p.where.removeprefix("routes[").removesuffix("]"))
        routes = entry_of(root, "routes")
        assert routes is not None and isinstance(routes[1], yaml.SequenceNode)
        route = routes[1].value[index]
        if not isinstance(route, yaml.MappingNode) or route.flow_style:
            raise ValueError(f"{p.where} is written in flow style: write it as a block mapping")
        edits += policy_edits(p, route, "cors")
    for edit in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        new = [line + "\r" for line in edit.lines] if newline_cr else edit.lines
        lines[edit.start : edit.end] = new
    head = [line + ("\r" if newline_cr else "") for line in preamble]
    return "\n".join([*head, *lines])


def diff(old: str, new: str, filename: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=filename,
            tofile=f"{filename} (suggested)",
        )
    )


def preamble(obs: Observations, plans: Sequence[Plan], unknown: dict[str, int]) -> list[str]:
    """The comment lines put at the top of the suggested file."""
    out = [
        f"# corsproxy suggest: {obs.lines} log line(s) read, {obs.cors_requests} cross-origin "
        "request(s) counted. Review every RISKY line before enforcing.",
    ]
    if obs.untracked:
        out.append(
            f"# {obs.untracked} request(s) not counted: more than {obs.max_keys} different "
            "(route, origin, method, headers) combinations"
        )
    for name, count in sorted(unknown.items()):
        out.append(
            f"# {count} request(s) of route {json.dumps(name)}, not a route of this file: ignored"
        )
    if obs.not_json:
        out.append(f"# {obs.not_json} line(s) were not JSON access-log lines: ignored")
    if obs.older:
        out.append(f"# {obs.older} line(s) older than --since: ignored")
    risky = sum(len(p.risky) for p in plans)
    if risky:
        out.append(f"# {risky} risky origin(s) left out: see the RISKY comments")
    return out


# --- all three, checked --------------------------------------------------------------


class NoSuggestion(Exception):
    """``suggest_config`` has no suggestion. ``diagnostics`` None: the rules cannot be
    written into the text (the message says why, the file's path first). Otherwise the
    result fails check, for these reasons (a bug; never shown as a suggestion)."""

    def __init__(self, message: str, diagnostics: Sequence[Diagnostic] | None = None) -> None:
        detail = "".join(f"\n{d}" for d in diagnostics or ())
        super().__init__(message + detail)
        self.message = message
        self.diagnostics = None if diagnostics is None else list(diagnostics)


def suggest_config(
    text: str,
    path: str,
    settings: Settings,
    obs: Observations,
    min_count: int = 1,
    heading: Sequence[str] | None = None,
) -> str:
    """The config ``text`` (read from ``path``, holding ``settings``) with the rules ``obs``
    suggests at ``min_count`` written in: ``plan``, the ``preamble`` (its first line
    replaced by ``heading`` when given) and the ``report_only_note`` at the top, ``render``,
    then checked. Raises NoSuggestion."""
    refs = policy_refs(settings)
    plans = plan(obs, refs, min_count)
    head = preamble(obs, plans, unknown_routes(obs, refs))
    if heading is not None:
        head[:1] = heading
    head += report_only_note(settings)
    try:
        out = render(text, plans, head)
    except ValueError as exc:
        raise NoSuggestion(f"{path}: {exc}") from None
    try:
        parse_settings(out, path)
    except ConfigInvalid as exc:
        raise NoSuggestion("the suggestion fails check:", exc.diagnostics) from None
    return out
