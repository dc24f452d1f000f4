"""The decision engine: the facts of one request in, a decision and its headers out.

Pure code, the heart of the proxy, readable next to the Fetch Standard's CORS protocol:
``headers`` (names and safelists), ``origins`` and ``paths`` (matchers compiled once),
``policy`` (the frozen, precompiled objects a config becomes), ``defaults`` (the built-in
policy), ``cors`` (``decide``: preflight or actual request, allowed or not, which headers),
``browser`` (what a browser does with the answers) and ``explain`` (the engine's decision
walked through step by step).

May import: the standard library's pure modules and each other. No I/O, no asyncio, no
third-party package (tests/test_layout.py holds the rule).
"""
