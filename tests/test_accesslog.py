"""The access log (docs/operations.md): one line per request with the decision and reason."""

from __future__ import annotations

import json

import pytest
from procutil import eventually

CONFIG = """\
upstream: {upstream}
access_log: {style}
defaults:
  allow_origins: [https://app.test]
  allow_methods: [GET, PUT]
"""


async def wait_lines(capsys: pytest.CaptureFixture[str], count: int) -> list[str]:
    """The lines logged since the last read, once there are ``count`` of them (a line is
    written just after its response went out); fails after 5 s."""
    lines: list[str] = []

    def enough() -> bool:
        lines.extend(capsys.readouterr().out.splitlines())
        return len(lines) >= count

    await eventually(enough, 5, f"{count} access log line(s)")
    return lines


async def test_json_lines_carry_every_field(upstream, make_proxy, client, capsys) -> None:
    proxy = await make_proxy(CONFIG, upstream=upstream.url, style="json")
    capsys.readouterr()
    requests = [
        ("GET", "/a?x=1", {"Origin": "https://app.test"}),
        ("GET", "/b", {"Origin": "https://evil.test"}),
        ("OPTIONS", "/c", {"Origin": "https://app.test", "Access-Control-Request-Method": "PUT"}),
        ("GET", "/d", {}),
    ]
    for method, path, headers in requests:
        async with client.request(method, proxy.url + path, headers=headers) as response:
            await response.read()
    entries = [json.loads(line) for line in await wait_lines(capsys, 4)]
    assert [(e["path"], e["status"], e["kind"], e["decision"]) for e in entries] == [
        ("/a?x=1", 200, "actual", "allowed"),
        ("/b", 403, "actual", "rejected"),
        ("/c", 204, "preflight", "allowed"),
        ("/d", 200, "none", "not_cors"),
    ]
    assert entries[1]["reason"] == "origin 'https://evil.test' is not allowed"
    assert entries[0]["upstream_status"] == 200 and entries[1]["upstream_status"] is None
    assert entries[0]["origin"] == "https://app.test" and entries[0]["client"] == "127.0.0.1"
    assert all(e["bytes"] > 0 and e["duration"] > 0 and e["route"] == "default" for e in entries)


async def test_text_style_and_off(upstream, make_proxy, client, capsys) -> None:
    proxy = await make_proxy(CONFIG, upstream=upstream.url, style="text")
    capsys.readouterr()
    async with client.get(proxy.url + "/x", headers={"Origin": "https://evil.test"}) as response:
        await response.read()
    [line] = await wait_lines(capsys, 1)
    assert "status=403" in line and "decision=rejected" in line and "kind=actual" in line

    quiet = await make_proxy(CONFIG, upstream=upstream.url, style="off")
    capsys.readouterr()
    async with client.get(quiet.url + "/x") as response:
        await response.read()
    # Then one request to the logging proxy: once its line is out, a line the quiet one
    # wrote for the earlier request would be out too, so no fixed wait is needed.
    async with client.get(proxy.url + "/marker") as response:
        await response.read()
    lines = await wait_lines(capsys, 1)
    assert len(lines) == 1 and "/marker" in lines[0], lines


async def test_proxy_made_errors_log_their_reason(make_proxy, client, capsys) -> None:
    proxy = await make_proxy(CONFIG, upstream="http://127.0.0.1:9", style="json")
    capsys.readouterr()
    for path in ("/a%2fb", "/down"):
        async with client.get(proxy.url + path) as response:
            await response.read()
    entries = [json.loads(line) for line in await wait_lines(capsys, 2)]
    assert [(e["status"], e["reason"]) for e in entries] == [
        (400, "bad request path: path contains an encoded '/', '\\' or NUL"),
        (502, "upstream unreachable (connect: connection refused)"),
    ]


async def test_client_hanging_up_before_the_answer_is_logged_499(upstream, make_proxy, capsys):
    """Nothing was sent, so no status was: the line says 499 (as nginx logs it) and why."""
    import asyncio

    from aiohttp import web

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.Event().wait()  # never answers: the client hangs up first
        return web.Response(text="late")

    upstream.handler = slow
    proxy = await make_proxy(CONFIG, upstream=upstream.url, style="json")
    capsys.readouterr()
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: front.test\r\n\r\n")
    await writer.drain()
    await eventually(lambda: upstream.seen, what="the request is at the upstream")
    writer.close()
    [line] = await wait_lines(capsys, 1)
    entry = json.loads(line)
    assert (entry["status"], entry["reason"], entry["upstream_status"]) == (
        499,
        "client went away",
        None,
    )
