"""One access-log line per request (docs/operations.md): JSON lines or text, on stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

FIELDS = (
    "time",
    "client",
    "method",
    "path",
    "status",
    "duration",
    "route",
    "origin",
    "kind",
    "decision",
    "reason",
    "request_method",
    "request_headers",
    "credentials",
    "upstream_status",
    "bytes",
    "bytes_received",
    "pid",
)


def record(
    *,
    client: str | None,
    method: str,
    path: str,
    status: int,
    duration: float,
    route: str,
    origin: str | None,
    kind: str,
    decision: str,
    reason: str,
    upstream_status: int | None,
    size: int,
    received: int | None = None,
    request_method: str | None = None,
    request_headers: str | None = None,
    credentials: bool | None = None,
) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "client": client,
        "method": method,
        "path": path,
        "status": status,
        "duration": round(duration, 6),
        "route": route,
        "origin": origin,
        "kind": kind,
        "decision": decision,
        "reason": reason,
        # What a policy needs (corsproxy suggest): for a preflight, the method and the
        # header names it asks for; for every CORS request, whether it carried a Cookie or
        # Authorization header (never their values).
        "request_method": request_method,
        "request_headers": request_headers,
        "credentials": credentials,
        "upstream_status": upstream_status,
        "bytes": size,
        "bytes_received": received,  # from the client: WebSocket sessions only
        "pid": os.getpid(),  # which worker answered, when there are several
    }


def format_line(entry: dict[str, Any], style: str) -> str:
    if style == "json":
        return json.dumps(entry, separators=(",", ":"))
    parts = []
    for name in FIELDS:
        value = entry[name]
        text = "-" if value is None or value == "" else str(value)
        if isinstance(value, bool):
            text = "true" if value else "false"
        parts.append(f"{name}={json.dumps(text) if ' ' in text or '=' in text else text}")
    return " ".join(parts)


def write(entry: dict[str, Any], style: str, stream: TextIO | None = None) -> None:
    if style == "off":
        return
    out = stream or sys.stdout
    out.write(format_line(entry, style) + "\n")
    out.flush()
