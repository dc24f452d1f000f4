"""The configuration: YAML in, validated and compiled ``Settings`` out.

``load`` holds the entry points (``load_settings``, ``parse_settings``,
``settings_from_flags``) and runs the steps the other modules each do once:

* ``tree`` composes YAML into ``Node``s that keep each value's line, and holds the
  ``Diagnostic`` every problem is reported as (``ConfigInvalid`` carries them all);
* ``overrides`` writes command-line flags and environment variables into that tree;
* ``keys`` is the table of every key (its kind, default and description), the single
  source of the validator, the JSON Schema and the tables of docs/configuration.md;
* ``validate`` walks the tree through those tables, records every error and warning, and
  compiles the result into the engine's frozen objects;
* ``addresses`` reads ``host:port`` and upstream URLs; ``upstream_tls`` builds TLS
  contexts for https upstreams at load time.

Beside them: ``schema`` turns the key tables into the JSON Schema (``corsproxy schema``);
``view`` shows the settings in force as ``/config`` does; ``suggest`` turns observed
traffic into the tightest rules that serve it.

Within the package the imports run one way, with no cycle: load -> overrides -> tree;
load -> validate -> (keys, tree, addresses, upstream_tls); keys -> addresses. May import:
the standard library, PyYAML and ``engine``.
"""
