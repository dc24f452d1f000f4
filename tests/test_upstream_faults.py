"""Why an upstream failed, told to the operator: the 502/504 a client gets says only what
happened, while stderr names the upstream and the OS error (once a minute per cause) and the
access-log reason carries the short cause."""

from __future__ import annotations

import asyncio
import json
import logging

from procutil import eventually, free_port
from test_http1 import CONFIG, connection, read_response, request


def warnings_about(caplog, url: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and url in r.getMessage()
    ]


async def test_refused_connection_is_explained_once_with_address_and_cause(
    make_proxy, caplog, capsys
):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = await make_proxy(CONFIG, upstream=url)
    caplog.set_level(logging.INFO, "corsproxy")
    capsys.readouterr()
    async with connection(proxy.port) as (reader, writer):
        for path in ("/a", "/b", "/c"):
            writer.write(request("GET", path))
            response = await read_response(reader)
            assert (response.status, response.body) == (502, b"upstream unreachable\n")
    (warning,) = warnings_about(caplog, url)  # three failures, one line
    assert "connect: connection refused" in warning and "502" in warning
    lines: list[dict] = []

    def logged() -> bool:
        lines.extend(json.loads(x) for x in capsys.readouterr().out.splitlines() if x)
        return len(lines) >= 3

    await eventually(logged, 5, "three access-log lines")
    assert {line["reason"] for line in lines} == {
        "upstream unreachable (connect: connection refused)"
    }


async def test_read_timeout_is_explained(make_proxy, caplog):
    """An upstream that accepts the request and never answers: 504, and the cause says
    which wait ran out."""
    hold = asyncio.Event()

    async def silent(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await hold.wait()  # the scenario: an upstream that never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    proxy = await make_proxy(CONFIG + "timeouts: {{read: 0.3}}\n", upstream=url)
    caplog.set_level(logging.INFO, "corsproxy")
    try:
        async with connection(proxy.port) as (reader, writer):
            writer.write(request("GET", "/slow"))
            assert (await read_response(reader)).status == 504
    finally:
        hold.set()
        server.close()
    (warning,) = warnings_about(caplog, url)
    assert "read: nothing within timeouts.read" in warning and "504" in warning
