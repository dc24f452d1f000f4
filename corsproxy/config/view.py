"""The settings in force as the admin ``/config`` endpoint shows them: every key, defaults
included, values as written. Used by the admin page, the reload history's "what changed" and
each worker's snapshot. See docs/operations.md#admin-listener."""

from __future__ import annotations

import dataclasses
from typing import Any

from corsproxy.engine.defaults import builtin_cors_plain
from corsproxy.engine.policy import Settings


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def config_view(settings: Settings) -> dict[str, Any]:
    """Every setting in force, defaults included, as /config shows it: the top-level keys
    (the running ``listen``, ``admin``, ``workers``, ``tls``), every timeout, ``defaults``
    with every CORS key, and each route with its name, upstream and whole CORS policy (its
    own keys over ``defaults``). Values are as written (origins, upstream URLs, TLS paths)."""
    written = settings.effective if isinstance(settings.effective, dict) else {}
    given = written.get("defaults")
    defaults = builtin_cors_plain()
    if isinstance(given, dict):
        defaults.update(given)
    upstream = written.get("upstream")
    entries = written.get("routes") if isinstance(written.get("routes"), list) else []
    compiled = settings.table.routes
    routes = []
    for index, entry in enumerate(entries):
        entry = entry if isinstance(entry, dict) else {}
        name = compiled[index].name if len(compiled) == len(entries) else entry.get("name")
        cors = entry.get("cors")
        routes.append(
            {
                "name": name,
                "path": entry.get("path"),
                "host": entry.get("host"),
                "upstream": entry.get("upstream", upstream),
                "cors": cors
                if cors == "passthrough"
                else {**defaults, **(cors if isinstance(cors, dict) else {})},
            }
        )
    tls = None
    if settings.tls is not None:
        shown = written.get("tls")
        tls = shown if isinstance(shown, dict) else dataclasses.asdict(settings.tls)
    return {
        "listen": host_port(settings.listen_host, settings.listen_port),
        "upstream": upstream,
        "admin": host_port(*settings.admin) if settings.admin is not None else None,
        "workers": settings.workers,
        "tls": tls,
        "timeouts": dataclasses.asdict(settings.timeouts),
        "preserve_host": settings.preserve_host,
        "trust_forwarded": settings.trust_forwarded,
        "access_log": settings.access_log,
        "defaults": defaults,
        "routes": routes,
    }
