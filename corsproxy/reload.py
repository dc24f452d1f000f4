"""Hot reload (SPEC 6): read the file again on SIGHUP or when it changes on disk.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corsproxy.config import (
    ConfigInvalid,
    Diagnostic,
    Overrides,
    load_settings,
    settings_from_flags,
)
from corsproxy.metrics import ReloadMetrics
from corsproxy.policy import Settings

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

    def load(self) -> tuple[Settings, list[Diagnostic]]:
        if self.path is None:
            return settings_from_flags(self.overrides)
        return load_settings(self.path, self.overrides)

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


def summarise(old: Settings, new: Settings) -> str:
    """A short account of what a reload changed: routes and origins added and removed."""
    old_routes = [r.name for r in old.table.routes]
    new_routes = [r.name for r in new.table.routes]
    old_origins, new_origins = origins_named(old.effective), origins_named(new.effective)
    parts = []
    for label, before, after in (
        ("routes", old_routes, new_routes),
        ("origins", old_origins, new_origins),
    ):
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        if added:
            parts.append(f"{label} added: {', '.join(added)}")
        if removed:
            parts.append(f"{label} removed: {', '.join(removed)}")
    return "; ".join(parts) or "rules changed, same routes and origins"


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

    def reload(self, why: str) -> bool | None:
        """True: applied; False: refused; None: the file has not changed."""
        self.stamp = self.source.stamp()
        digest = self.source.digest()
        if digest is not None and digest == self.digest:
            log.info("reload (%s): config unchanged", why)
            return None
        try:
            if digest == EMPTY_DIGEST:
                # Valid YAML, but on a running proxy almost surely a file caught mid-write.
                where = f"{self.source.path}:1"
                raise ConfigInvalid([Diagnostic(where, "file", "error", "the file is empty")])
            new, warnings = self.source.load()
        except ConfigInvalid as exc:
            self.metrics.reloads.labels("failure").inc()
            log.error("reload (%s) refused, the old rules stay:", why)
            for diagnostic in exc.diagnostics:
                log.error("%s", diagnostic)
            return False
        for diagnostic in warnings:
            log.warning("%s", diagnostic)
        old = self.current()
        new, kept = keep_listeners(old, new)
        self.apply(new)
        self.digest = digest
        self.metrics.reloads.labels("success").inc()
        log.info("reload (%s) applied: %s", why, summarise(old, new))
        if kept:
            log.warning("reload: %s changed; that takes a restart", ", ".join(kept))
        return True

    async def watch(self) -> None:
        """Poll the file's stat; reload once it has changed and settled."""
        if self.source.path is None:
            return
        while True:
            await asyncio.sleep(POLL_SECONDS)
            stamp = self.source.stamp()
            if stamp == self.stamp or stamp is None:
                continue
            for _ in range(20):
                await asyncio.sleep(SETTLE_SECONDS)
                settled = self.source.stamp()
                if settled == stamp:
                    break
                stamp = settled
            self.reload("file changed")
