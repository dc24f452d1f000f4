"""Hot reload (docs/operations.md): read the file again on SIGHUP or when it changes on disk.

A valid file replaces the rules atomically: the handler reads ``Proxy.settings`` once per
request, so requests in flight finish under the rules they started with. An invalid file is
refused with the messages ``check`` prints, and the old rules stay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from corsproxy.config.addresses import split_host_port
from corsproxy.config.load import load_settings, settings_from_flags
from corsproxy.config.overrides import Overrides
from corsproxy.config.tree import ConfigInvalid, Diagnostic
from corsproxy.config.upstream_tls import tls_changes
from corsproxy.config.view import config_view
from corsproxy.engine.policy import Settings
from corsproxy.observe.metrics import ReloadMetrics

log = logging.getLogger("corsproxy")

POLL_SECONDS = 1.0  # one stat() a second: cheap, and fine for editors and ConfigMap swaps
SETTLE_SECONDS = 0.2  # a file still being written is read once it stops changing
# Listener settings are bound at start; a reload keeps the running ones and says so.
# Each field with the config key it comes from.
EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
RESTART_FIELDS = {
    "listen_host": "listen",
    "listen_port": "listen",
    "admin": "admin",
    "workers": "workers",
    "tls": "tls",
}


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the settings come from, so they can be read again: a file, or flags alone."""

    path: str | None
    overrides: Overrides = dataclasses.field(default_factory=Overrides)
    admin: tuple[str, str] | None = None  # (HOST:PORT, the flag or variable that gave it)

    def load(self) -> tuple[Settings, list[Diagnostic]]:
        """Raises ConfigInvalid."""
        admin = self.admin_address()
        if self.path is None:
            settings, warnings = settings_from_flags(self.overrides)
        else:
            settings, warnings = load_settings(self.path, self.overrides)
        if admin is not None:
            assert self.admin is not None
            effective = {**settings.effective, "admin": self.admin[0]}
            settings = dataclasses.replace(settings, admin=admin, effective=effective)
        return settings, warnings

    def admin_address(self) -> tuple[str, int] | None:
        """``--admin`` / ``$CORSPROXY_ADMIN``, which replaces the file's ``admin``."""
        if self.admin is None:
            return None
        text, where = self.admin
        host, port = split_host_port(text)
        if host is None or port is None or not 0 <= port <= 65535:
            message = f"expected host:port such as 127.0.0.1:9901, got {text!r}"
            raise ConfigInvalid([Diagnostic(where, "admin", "error", message)])
        return host, port

    def describe(self) -> str:
        return f"config {self.path}" if self.path is not None else "no config file"

    def digest(self) -> str | None:
        if self.path is None:
            return None
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None

    def stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)


