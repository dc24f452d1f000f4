"""Wiring a running proxy: ``app`` (listeners, signals, graceful shutdown), ``workers``
(several processes on one port), ``reload`` (new rules without a restart) and ``admin``
(the admin listener: health, metrics, ``/config`` and the live page).

May import: the standard library, uvloop and every layer below (``engine``, ``config``,
``observe``, ``http``).
"""
