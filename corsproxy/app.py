"""Wiring: builds the server around a ``Proxy`` and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from corsproxy import accesslog
from corsproxy.policy import Settings
from corsproxy.proxy import OUTCOME, READ_CHUNK, Proxy

log = logging.getLogger("corsproxy")
T = TypeVar("T")
access_log = logging.getLogger("corsproxy.access")


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a full traceback for every request it cannot parse; a malformed request
    is the client's fault, so one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            exc = record.exc_info[1]
            record.msg = "malformed request: %s"
            record.args = (str(exc.message).splitlines()[0] if exc.message else exc.code,)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())


def make_session(settings: Settings) -> aiohttp.ClientSession:
    """One pooled session for every upstream. It keeps no cookies (they belong to the
    clients), adds none of its own headers, and never decompresses what it relays."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=settings.timeouts.idle)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        read_bufsize=READ_CHUNK,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls.cert, settings.tls.key)
    return context


@dataclass
class Running:
    """A started proxy: its address, its handler (for reloads) and how to stop it."""

    proxy: Proxy
    runner: web.ServerRunner
    session: aiohttp.ClientSession
    host: str
    port: int

    @property
    def url(self) -> str:
        scheme = "https" if self.proxy.settings.tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.session.close()


def access_logger_for(proxy: Proxy) -> type[AbstractAccessLogger]:
    """aiohttp calls an access logger once the response is sent, so sizes are final."""

    class AccessLogger(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return proxy.settings.access_log != "off"

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            outcome = request.get(OUTCOME)
            if outcome is None:
                return
            decision = outcome.decision
            accesslog.write(
                accesslog.record(
                    client=request.remote,
                    method=request.method,
                    path=request.raw_path,
                    status=response.status,
                    duration=time,
                    route=outcome.route,
                    origin=decision.origin or request.headers.get("Origin"),
                    kind=decision.kind.value,
                    decision=decision.verdict.value,
                    reason=decision.reason or outcome.upstream_error or "",
                    upstream_status=outcome.upstream_status,
                    size=response.body_length,
                ),
                proxy.settings.access_log,
            )

    return AccessLogger


async def start(settings: Settings) -> Running:
    """Start listening. Port 0 picks a free port; ``Running.port`` tells which."""
    session = make_session(settings)
    proxy = Proxy(settings, session)
    server = web.Server(
        proxy.handle,
        access_log=access_log,
        access_log_class=access_logger_for(proxy),
        keepalive_timeout=settings.timeouts.idle,
        read_bufsize=READ_CHUNK,
    )
    runner = web.ServerRunner(server, shutdown_timeout=settings.timeouts.shutdown)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.listen_host,
        settings.listen_port,
        ssl_context=make_ssl_context(settings),
        reuse_address=True,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        await session.close()
        raise
    port = runner.addresses[0][1] if runner.addresses else settings.listen_port
    return Running(proxy, runner, session, settings.listen_host, port)


async def serve_forever(settings: Settings, announce: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then let requests in flight finish and return."""
    running = await start(settings)
    log.info("corsproxy listening on %s", running.url)
    if announce:
        print(announce.format(url=running.url), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (it is a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(main)
    return uvloop.run(main)
