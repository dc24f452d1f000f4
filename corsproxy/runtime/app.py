"""Wiring: builds the server around a ``Proxy`` and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from corsproxy.config.view import config_view, host_port
from corsproxy.engine.policy import Settings
from corsproxy.http.listener import Listener
from corsproxy.http.proxy import Proxy
from corsproxy.http.upstream import UpstreamPool
from corsproxy.observe import traffic
from corsproxy.observe.live import LiveState, snapshot
from corsproxy.observe.metrics import ReloadMetrics, RequestMetrics, exposition
from corsproxy.runtime.admin import AdminServer, AdminView, Suggester, start_admin
from corsproxy.runtime.reload import ConfigSource, Reloader

log = logging.getLogger("corsproxy")
T = TypeVar("T")


class TLSError(Exception):
    """``tls.cert`` / ``tls.key`` cannot be used; the message says which file and why."""


class ListenError(OSError):
    """A listener cannot open its port; the message names which one, the address and why:
    ``cannot listen on the admin address 127.0.0.1:9901: address already in use``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def bind_failure(which: str, host: str, port: int, exc: OSError) -> ListenError:
    if isinstance(exc, ListenError):
        return exc
    if isinstance(exc, socket.gaierror) or not exc.errno:
        why = exc.strerror or str(exc)
    else:
        why = os.strerror(exc.errno)
    return ListenError(f"cannot listen on {which}{host_port(host, port)}: {why.lower()}")


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
        self.listener.set_idle(settings.timeouts.idle)
        self.listener.send_timeout = settings.timeouts.send
        self.proxy.pool.idle = settings.timeouts.idle
        self.proxy.pool.retire(settings)  # changed upstream_tls: pooled connections go

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
    listener.count = metrics.client_connections.inc  # +1/-1 per client connection
    try:
        port = await listener.start(
            settings.listen_host,
            settings.listen_port,
            ssl=ssl_context,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    except BaseException as exc:
        await listener.close(0)
        if isinstance(exc, OSError):
            raise bind_failure("", settings.listen_host, settings.listen_port, exc) from None
        raise
    return Running(proxy, listener, metrics, settings.listen_host, port)


async def open_admin(settings: Settings, view: AdminView) -> AdminServer | None:
    """The admin listener of ``settings``, if it has one; ListenError if its port is taken."""
    if settings.admin is None:
        return None
    host, port = settings.admin
    try:
        return await start_admin(view, host, port)
    except OSError as exc:
        raise bind_failure("the admin address ", host, port, exc) from None


def admin_url(settings: Settings) -> str | None:
    return None if settings.admin is None else f"http://{host_port(*settings.admin)}"


def summary(
    described: str, settings: Settings, url: str, pids: list[int], workers: bool = False
) -> str:
    """The one start-up line: where it listens, the admin listener, the config, how many
    routes and upstreams, which processes serve."""
    routes = settings.table.routes
    upstreams = {
        (u.url, u.prefix)
        for u in [r.upstream for r in routes] + [settings.table.fallback.upstream]
        if u is not None
    }
    pid_list = ", ".join(str(pid) for pid in pids)
    served = (
        f"{len(pids)} worker{plural(len(pids))} (pid{plural(len(pids))} {pid_list})"
        if workers
        else f"1 process (pid {pid_list})"
    )
    return (
        f"corsproxy listening on {url}, admin {admin_url(settings) or 'off'}; {described}: "
        f"{len(routes)} route{plural(len(routes))}, "
        f"{len(upstreams)} upstream{plural(len(upstreams))}; {served}"
    )


def plural(count: int) -> str:
    return "" if count == 1 else "s"


async def demo_admin(running: Running) -> tuple[AdminServer | None, str]:
    """``demo``: the admin listener of its config, or a line that says why there is none."""
    # Nothing reloads in the demo; its ReloadMetrics still give the build and process_* series.
    view = admin_view(running, ReloadMetrics(), None)
    try:
        admin = await open_admin(running.proxy.settings, view)
    except ListenError as exc:
        return None, f"admin listener: not started: {exc}"
    url = admin_url(running.proxy.settings)
    if admin is None:
        return None, "admin listener: off (the config sets no admin address)"
    return admin, f"admin listener: {url} (live page at /; /healthz /readyz /metrics /config)"


def admin_view(
    running: Running, reload_metrics: ReloadMetrics, reloader: Reloader | None
) -> AdminView:
    """What one process's admin listener serves: its metrics, its effective config, and the
    live page's data from its own metrics and LiveLog (observe/live.py), the suggested rules
    from its LiveLog's traffic (observe/traffic.py)."""
    live = LiveState(
        lambda: running.proxy.settings,
        running.metrics.registry.collect,
        lambda: [snapshot(running.proxy.live)],
        reloader.history if reloader is not None else None,
    )
    return AdminView(
        ready=lambda: True,
        metrics=lambda: exposition(running.metrics.registry, reload_metrics.registry),
        config=lambda: config_view(running.proxy.settings),
        state=live.state,
        sample=live.sample,
        suggestion=Suggester(
            lambda: running.proxy.settings,
            lambda: [traffic.snapshot(running.proxy.live.traffic)],  # on the loop, then a thread
            lambda: running.proxy.live.traffic.version,
        ).suggestion,
    )


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
    view = admin_view(running, reload_metrics, reloader)
    try:
        admin = await open_admin(settings, view)
    except BaseException:
        await running.stop()
        raise
    log.info("%s", summary(source.describe(), settings, running.url, [os.getpid()]))
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
