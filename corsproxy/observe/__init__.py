"""What the proxy tells its operators: Prometheus ``metrics``, the JSON ``accesslog``,
``live`` (the admin page's bounded buffer of recent decisions and upstream faults),
``traffic`` (the last hour's CORS requests counted per minute, for the page's suggested
rules) and ``snapshots`` (how a worker hands ``live`` and ``traffic`` to the supervisor: one
JSON file per process, written atomically by an event-driven writer).

Sits below ``http`` because forwarding records metrics and log lines as it goes.
May import: the standard library, prometheus-client, ``engine`` and ``config``.
"""
