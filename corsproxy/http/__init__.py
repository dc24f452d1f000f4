"""The HTTP/1.1 layer, where the proxy meets peers it does not trust.

``wire`` holds the protocol's rules as pure functions (framing, keep-alive, hop-by-hop, what a
request may be); ``listener`` reads clients and ``upstream`` drives pooled upstream
connections, both on httptools (llhttp); ``proxy`` asks the engine and answers or streams each
exchange; ``tunnel`` and ``frames`` carry WebSocket sessions. The proxy, never a peer,
decides every message's framing.

May import: the standard library, httptools, ``engine``, ``config`` and ``observe``.
"""
