"""The built-in CORS policy: what a route gets for every ``cors`` key it does not set.

One table, read by the config's key table (which documents and validates the keys), by
``explain`` (which says when a value is the built-in one) and by ``/config``. The values are
the safe ones: no origin, the CORS-safelisted methods, no extra headers, no credentials.
See docs/configuration.md#cors-keys.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

BUILTIN_CORS: MappingProxyType[str, Any] = MappingProxyType(
    {
        "allow_origins": (),
        "allow_methods": ("GET", "HEAD", "POST"),
        "allow_headers": (),
        "expose_headers": (),
        "allow_credentials": False,
        "max_age": None,
        "allow_private_network": False,
        "on_disallowed": "reject",
        "preflight_status": 204,
        "report_only": False,
    }
)


def builtin_cors_plain() -> dict[str, Any]:
    """The built-in policy as YAML would write it (lists, not tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in BUILTIN_CORS.items()}
