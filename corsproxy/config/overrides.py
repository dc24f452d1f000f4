"""Command-line flags and environment variables, on top of a file or instead of one.

``Overrides`` holds what they say; ``apply_overrides`` writes it into the located tree as
nodes whose location names the flag, so it is validated by the same code as the file;
``flags_tree`` is the tree of the no-file mode (docs/configuration.md, "Running without a file").
"""

from __future__ import annotations

from dataclasses import dataclass

from corsproxy.config.tree import Node, from_plain


@dataclass(frozen=True, slots=True)
class Overrides:
    """What ``serve`` flags and ``$CORSPROXY_*`` variables put on top of (or instead of) a file."""

    upstream: tuple[str, str] | None = None  # (value, where it came from)
    allow_origins: tuple[tuple[str, ...], str] | None = None
    allow_credentials: bool = False
    listen: tuple[str, str] | None = None
    every_upstream: str | None = None  # demo: point every route at one upstream
    upstream_ca: tuple[str, str] | None = None  # (absolute path, where): upstream_tls.ca
    upstream_insecure: str | None = None  # where: upstream_tls.verify: false

    @property
    def empty(self) -> bool:
        return self.upstream is None and self.allow_origins is None and self.listen is None


def apply_overrides(root: Node, overrides: Overrides) -> None:
    top = root.value
    if overrides.upstream is not None:
        value, where = overrides.upstream
        top["upstream"] = Node(value, where)
    if overrides.listen is not None:
        value, where = overrides.listen
        top["listen"] = Node(value, where)
    for key, value, where in (
        ("ca", *(overrides.upstream_ca or (None, ""))),
        ("verify", False, overrides.upstream_insecure),
    ):
        if where:  # the top-level upstream_tls, made or added to
            tls = top.get("upstream_tls")
            if tls is None or not isinstance(tls.value, dict):
                tls = top["upstream_tls"] = Node({}, where)
            tls.value[key] = Node(value, where)
    if overrides.every_upstream is not None:
        top["upstream"] = Node(overrides.every_upstream, "demo")
        routes = top.get("routes")
        if routes is not None and isinstance(routes.value, list):
            for route in routes.value:
                if isinstance(route.value, dict) and "upstream" in route.value:
                    route.value["upstream"] = Node(overrides.every_upstream, "demo")
    if overrides.allow_origins is not None:
        origins, where = overrides.allow_origins
        defaults = top.setdefault("defaults", Node({}, where))
        if isinstance(defaults.value, dict):
            defaults.value["allow_origins"] = from_plain(list(origins), where)
    if overrides.allow_credentials:
        defaults = top.setdefault("defaults", Node({}, "--allow-credentials"))
        if isinstance(defaults.value, dict):
            defaults.value["allow_credentials"] = Node(True, "--allow-credentials")


def flags_tree(overrides: Overrides) -> Node:
    """The no-file mode: one permissive catch-all route, the origin is the gate
    (docs/configuration.md, "Running without a file")."""
    where = "--upstream"
    root = from_plain(
        {
            "defaults": {
                "allow_methods": ["*"],
                "allow_headers": ["*"],
                "expose_headers": ["*"],
                "max_age": 600,
                "allow_origins": [],
            }
        },
        where,
    )
    apply_overrides(root, overrides)
    return root
