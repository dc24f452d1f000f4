"""Wiring: builds the server around a ``Proxy`` and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from corsproxy.admin import AdminView, start_admin
from corsproxy.listener import Listener
from corsproxy.metrics import ReloadMetrics, RequestMetrics, exposition
from corsproxy.policy import Settings
from corsproxy.proxy import Proxy
from corsproxy.reload import ConfigSource, Reloader
from corsproxy.upstream import UpstreamPool

log = logging.getLogger("corsproxy")
T = TypeVar("T")


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
    listener: Listener
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
        self.listener.idle = settings.timeouts.idle
        self.listener.send_timeout = settings.timeouts.send
        self.proxy.pool.idle = settings.timeouts.idle

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (timeouts.shutdown), close the pool."""
        timeout = self.proxy.settings.timeouts.shutdown
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.listener.close(timeout)
        await self.proxy.close_tunnels(max(0.0, deadline - loop.time()))
        self.proxy.pool.close()


async def start(
    settings: Settings, metrics: RequestMetrics | None = None, reuse_port: bool = False
) -> Running:
    """Start listening. Port 0 picks a free port; ``Running.port`` tells which."""
    metrics = metrics if metrics is not None else RequestMetrics()
    ssl_context = make_ssl_context(settings)  # before anything needs closing
    pool = UpstreamPool(settings.timeouts.idle)
    proxy = Proxy(settings, pool, metrics)
    timeouts = settings.timeouts
    listener = Listener(proxy.handle, proxy.finished, proxy.malformed, timeouts.idle, timeouts.send)
    listener.sweepers.append(pool.sweep)
    try:
        port = await listener.start(
            settings.listen_host,
            settings.listen_port,
            ssl=ssl_context,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    except BaseException:
        await listener.close(0)
        raise
    return Running(proxy, listener, metrics, settings.listen_host, port)


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