def keep_listeners(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """The new rules and timeouts with the running listener settings, and the config keys
    whose new values wait for a restart. ``effective`` (what /config shows) keeps the
    running values of those keys too."""
    kept = list(
        dict.fromkeys(k for f, k in RESTART_FIELDS.items() if getattr(old, f) != getattr(new, f))
    )
    effective = dict(new.effective)
    for key in kept:
        if key in old.effective:
            effective[key] = old.effective[key]
        else:
            effective.pop(key, None)
    running = {f: getattr(old, f) for f in RESTART_FIELDS}
    return dataclasses.replace(new, effective=effective, **running), kept


RELOADS_KEPT = 20  # reloads the admin page lists
NAMES_SHOWN = 5  # a reload that touches many routes names the first few


def names(items: list[str]) -> str:
    more = len(items) - NAMES_SHOWN
    shown = ", ".join(items[:NAMES_SHOWN])
    return f"{shown} and {more} more" if more > 0 else shown


def changes(old: Settings, new: Settings) -> list[str]:
    """What a reload changes, in words: routes and origins added and removed, routes whose
    policy or upstream changed, default CORS keys, the default upstream, each timeout, the
    other keys a reload applies. Empty when nothing that applies now changed (the keys
    that take a restart are reported by keep_listeners)."""
    before, after = config_view(old), config_view(new)
    parts: list[str] = []
    old_routes = {r["name"]: r for r in before["routes"]}
    new_routes = {r["name"]: r for r in after["routes"]}
    old_origins, new_origins = origins_named(old.effective), origins_named(new.effective)
    for label, was, now in (
        ("routes", list(old_routes), list(new_routes)),
        ("origins", sorted(old_origins), sorted(new_origins)),
    ):
        added = [n for n in now if n not in was]
        removed = [n for n in was if n not in now]
        if added:
            parts.append(f"{label} added: {names(added)}")
        if removed:
            parts.append(f"{label} removed: {names(removed)}")
    changed = [n for n, r in new_routes.items() if n in old_routes and old_routes[n] != r]
    if changed:
        parts.append(f"routes changed: {names(changed)}")
    common = [n for n in new_routes if n in old_routes]
    if not changed and common != [n for n in old_routes if n in new_routes]:
        parts.append("routes reordered")
    keys = [
        k
        for k, v in after["defaults"].items()
        if k != "allow_origins" and before["defaults"].get(k) != v
    ]
    if keys:
        parts.append(f"defaults changed: {', '.join(keys)}")
    for key in ("upstream", "preserve_host", "trust_forwarded", "access_log"):
        if before[key] != after[key]:
            parts.append(f"{key}: {shown(before[key])} -> {shown(after[key])}")
    timeouts = [
        f"{k} {shown(before['timeouts'][k])} -> {shown(v)}"
        for k, v in after["timeouts"].items()
        if before["timeouts"][k] != v
    ]
    if timeouts:
        parts.append(f"timeouts: {', '.join(timeouts)}")
    tls = tls_changes(old, new)  # settings or file contents: new connections, pool retired
    if tls:
        parts.append(f"upstream_tls changed for routes: {names(tls)}")
    return parts


def shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def origins_named(effective: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def collect(cors: Any) -> None:
        if isinstance(cors, dict):
            for entry in cors.get("allow_origins") or ():
                found.add(entry if isinstance(entry, str) else f"regex {entry.get('regex')}")

    collect(effective.get("defaults"))
    for route in effective.get("routes") or ():
        if isinstance(route, dict):
            collect(route.get("cors"))
    return found


class Reloader:
    """Reads the config again on request (SIGHUP) and when the file changes on disk."""

    def __init__(
        self,
        source: ConfigSource,
        current: Callable[[], Settings],
        apply: Callable[[Settings], None],
        metrics: ReloadMetrics,
    ) -> None:
        self.source = source
        self.current = current
        self.apply = apply
        self.metrics = metrics
        self.stamp = source.stamp()
        self.digest = source.digest()
        self.history: deque[dict[str, Any]] = deque(maxlen=RELOADS_KEPT)  # the admin page's

    def remember(self, why: str, result: str, lines: Sequence[str]) -> None:
        """For the admin page (observe/live.py): when, why, the result, the changes or the
        errors."""
        self.history.append({"time": time.time(), "why": why, "result": result, "lines": lines})

    def reload(self, why: str) -> str:
        """Read the config again: ``success`` (applied), ``failure`` (refused) or
        ``unchanged`` (the same file, or a file that changes no setting); counted so."""
        self.stamp = self.source.stamp()
        digest = self.source.digest()
        if digest is not None and digest == self.digest:
            return self.unchanged(why, "")
        try:
            if digest == EMPTY_DIGEST:
                # Valid YAML, but on a running proxy almost surely a file caught mid-write.
                where = f"{self.source.path}:1"
                raise ConfigInvalid([Diagnostic(where, "file", "error", "the file is empty")])
            new, warnings = self.source.load()
        except ConfigInvalid as exc:
            self.metrics.counted("failure")
            log.error("reload (%s) refused, the old rules stay:", why)
            for diagnostic in exc.diagnostics:
                log.error("%s", diagnostic)
            self.remember(why, "failure", [str(d) for d in exc.diagnostics])
            return "failure"
        for diagnostic in warnings:
            log.warning("%s", diagnostic)
        old = self.current()
        said = changes(old, new)
        new, kept = keep_listeners(old, new)
        self.digest = digest
        if not said and not kept:
            if self.source.path is None:
                return self.unchanged(why, " (no file: the same flags and variables)")
            return self.unchanged(why, " (the file changed, no setting did)")
        self.apply(new)
        self.metrics.counted("success")
        if said:
            log.info("reload (%s) applied: %s", why, "; ".join(said))
        else:
            only = ", ".join(kept)
            log.info(
                "reload (%s) accepted: only %s changed; nothing to apply until a restart", why, only
            )
        if kept:
            log.warning("reload: %s changed; that takes a restart", ", ".join(kept))
        restart = [f"{', '.join(kept)} changed; that takes a restart"] if kept else []
        self.remember(why, "success", [*said, *restart])
        return "success"

    def unchanged(self, why: str, detail: str) -> str:
        self.metrics.counted("unchanged")
        log.info("reload (%s): config unchanged%s", why, detail)
        self.remember(why, "unchanged", [f"config unchanged{detail}"])
        return "unchanged"

    async def watch(self) -> None:
        """Poll the file's stat; reload once it has changed and settled. A file that
        disappears is reported once; the running settings stay until it is back."""
        path = self.source.path
        if path is None:
            return
        gone = False
        while True:
            await asyncio.sleep(POLL_SECONDS)
            stamp = self.source.stamp()
            if stamp is None:
                if not gone:
                    gone = True
                    log.warning(
                        "config file %s: %s; the running settings stay until it is back",
                        path,
                        missing_reason(path),
                    )
                continue
            if stamp == self.stamp and not gone:
                continue
            for _ in range(20):
                await asyncio.sleep(SETTLE_SECONDS)
                settled = self.source.stamp()
                if settled == stamp:
                    break
                stamp = settled
            if gone:
                gone = False
                log.info("config file %s is back", path)
            self.reload("file changed")


def missing_reason(path: str) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return "it changed while being read"
