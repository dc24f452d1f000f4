"""The located tree: YAML (or flags) in, ``Node``s that know where each value came from.

The file is composed into nodes rather than loaded with safe_load, so every value keeps the
line it was written on; flags and environment variables enter as nodes whose location names
the flag (``from_plain``). A ``Diagnostic`` names the file, the line and the key path
(``routes[1].cors.allow_origins[0]``); ``ConfigInvalid`` carries all of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Diagnostic:
    where: str  # "FILE:LINE", or the flag / variable the value came from
    path: str  # key path, e.g. routes[1].cors.allow_origins[0]
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.severity}: {self.message}"


class ConfigInvalid(Exception):
    """The config has errors; ``diagnostics`` holds all of them (and the warnings)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        super().__init__("\n".join(str(d) for d in diagnostics))
        self.diagnostics = list(diagnostics)


@dataclass(slots=True)
class Node:
    """A config value with where it came from. Mappings hold Nodes keyed by str."""

    value: Any
    where: str


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2's booleans: only true and false (any of the
    spellings True, TRUE, false, False, FALSE) are booleans; YAML 1.1's yes/no/on/off stay
    the plain strings YAML 1.2, JSON Schema tools and editors read them as. So
    ``allow_credentials: yes`` is an error with a hint instead of a silent ``true``, and the
    validator and the schema judge the same values."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

# YAML 1.1's other booleans: strings here, and a hint where a boolean is expected.
YAML11_BOOLEANS = frozenset({"yes", "no", "on", "off", "y", "n"})


def load_yaml(text: str) -> Any:
    """Plain data, read the way the validator reads it (for the JSON Schema, say)."""
    return yaml.load(text, Loader=ConfigLoader)


def from_yaml(text: str, filename: str) -> tuple[Node | None, list[Diagnostic]]:
    """Compose YAML into located Nodes, with the problems (duplicate keys) found on the way.

    Raises ConfigInvalid on a syntax error, since nothing after it can be trusted.
    """
    try:
        root = yaml.compose(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        if "alphabetic or numeric character" in problem:
            problem += ' (a bare * starts a YAML alias: write "*" in quotes)'
        raise ConfigInvalid([Diagnostic(f"{filename}:{line}", "yaml", "error", problem)]) from None
    if root is None:
        return None, []
    constructor = ConfigLoader("")
    errors: list[Diagnostic] = []

    def convert(node: yaml.Node, path: str) -> Node:
        where = f"{filename}:{node.start_mark.line + 1}"
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node)
                key_text = str(key)
                if key_text in out:
                    errors.append(
                        Diagnostic(
                            f"{filename}:{key_node.start_mark.line + 1}",
                            join(path, key_text),
                            "error",
                            "duplicate key",
                        )
                    )
                out[key_text] = convert(value_node, join(path, key_text))
            return Node(out, where)
        if isinstance(node, yaml.SequenceNode):
            return Node([convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)], where)
        try:
            return Node(constructor.construct_object(node), where)
        except yaml.YAMLError as exc:
            errors.append(Diagnostic(where, path or "yaml", "error", str(exc).splitlines()[0]))
            return Node(None, where)

    return convert(root, ""), errors


def from_plain(value: Any, where: str) -> Node:
    """Wrap plain Python data (from flags or the environment) as located Nodes."""
    if isinstance(value, dict):
        return Node({k: from_plain(v, where) for k, v in value.items()}, where)
    if isinstance(value, list):
        return Node([from_plain(v, where) for v in value], where)
    return Node(value, where)


def to_plain(node: Node | None) -> Any:
    if node is None:
        return None
    if isinstance(node.value, dict):
        return {k: to_plain(v) for k, v in node.value.items()}
    if isinstance(node.value, list):
        return [to_plain(v) for v in node.value]
    return node.value


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def format_diagnostics(diagnostics: Sequence[Diagnostic]) -> str:
    return "\n".join(str(d) for d in diagnostics)
