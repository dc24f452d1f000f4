"""The configuration: YAML in, validated and compiled ``Settings`` out.

``load`` reads YAML keeping each value's line, applies command-line overrides, validates
every key against the key tables (which also feed ``schema``, the JSON Schema) and compiles
the result into the engine's frozen objects; ``upstream_tls`` builds TLS contexts for https
upstreams at load time; ``view`` shows the settings in force as ``/config`` does;
``suggest`` turns observed traffic into the tightest rules that serve it.

May import: the standard library, PyYAML and ``engine``.
"""
