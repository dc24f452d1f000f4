"""corsproxy: a CORS-enforcing reverse proxy.

The design in one screen:

* ``config`` reads YAML (keeping line numbers), validates every key and compiles the
  result into frozen objects from ``policy``: a ``RouteTable`` of ``Route``s, each with a
  precompiled CORS ``Policy`` whose header values are joined once at load time.
* ``cors`` is the decision engine: pure functions that take the facts of one request and
  return a ``Decision`` (forward or answer, which headers to add). No I/O, no aiohttp.
* The HTTP/1.1 layer: ``wire`` holds its rules as pure functions (framing, keep-alive,
  hop-by-hop, what a request may be); ``listener`` reads clients and ``upstream`` pooled
  upstream connections, both on httptools (llhttp), each exchange one ``Exchange``;
  ``proxy`` normalises the path (``paths``), asks the engine, then answers or streams the
  request to the upstream, applying the decision's headers before the response head is
  written. The proxy, never a peer, decides every message's framing.
* ``cli`` is the only reader of argv and the environment.

Imports flow one way: cli -> app -> (config, proxy) -> (listener, upstream) -> wire, and
proxy -> cors -> policy -> origins -> headers.
"""

__version__ = "0.1.0"
