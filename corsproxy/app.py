"""Wiring: builds the server around a ``Proxy`` and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from corsproxy import accesslog
from corsproxy.admin import AdminView, start_admin
from corsproxy.metrics import ReloadMetrics, RequestMetrics, exposition
from corsproxy.policy import Settings
from corsproxy.proxy import OUTCOME, READ_CHUNK, Proxy
from corsproxy.reload import ConfigSource, Reloader

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
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        read_bufsize=READ_CHUNK,
        timeout=aiohttp.ClientTimeout(total=None),
    )
    # aiohttp resends an idempotent request on a stale pooled connection, body and all;
    # a streamed body cannot be rewound, so the proxy decides retries itself (Proxy.send).
    session._retry_connection = False
    return session


class TLSError(Exception):
    """``tls.cert`` / ``tls.key`` cannot be used; the message says which file and why."""


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt for a passphrase on the terminal.
    raise _EncryptedKey


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context; a TLSError (one line) when the cert or key is unusable."""
    if settings.tls is None:
        return None
    cert, key = settings.tls.cert, settings.tls.key
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TLSError(f"tls.key: {key} is encrypted; give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(f"tls.key: {key} does not match the certificate in {cert}") from None
        try:
            ssl.create_default_context().load_verify_locations(cert)
        except (ssl.SSLError, OSError):
            raise TLSError(f"tls.cert: {cert} holds no usable PEM certificate") from None
        raise TLSError(f"tls.key: {key} holds no usable PEM private key") from None
    except OSError as exc:
        which = "tls.cert" if not os.access(cert, os.R_OK) else "tls.key"
        path = cert if which == "tls.cert" else key
        raise TLSError(f"{which}: cannot read {path}: {exc.strerror or exc}") from None
    return context


@dataclass
class Running:
    """A started proxy: its address, its handler (reloads swap its settings), how to stop it."""

    proxy: Proxy
    runner: web.ServerRunner
    session: aiohttp.ClientSession
    metrics: RequestMetrics
    host: str
    port: int

    @property
    def url(self) -> str:
        scheme = "https" if self.proxy.settings.tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def apply(self, settings: Settings) -> None:
        """Swap in reloaded rules and timeouts; requests in flight keep the old ones."""
        self.proxy.settings = settings
        # aiohttp reads these two when a connection starts and when the runner stops; they
        # have no public setter, so a reload updates the values it will read next.
        self.runner._shutdown_timeout = settings.timeouts.shutdown
        server = self.runner.server
        if server is not None and isinstance(getattr(server, "_kwargs", None), dict):
            server._kwargs["keepalive_timeout"] = settings.timeouts.idle

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (timeouts.shutdown), close the pool."""
        await self.runner.cleanup()
        await self.session.close()


def access_logger_for(proxy: Proxy, metrics: RequestMetrics) -> type[AbstractAccessLogger]:
    """aiohttp calls an access logger once the response is sent, so sizes and durations are
    final: the one place that sees every finished request logs it and counts it."""

    class AccessLogger(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return True

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            outcome = request.get(OUTCOME)
            if outcome is None:  # refused by the HTTP parser before the handler ran
                return
            decision = outcome.decision
            seconds = perf_counter() - outcome.started  # aiohttp's `time` is in whole ms
            metrics.observe(
                outcome.route,
                decision.kind.value,
                decision.verdict.value,
                outcome.upstream_error,
                seconds,
            )
            style = proxy.settings.access_log
            if style == "off":
                return
            accesslog.write(
                accesslog.record(
                    client=request.remote,
                    method=request.method,
                    path=request.raw_path,
                    status=response.status,
                    duration=seconds,
                    route=outcome.route,
                    origin=decision.origin or request.headers.get("Origin"),
                    kind=decision.kind.value,
                    decision=decision.verdict.value,
                    reason=decision.reason or outcome.note,
                    upstream_status=outcome.upstream_status,
                    size=response.body_length,
                ),
                style,
            )

    return AccessLogger


async def start(
    settings: Settings, metrics: RequestMetrics | None = None, reuse_port: bool = False
) -> Running:
    """Start listening. Port 0 picks a free port; ``Running.port`` tells which."""
    metrics = metrics if metrics is not None else RequestMetrics()
    ssl_context = make_ssl_context(settings)  # before anything needs closing
    session = make_session(settings)
    proxy = Proxy(settings, session)
    server = web.Server(
        proxy.handle,
        access_log=access_log,
        access_log_class=access_logger_for(proxy, metrics),
        keepalive_timeout=settings.timeouts.idle,
        read_bufsize=READ_CHUNK,
        # A client that hangs up cancels its handler, which releases the upstream request
        # at once instead of holding it until timeouts.read.
        handler_cancellation=True,
    )
    runner = web.ServerRunner(server, shutdown_timeout=settings.timeouts.shutdown)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.listen_host,
        settings.listen_port,
        ssl_context=ssl_context,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        await session.close()
        raise
    port = runner.addresses[0][1] if runner.addresses else settings.listen_port
    return Running(proxy, runner, session, metrics, settings.listen_host, port)


def stop_on_signals(*signals: signal.Signals) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(source: ConfigSource, settings: Settings, announce: str | None = None) -> None:
    """One process: the proxy, the admin listener and the reloader, until SIGTERM/SIGINT."""
    running = await start(settings)
    reload_metrics = ReloadMetrics()
    reloader = Reloader(source, lambda: running.proxy.settings, running.apply, reload_metrics)
    admin = None
    try:
        if settings.admin is not None:
            view = AdminView(
                ready=lambda: True,
                metrics=lambda: exposition(running.metrics.registry, reload_metrics.registry),
                config=lambda: running.proxy.settings.effective,
            )
            admin = await start_admin(view, *settings.admin)
    except BaseException:
        await running.stop()
        raise
    log.info("corsproxy listening on %s", running.url)
    if announce:
        print(announce.format(url=running.url), flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
    stop = stop_on_signals(signal.SIGTERM, signal.SIGINT)
    watcher = asyncio.ensure_future(reloader.watch())
    try:
        await stop.wait()
        log.info(
            "stopping: finishing requests in flight (at most %ss)",
            running.proxy.settings.timeouts.shutdown,
        )
    finally:
        watcher.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        await running.stop()
        if admin is not None:
            await admin.cleanup()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (it is a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(main)
    return uvloop.run(main)
