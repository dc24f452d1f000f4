"""The admin listener (docs/operations.md): what it serves, all read-only, GET or HEAD:

* ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/config`` (the settings in force);
* the live page: ``/`` with ``/admin.css`` and ``/admin.js``, its data at ``/state.json``
  (observe/live.py);
* the suggested rules for the last hour of traffic: ``/suggest.yaml`` and ``/suggest.json``
  (``?min_count=N``), worked out by ``Suggester`` below from the counts of observe/traffic.py
  through ``config.suggest.suggest_config``, in a thread, so the proxy's own loop (the same
  loop without workers) keeps serving while it runs.

Served by the proxy's own HTTP/1.1 listener (http/listener.py): a handful of fixed paths do
not need a web framework, and a worker that never sees a WebSocket then never loads aiohttp
(about 11 MiB per process). No authentication: bind it to a private address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import yaml

from corsproxy.config import suggest
from corsproxy.config.load import parse_settings
from corsproxy.config.tree import ConfigInvalid
from corsproxy.engine.policy import Settings
from corsproxy.http.listener import TEXT_PLAIN, ClientConnection, Exchange, Listener
from corsproxy.observe import traffic
from corsproxy.observe.metrics import CONTENT_TYPE

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
IDLE = 75.0
SHUTDOWN = 5.0


@dataclass(frozen=True)
class AdminView:
    """What the admin endpoints read; each is a callable so they always see the present."""

    ready: Callable[[], bool]
    metrics: Callable[[], bytes]
    config: Callable[[], dict[str, Any]]
    state: Callable[[], dict[str, Any]] | None = None  # /state.json; None: no live page
    sample: Callable[[], object] | None = None  # called once a second (live.LiveState.sample)
    # /suggest.json and /suggest.yaml, given --min-count (Suggester.suggestion, below)
    suggestion: Callable[[int], Awaitable[dict[str, Any]]] | None = None


# The live page: its own files only (no inline script or style), read-only, never framed.
PAGE_HEADERS = [
    b"Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    b"connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'\r\n",
    b"X-Content-Type-Options: nosniff\r\n",
    b"Referrer-Policy: no-referrer\r\n",
    b"Cache-Control: no-store\r\n",
]
PAGE_FILES = {
    "/": ("admin.html", "text/html; charset=utf-8"),
    "/admin.css": ("admin.css", "text/css; charset=utf-8"),
    "/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
}
VIEWED = 90.0  # seconds the rates keep being sampled after the page was last read
SUGGEST_PATHS = frozenset({"/suggest.json", "/suggest.yaml"})
LIVE_PATHS = frozenset({"/state.json", *PAGE_FILES, *SUGGEST_PATHS})
PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/config", *LIVE_PATHS})
YAML = "application/yaml; charset=utf-8"


@functools.cache
def page_file(name: str) -> bytes:
    """A file of the live page, shipped in the package (corsproxy/static)."""
    return resources.files("corsproxy").joinpath("static", name).read_bytes()


def admin_answer(view: AdminView, method: str, target: str) -> tuple[int, str, bytes] | None:
    """Status, content type and body for one admin request; None for a suggestion to work
    out (``suggestion_answer``)."""
    path = target.split("?", 1)[0]
    if path not in PATHS or (view.state is None and path in LIVE_PATHS):
        return 404, TEXT, b"404: Not Found\n"
    if path in SUGGEST_PATHS and view.suggestion is None:
        return 404, TEXT, b"404: Not Found\n"
    if method not in ("GET", "HEAD"):
        return 405, TEXT, b"405: Method Not Allowed\n"
    if path in PAGE_FILES:
        name, content_type = PAGE_FILES[path]
        return 200, content_type, page_file(name)
    if path == "/state.json":
        assert view.state is not None
        return 200, JSON, json.dumps(view.state(), separators=(",", ":")).encode()
    if path in SUGGEST_PATHS:
        return None
    if path == "/healthz":
        return 200, TEXT, b"ok\n"
    if path == "/readyz":
        return (200, TEXT, b"ready\n") if view.ready() else (503, TEXT, b"not ready\n")
    if path == "/metrics":
        return 200, CONTENT_TYPE, view.metrics()
    body = json.dumps(view.config(), indent=2, default=str) + "\n"
    return 200, JSON, body.encode()


def min_count_of(target: str) -> int | None:
    """``?min_count=N`` as ``corsproxy suggest --min-count N`` (default 1); None: not a
    whole number from 1 to a billion (ASCII digits only: ``int("²")`` raises)."""
    query = parse_qs(target.partition("?")[2])
    given = query.get("min_count", ["1"])[-1]
    if not given.isascii() or not given.isdigit() or not 1 <= int(given) <= 1_000_000_000:
        return None
    return int(given)


async def suggestion_answer(view: AdminView, target: str) -> tuple[int, str, bytes]:
    """``/suggest.json`` or ``/suggest.yaml`` (``admin_answer`` checked path and method)."""
    assert view.suggestion is not None
    min_count = min_count_of(target)
    if min_count is None:
        return 400, TEXT, b"400: min_count must be a whole number, 1 or more\n"
    found = await view.suggestion(min_count)
    if target.startswith("/suggest.json"):
        return 200, JSON, json.dumps(found, separators=(",", ":")).encode()
    if found["error"]:
        return 500, TEXT, f"500: {found['error']}\n".encode()
    return 200, YAML, found["yaml"].encode()


# --- the suggested rules, worked out when asked -------------------------------------

CACHE_SECONDS = 5.0  # an answer is reused this long while the counts it came from stand
CACHED = 8  # answers kept (one per min_count asked)


def config_text(settings: Settings) -> tuple[str, Settings, str | None, list[str]]:
    """The text to write the rules into: the file the running settings came from, when it
    reads and passes check now (its comments kept), else the running settings written out.
    Returns the text, the settings it holds, the file (None: the running settings) and notes."""
    path = settings.source
    notes: list[str] = []
    if path and not path.startswith("<") and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            found, _ = parse_settings(text, path)
            return text, found, path, notes
        except (OSError, UnicodeDecodeError, ConfigInvalid):
            notes.append(
                f"# {path} does not read or pass check now: written against the running "
                "settings instead"
            )
    plain = settings.effective if isinstance(settings.effective, dict) else {}
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text, settings, None, notes


def build_suggestion(
    settings: Settings, snapshots: list[dict[str, Any]], min_count: int, now: float
) -> dict[str, Any]:
    """What ``/suggest.json`` holds, from every process's traffic snapshot (plain data).
    Touches nothing the proxy changes: runs in a thread."""
    counts, lost = traffic.merge(snapshots, now)
    untracked = sum(lost.values())
    obs = traffic.observations(counts)
    text, found, path, notes = config_text(settings)
    requests = obs.cors_requests + untracked
    first = min((c[1] for c in counts.values()), default=None)
    last = max((c[2] for c in counts.values()), default=None)
    seen = ""
    if first is not None and last is not None:
        seen = f", {traffic.stamp(first)} to {traffic.stamp(last)}"
    heading = [
        "# Suggested by corsproxy's admin page from the last hour of traffic it holds: "
        f"{requests} cross-origin request(s){seen}. A suggestion to review, not applied: "
        "read every RISKY line before enforcing.",
        *notes,
        *traffic.lost_note(lost),
    ]
    error = None
    try:
        out = suggest.suggest_config(
            text, path or settings.source, found, obs, min_count, heading=heading
        )
    except suggest.NoSuggestion as exc:
        out, error = "", f"no suggestion: {exc}"
    return {
        "yaml": out,
        "error": error,
        "against": path or "the running settings",
        "min_count": min_count,
        "window": traffic.WINDOW,
        "bucket": traffic.BUCKET,
        "requests": requests,
        "untracked": untracked,
        "lost": lost,
        "keys": len(counts),
        "first": first,
        "last": last,
        "now": now,
    }


class Suggester:
    """What ``/suggest.json`` and ``/suggest.yaml`` answer.

    ``snapshots`` yields every process's traffic ``snapshot`` (plain data); it runs on the
    event loop, before the thread starts, unless ``threadsafe`` (workers' files, read in
    the thread). ``version`` changes whenever those counts may have. The work (merge, plan,
    render, two YAML parses: about 0.4 s at the caps) runs in the loop's default executor,
    one at a time; an answer is reused for CACHE_SECONDS while (min_count, version) stand."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        snapshots: Callable[[], list[dict[str, Any]]],
        version: Callable[[], Hashable],
        threadsafe: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.version = version
        self.threadsafe = threadsafe
        self.clock = clock
        self.cache: dict[int, tuple[Hashable, float, asyncio.Future[dict[str, Any]]]] = {}
        self.lock: asyncio.Lock | None = None
        self.builds = 0  # how many were worked out (tests)

    async def suggestion(self, min_count: int = 1) -> dict[str, Any]:
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:  # one build at a time; who waited may find it cached
            now = self.clock()
            settings = self.settings()
            version = (self.version(), int(now // traffic.BUCKET), id(settings))
            cached = self.cache.get(min_count)
            if cached is not None and cached[0] == version and now - cached[1] < CACHE_SECONDS:
                return await asyncio.shield(cached[2])
            if self.threadsafe:
                read = self.snapshots
            else:
                taken = self.snapshots()  # on the loop: nothing changes it while it is copied
                read = lambda: taken  # noqa: E731
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(
                None, lambda: build_suggestion(settings, read(), min_count, now)
            )
            self.builds += 1
            if len(self.cache) >= CACHED and min_count not in self.cache:
                del self.cache[min(self.cache, key=lambda k: self.cache[k][1])]
            self.cache[min_count] = (version, now, future)
            # shielded: a client that goes away does not cancel the build others will reuse
            return await asyncio.shield(future)


class AdminServer:
    def __init__(self, view: AdminView) -> None:
        self.view = view
        self.listener = Listener(self.handle, _ignore, _ignore, IDLE)
        self.port = 0
        self.sampler: asyncio.Future[None] | None = None
        self.viewed_at = 0.0  # when /state.json was last read (loop time)

    def handle(self, request: Exchange, conn: ClientConnection) -> None:
        if request.invalid is not None:  # refused by the listener (malformed, over a limit)
            status, reason = request.invalid
            conn.answer(request, status, [TEXT_PLAIN], f"{reason}\n".encode())
            return
        answer = admin_answer(self.view, request.method, request.target)
        if answer is None:  # a suggestion: worked out in a thread, answered when done
            request.task = asyncio.ensure_future(self.suggest(request, conn))
            return
        self.send(request, conn, *answer)

    async def suggest(self, request: Exchange, conn: ClientConnection) -> None:
        try:
            answer = await suggestion_answer(self.view, request.target)
        except Exception as exc:  # keep the listener: say it, as a 500
            answer = 500, TEXT, f"500: no suggestion: {type(exc).__name__}: {exc}\n".encode()
        self.send(request, conn, *answer)

    def send(
        self,
        request: Exchange,
        conn: ClientConnection,
        status: int,
        content_type: str,
        body: bytes,
    ) -> None:
        lines = [f"Content-Type: {content_type}\r\n".encode()]
        if status == 405:
            lines.append(b"Allow: GET, HEAD\r\n")
        elif status == 200 and request.target.split("?", 1)[0] in LIVE_PATHS:
            lines += PAGE_HEADERS
            if request.target.startswith("/state.json"):
                self.viewed()
        conn.answer(request, status, lines, body)

    def viewed(self) -> None:
        """The page is open: sample the rates while it is read, and not otherwise."""
        loop = asyncio.get_running_loop()
        self.viewed_at = loop.time()
        if self.sampler is None and self.view.sample is not None:
            self.sampler = asyncio.ensure_future(self.sampling())

    async def sampling(self) -> None:
        """Once a second while someone reads /state.json (and VIEWED seconds after), for the
        live page's per-second rates (a failure skips one): an admin listener nobody looks
        at does no work."""
        assert self.view.sample is not None
        loop = asyncio.get_running_loop()
        try:
            while loop.time() - self.viewed_at < VIEWED:
                with contextlib.suppress(Exception):
                    self.view.sample()
                await asyncio.sleep(1.0)
        finally:
            self.sampler = None

    async def cleanup(self) -> None:
        if self.sampler is not None:
            self.sampler.cancel()
        await self.listener.close(SHUTDOWN)


def _ignore(*_: object) -> None:
    pass


async def start_admin(view: AdminView, host: str, port: int) -> AdminServer:
    server = AdminServer(view)
    server.port = await server.listener.start(host, port, reuse_address=True)
    return server
