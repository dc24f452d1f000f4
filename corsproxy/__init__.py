"""corsproxy: a CORS-enforcing reverse proxy.

The design in one screen (docs/architecture.md says it at more length). Six subpackages,
stacked bottom to top; each may import the standard library, the layers below it and the
third-party package its line names, and nothing imports ``tools``. tests/test_layout.py
derives these rules from the tree and refuses import cycles.

* ``engine``, pure (no I/O, no asyncio, no third-party package): ``headers``, ``origins``
  and ``paths`` (matchers compiled once); ``policy`` (the frozen ``Settings``,
  ``RouteTable``, ``Route`` and precompiled ``Policy`` a config becomes); ``defaults`` (the
  built-in policy); ``cors`` (``decide``: the facts of one request in, a ``Decision`` out);
  ``browser`` (what a browser does with the answers) and ``explain``.
* ``config`` (+ PyYAML): YAML and flags in, validated ``Settings`` out. ``load`` runs
  ``tree`` (the YAML, each value with its line), ``overrides`` (flags, environment) and
  ``validate`` (every key checked through the tables of ``keys``); ``addresses``,
  ``upstream_tls``; ``schema``, ``view`` and ``suggest`` read the same tables and settings.
* ``observe`` (+ prometheus-client): ``metrics``, ``accesslog``, ``live`` (the admin page's
  recent decisions), ``traffic`` (the last hour's CORS requests, counted for the page's
  suggested rules), ``snapshots`` (a worker's files for the supervisor's page). Below
  ``http``, because forwarding records as it goes.
* ``http`` (+ httptools): ``wire`` (HTTP/1.1 rules as pure functions), ``listener``
  (clients), ``upstream`` (pooled upstream connections), ``proxy``, ``tunnel`` and
  ``frames`` (WebSocket sessions).
* ``runtime`` (+ uvloop): ``app`` (listeners, signals, shutdown), ``workers``, ``reload``,
  ``admin``.
* ``tools`` (+ aiohttp): ``cli``, ``probe``, ``echo``.

A request: ``http.listener.ClientConnection`` parses it (llhttp) into an ``Exchange`` and
refuses what HTTP/1.1 does not allow (``http.wire``) -> ``http.proxy.Proxy.handle``
normalises the path (``engine.paths``), picks the ``Route`` and asks ``engine.cors.decide``
-> the proxy answers itself (a preflight, a refusal, an error) or ``Proxy.forward`` streams
the request to the upstream through ``http.upstream.UpstreamPool`` and the answer back,
the decision's headers applied before the response head is written; an allowed WebSocket
upgrade becomes an ``http.tunnel.Tunnel``. When it ends, ``Proxy.finished`` records it in
``observe``: metrics, the access-log line, a refusal in ``live``, a CORS request counted in
``traffic``. The proxy, never a peer, decides every message's framing.

Entry points: the ``corsproxy`` script and ``python -m corsproxy`` run ``tools.cli.main``,
the only reader of argv and the environment; ``serve`` reads the config through
``runtime.reload.ConfigSource`` (``config.load`` underneath) and starts ``runtime.app``
(``runtime.workers`` supervises several processes). ``python -m corsproxy.echo`` is the
demo's upstream (``tools.echo``). This package root holds only ``__version__``.
"""

__version__ = "0.1.0"
