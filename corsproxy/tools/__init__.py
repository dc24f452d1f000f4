"""What people run: ``cli`` (every ``corsproxy`` command; the only reader of argv and the
environment), ``probe`` (a real request through a running proxy, judged as a browser would)
and ``echo`` (the demo's upstream).

May import: everything below, and aiohttp. Nothing imports ``tools``; the entry points
``python -m corsproxy``, the ``corsproxy`` script and ``python -m corsproxy.echo`` lead here.
"""
