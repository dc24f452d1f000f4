"""YAML -> validated, compiled ``Settings`` (docs/configuration.md): the entry points.

A file (``load_settings``), its text (``parse_settings``) or the flags alone
(``settings_from_flags``) go the same way: ``tree`` composes the located tree, ``overrides``
writes the flags and environment into it, ``validate`` checks it through the key tables and
compiles it, and ``ConfigInvalid`` is raised with every problem when there is an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from corsproxy.config.overrides import Overrides, apply_overrides, flags_tree
from corsproxy.config.tree import ConfigInvalid, Diagnostic, Node, from_yaml
from corsproxy.config.validate import Validator
from corsproxy.engine.policy import Settings

NO_OVERRIDES = Overrides()  # a file alone


def load_settings(
    path: str, overrides: Overrides = NO_OVERRIDES
) -> tuple[Settings, list[Diagnostic]]:
    """Read, validate and compile a config file. Raises ConfigInvalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigInvalid(
            [Diagnostic(path, "file", "error", f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigInvalid([Diagnostic(path, "file", "error", "not UTF-8 text")]) from None
    return parse_settings(text, path, overrides)


def parse_settings(
    text: str, filename: str, overrides: Overrides = NO_OVERRIDES
) -> tuple[Settings, list[Diagnostic]]:
    root, problems = from_yaml(text, filename)
    if root is None:
        root = Node({}, f"{filename}:1")
    if not isinstance(root.value, dict):
        raise ConfigInvalid(
            [Diagnostic(root.where, "yaml", "error", "the top level must be a mapping of keys")]
        )
    apply_overrides(root, overrides)
    base_dir = os.path.dirname(os.path.abspath(filename))
    return compile_settings(root, base_dir, filename, problems)


def settings_from_flags(overrides: Overrides) -> tuple[Settings, list[Diagnostic]]:
    return compile_settings(flags_tree(overrides), os.getcwd(), "<command line>")


def compile_settings(
    root: Node, base_dir: str, source: str, problems: Sequence[Diagnostic] = ()
) -> tuple[Settings, list[Diagnostic]]:
    v = Validator(base_dir)
    v.diagnostics.extend(problems)
    settings = v.settings(root, source)
    errors = [d for d in v.diagnostics if d.severity == "error"]
    if errors or settings is None:
        raise ConfigInvalid(unique(v.diagnostics))
    return settings, unique(v.diagnostics)


def unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Drop repeats (a defaults problem shows once, not once per route) and sort by line."""

    def line(d: Diagnostic) -> int:
        tail = d.where.rpartition(":")[2]
        return int(tail) if tail.isdigit() else 0

    return sorted(dict.fromkeys(diagnostics), key=line)
