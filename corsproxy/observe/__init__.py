"""What the proxy tells its operators: Prometheus ``metrics``, the JSON ``accesslog`` and
``live``, the admin page's bounded buffer of recent decisions.

Sits below ``http`` because forwarding records metrics and log lines as it goes.
May import: the standard library, prometheus-client, ``engine`` and ``config``.
"""
