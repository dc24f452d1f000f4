"""Differential tests of the HTTP/1.1 layer: an independent parser (h11) on both legs.

The upstream parses every byte the proxy sends it with ``h11.Connection(h11.SERVER)``; the
client parses every byte the proxy answers with ``h11.Connection(h11.CLIENT)``. Whatever
hostile bytes a client sends, the two parsers must agree with the proxy's own account of
what it did (its access log): the upstream sees exactly the requests the proxy forwarded,
each with one unambiguous framing, and each client gets exactly its own answers. A second
client's request, carrying credentials, then has to arrive intact on the pooled upstream
connection the first client used: no desync survives from one client to the next.

Three parts: a corpus of hostile requests (``CORPUS``), a corpus of hostile upstream answers
(``ANSWERS``) and a property-based fuzz of both (hypothesis) against one proxy and one
upstream started once. ``CORSPROXY_FUZZ_EXAMPLES=N pytest -m fuzz`` runs the long fuzz.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corsproxy.config.load import parse_settings
from corsproxy.engine.paths import PathError, parse_target
from corsproxy.runtime.app import Running, start

KiB = 1 << 10
MiB = 1 << 20
EVIL = "https://evil.example"
SECRET = "/api/secret"  # hidden in bodies: must never reach the upstream
MARK = b"smuggled"  # in hidden headers, trailers and upstream answers: must never cross

CONFIG = """
listen: 127.0.0.1:0
upstream: {upstream}
access_log: json
timeouts: {{read: 5, shutdown: 2}}
defaults:
  allow_origins: [https://app.test]
  allow_methods: [GET, HEAD, POST, PUT, DELETE]
  allow_headers: [X-Token]
routes:
  - path: /public/**
    cors:
      allow_origins: ["*"]
      allow_methods: ["*"]
      allow_headers: ["*"]
"""

READ_TIMEOUT = 5.0  # no single read ever waits longer (an answer owed and not sent: a failure)


# --- the upstream: h11 as a server, recording every request it parses ------------------------


@dataclass
class UpRequest:
    conn: int
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]  # as h11 parsed them (lowercase names)
    raw_names: list[bytes]  # lowercase names as they arrived, duplicates kept
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = False

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]

    def describe(self) -> str:
        return f"{self.method} {self.target} (conn {self.conn}, {len(self.body)} body bytes)"


@dataclass
class UpConn:
    index: int
    requests: list[UpRequest] = field(default_factory=list)
    error: str | None = None  # h11 RemoteProtocolError on bytes the proxy sent
    leftover: bytes = b""  # bytes that never became a request
    truncated: bool = False  # closed by the proxy in the middle of a request body
    busy: bool = False  # a request has begun arriving and is not complete yet
    closed: bool = False


def split_names(raw_head: bytes) -> list[bytes]:
    lines = re.split(rb"\r?\n", raw_head)[1:]
    return [
        line.split(b":", 1)[0].strip().lower() for line in lines if line and line[:1] not in b" \t"
    ]


class H11Upstream:
    """A bare asyncio server: h11 parses every byte; each request is answered 200 with a body
    naming it (``seen METHOD TARGET len=N``) and the connection kept alive."""

    def __init__(self) -> None:
        self.conns: list[UpConn] = []
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()  # each connection's task then ends on its own
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    def requests(self, since: int = 0) -> list[UpRequest]:
        return [r for c in self.conns for r in c.requests if c.index >= since]

    def settled(self) -> bool:
        return all(c.closed or not c.busy for c in self.conns)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        rec = UpConn(len(self.conns))
        self.conns.append(rec)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MiB)
        raw = bytearray()  # the bytes of the request head being received
        current: UpRequest | None = None
        eof = False
        try:
            while True:
                state = conn.their_state
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    pending = conn.trailing_data[0]
                    if eof and state is h11.SEND_BODY:
                        rec.truncated = True
                    elif eof and state is h11.IDLE:
                        rec.leftover = pending or bytes(raw) or b"?"
                    else:
                        rec.error = f"{exc!r} near {bytes(raw[:120] or pending[:120])!r}"
                    break
                if event is h11.NEED_DATA:
                    async with asyncio.timeout(120):
                        data = await reader.read(65536)
                    if conn.their_state is h11.IDLE:
                        raw += data
                        rec.busy = rec.busy or bool(data)
                    conn.receive_data(data)
                    eof = not data
                    continue
                if isinstance(event, h11.Request):
                    head = bytes(raw[: len(raw) - len(conn.trailing_data[0])])
                    current = UpRequest(
                        rec.index,
                        event.method.decode("latin-1"),
                        event.target.decode("latin-1"),
                        list(event.headers),
                        split_names(head),
                    )
                    rec.requests.append(current)
                elif isinstance(event, h11.Data):
                    assert current is not None
                    current.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert current is not None
                    current.trailers = list(event.headers)
                    current.complete = True
                    writer.write(self.answer(conn, current))
                    rec.busy = False
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break  # the proxy said close
                    conn.start_next_cycle()
                    raw = bytearray(conn.trailing_data[0])
                    rec.busy = bool(raw)
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except (TimeoutError, ConnectionError):
            pass
        finally:
            rec.closed = True
            self.tasks.discard(task)
            self.writers.discard(writer)
            writer.close()

    @staticmethod
    def answer(conn: h11.Connection, req: UpRequest) -> bytes:
        body = f"seen {req.method} {req.target} len={len(req.body)}".encode("latin-1")
        out = conn.send(
            h11.Response(
                status_code=200,
                headers=[("Content-Length", str(len(body))), ("Content-Type", "text/plain")],
            )
        )
        if req.method != "HEAD":
            out += conn.send(h11.Data(data=body))
        return out + conn.send(h11.EndOfMessage())


def seen(method: str, target: str, length: int = 0) -> bytes:
    return f"seen {method} {target} len={length}".encode()


# --- the client: raw bytes out, h11 as a client on every byte that comes back --------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    interim: int = 0
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    closes: bool = False  # h11: the connection must close after this answer

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]

    def short(self) -> str:
        return f"{self.status} {self.body[:60]!r}"


class Client:
    """A raw socket whose every received byte goes through h11. ``next_reply`` primes h11 with
    a request of the given method (HEAD answers have no body) and reads one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h = h11.Connection(h11.CLIENT, max_incomplete_event_size=4 * MiB)
        self.eof = False
        self.problems: list[str] = []
        self.broken = False  # h11 failed: nothing more can be parsed

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MiB)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def fill(self, timeout: float) -> bool:
        """Read until h11 has unparsed bytes or the connection closed; False on timeout."""
        while not self.h.trailing_data[0] and not self.eof:
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(65536)
            except TimeoutError:
                return False
            except ConnectionError:
                data = b""
            self.h.receive_data(data)
            self.eof = not data
        return True

    @property
    def open_for_more(self) -> bool:
        return (
            not self.eof
            and not self.broken
            and self.h.their_state in (h11.DONE, h11.IDLE)
            and self.h.our_state in (h11.DONE, h11.IDLE)
        )

    async def next_reply(self, method: str, timeout: float = READ_TIMEOUT) -> Reply | None:
        """The next answer; None when the connection closed (or stayed silent: ``timeout``)
        before one began. A broken answer is noted in ``problems``."""
        if self.broken:
            return None
        if not await self.fill(timeout):
            self.problems.append(f"no answer to {method} within {timeout}s")
            return None
        pending = self.h.trailing_data[0]
        if not pending:
            return None  # closed cleanly between answers
        if not self.open_for_more:
            self.problems.append(f"bytes after a closing answer: {pending[:80]!r}")
            self.broken = True
            return None
        if self.h.our_state is h11.DONE:
            self.h.start_next_cycle()
        prime = method if method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS") else "GET"
        self.h.send(h11.Request(method=prime, target="/", headers=[("Host", "proxy.test")]))
        self.h.send(h11.EndOfMessage())
        reply: Reply | None = None
        interim = 0
        body = bytearray()
        while True:
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                self.broken = True
                what = f"answer {reply.status}" if reply else "answer head"
                self.problems.append(f"h11 failed on the {what} to {method}: {exc}")
                return None
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout(timeout):
                        data = await self.reader.read(65536)
                except TimeoutError:
                    self.broken = True
                    self.problems.append(f"answer to {method} stopped short (timeout)")
                    return None
                except ConnectionError:
                    data = b""
                self.h.receive_data(data)
                self.eof = self.eof or not data
            elif isinstance(event, h11.InformationalResponse):
                interim += 1
            elif isinstance(event, h11.Response):
                reply = Reply(event.status_code, list(event.headers), interim=interim)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert reply is not None
                reply.body = bytes(body)
                reply.trailers = list(event.headers)
                reply.closes = self.h.their_state is h11.MUST_CLOSE
                return reply
            else:  # ConnectionClosed before any answer
                return None

    async def closes(self, timeout: float = READ_TIMEOUT) -> None:
        """The proxy must close; any byte before that is an answer nobody asked for."""
        if self.broken or self.eof:
            return
        if not await self.fill(timeout):
            self.problems.append("connection not closed after a closing answer")
        elif self.h.trailing_data[0]:
            self.problems.append(f"bytes after the last answer: {self.h.trailing_data[0][:80]!r}")

    async def close(self) -> None:
        self.writer.transport.abort()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# --- the access log, and the invariants between log, upstream and clients ------------------


def log_entries(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    entries = []
    for line in capsys.readouterr().out.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "upstream_status" in entry:
                entries.append(entry)
    return entries


def log_path(path: str) -> str:
    """The target the upstream gets for a logged target: the proxy's own normalisation
    (absolute-form loses its authority, dot-segments are removed)."""
    try:
        return parse_target(path).path_qs
    except PathError:
        return path


async def settle(running: Running, upstream: H11Upstream, timeout: float = 4.0) -> list[str]:
    """Wait (against a deadline) until the proxy holds no client connection and no upstream
    connection is in the middle of a request: then the log and the upstream are final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not getattr(running.listener, "connections", ()) and upstream.settled():
            return []
        await asyncio.sleep(0.002)
    clients = len(getattr(running.listener, "connections", ()))
    stuck = [
        f"conn {c.index}: {[r.describe() for r in c.requests if not r.complete] or 'head'}"
        for c in upstream.conns
        if not (c.closed or not c.busy)
    ]
    for conn in upstream.conns:
        conn.busy = False  # reported once: later checks are not about this one
    return [f"not settled after {timeout}s: {clients} client connections open, upstream {stuck}"]


def check_upstream(
    upstream: H11Upstream,
    entries: list[dict[str, Any]],
    forbid: tuple[str, ...] = (),
    refused_before: str | None = None,
) -> list[str]:
    """Every invariant between what the proxy logged and what h11 parsed upstream."""
    problems = []
    for conn in upstream.conns:
        if conn.error:
            problems.append(f"upstream h11 error on conn {conn.index}: {conn.error}")
        if conn.leftover:
            problems.append(f"upstream conn {conn.index} left unparsed: {conn.leftover[:80]!r}")
    complete = [r for r in upstream.requests() if r.complete]
    for req in complete:
        names = Counter(req.raw_names)
        framing = names[b"content-length"] + names[b"transfer-encoding"]
        if framing > 1:
            problems.append(f"upstream got {framing} framing headers on {req.describe()}")
        lengths = req.all(b"content-length")
        if lengths and int(lengths[0]) != len(req.body):
            problems.append(f"Content-Length {lengths[0]!r} but body {len(req.body)}")
        if names[b"host"] != 1:
            problems.append(f"upstream got {names[b'host']} Host headers on {req.describe()}")
        if req.trailers:
            problems.append(f"request trailers forwarded: {req.trailers} on {req.describe()}")
        underscored = [n for n in req.raw_names if b"_" in n]
        if underscored:
            problems.append(f"names with '_' forwarded: {underscored} on {req.describe()}")
        for name, value in req.headers:
            if MARK in name.lower() or MARK in value.lower():
                problems.append(f"smuggled header reached upstream: {name!r}: {value!r}")
        if any(req.target.startswith(p) for p in (SECRET, *forbid)):
            problems.append(f"hidden request reached upstream: {req.describe()}")
    forwarded = Counter(
        (e["method"], log_path(e["path"])) for e in entries if e["upstream_status"] is not None
    )
    maybe = Counter(  # the client went away while it was forwarded: it may have arrived
        (e["method"], log_path(e["path"])) for e in entries if e["status"] == 499
    )
    got = Counter((r.method, r.target) for r in complete)
    for key, count in (got - forwarded).items():
        if count > maybe[key]:
            problems.append(
                f"upstream got {key} x{count}, the log says forwarded x{forwarded[key]}"
            )
    for key, count in (forwarded - got).items():
        problems.append(f"log says {key} forwarded x{forwarded[key]}, upstream got it x{count}")
    if refused_before is not None:
        early = [r.describe() for r in upstream.requests() if not r.target.startswith("/__")]
        if early:
            problems.append(f"refused request reached the upstream: {early}")
    return problems


VICTIM_HEADERS = "Cookie: victim=1\r\nAuthorization: Bearer victim\r\n"


def victim_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: front.test\r\n{VICTIM_HEADERS}\r\n".encode()


async def victim_round(port: int, path: str) -> list[str]:
    """A second client with credentials: its answer must be its own."""
    problems = []
    victim = await Client.open(port)
    try:
        victim.send(victim_request(path))
        reply = await victim.next_reply("GET")
        problems += [f"victim: {p}" for p in victim.problems]
        if reply is None:
            problems.append("victim got no answer")
        elif reply.status != 200 or reply.body != seen("GET", path):
            problems.append(f"victim got someone else's answer: {reply.short()}")
    finally:
        await victim.close()
    return problems


def check_victim(upstream: H11Upstream, path: str) -> list[str]:
    problems = []
    mine = [r for r in upstream.requests() if r.target == path and r.complete]
    if len(mine) != 1:
        return [f"victim request arrived {len(mine)} times upstream"]
    req = mine[0]
    if req.method != "GET" or req.body:
        problems.append(f"victim request altered: {req.describe()}")
    if req.all(b"cookie") != [b"victim=1"] or req.all(b"authorization") != [b"Bearer victim"]:
        problems.append(f"victim credentials altered: {req.headers}")
    for other in upstream.requests():
        if other is req:
            continue
        for name in (b"cookie", b"authorization"):
            if any(b"victim" in v for v in other.all(name)):
                problems.append(f"victim {name.decode()} on another request: {other.describe()}")
    return problems


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def h11_upstream() -> AsyncIterator[H11Upstream]:
    up = H11Upstream()
    await up.start()
    yield up
    await up.stop()


async def start_proxy(upstream_url: str) -> Running:
    text = CONFIG.format(upstream=upstream_url)
    settings_, _ = parse_settings(text, "differential.yaml")
    return await start(settings_)


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[str], Awaitable[Running]]]:
    running: list[Running] = []

    async def factory(url: str) -> Running:
        proxy = await start_proxy(url)
        running.append(proxy)
        return proxy

    yield factory
    for proxy in running:
        await proxy.stop()


# --- 1. the corpus of hostile requests -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    data: bytes
    methods: tuple[str, ...] = ("GET",)  # the requests in ``data``, as a correct parser reads it
    bodies: tuple[bytes | None, ...] = ()  # what each forwarded (200) answer must say
    status: frozenset[int] | None = None  # allowed statuses of the first answer (None: any)
    close: bool = False  # the first answer must close the connection
    refused: bool = False  # nothing of ``data`` may reach the upstream
    incomplete: bool = False  # ``data`` stops mid-request: an answer may never come
    forbid: tuple[str, ...] = ()  # targets that must never reach the upstream
    allow: bool = False  # the first answer must carry an Allow header (405)
    silent: bool = False  # closing without an answer is acceptable
    strict_400: bool = False  # a 400 is acceptable if it closes and nothing was forwarded


HOST = "Host: front.test"
HIDDEN = f"DELETE {SECRET} HTTP/1.1\r\n{HOST}\r\n\r\n".encode()


def req(
    method: str = "GET",
    target: str = "/public/a",
    *headers: str,
    version: str = "HTTP/1.1",
    body: bytes = b"",
    host: bool = True,
    eol: str = "\r\n",
) -> bytes:
    lines = [f"{method} {target} {version}", *([HOST] if host else []), *headers]
    return (eol.join(lines) + eol + eol).encode("latin-1") + body


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


S400 = frozenset({400})
S501 = frozenset({400, 501})
S200 = frozenset({200})
EITHER = frozenset({200, 400})

CORPUS: list[Any] = []


def case(case_id: str, data: bytes, **kwargs: Any) -> None:
    CORPUS.append(pytest.param(Case(data, **kwargs), id=case_id))


def bad(case_id: str, data: bytes, status: frozenset[int] = S400, **kwargs: Any) -> None:
    """Malformed: refused with ``status`` and Connection: close, nothing forwarded."""
    case(case_id, data, status=status, close=True, refused=True, **kwargs)


def ok(case_id: str, data: bytes, method: str = "GET", target: str = "/public/a", n: int = 0):
    case(case_id, data, methods=(method,), bodies=(seen(method, target, n),), status=S200)


# CL and TE together, duplicated, or with values that are not plain decimal digits.
SMUGGLE_BODY = chunked(b"hello") + HIDDEN
for order in ("cl-te", "te-cl"):
    cl, te = f"Content-Length: {len(SMUGGLE_BODY)}", "Transfer-Encoding: chunked"
    pair = (cl, te) if order == "cl-te" else (te, cl)
    bad(f"framing-{order}-both", req("POST", "/public/a", *pair, body=SMUGGLE_BODY))
    short = ("Content-Length: 4", te) if order == "cl-te" else (te, "Content-Length: 4")
    bad(f"framing-{order}-short-cl", req("POST", "/public/a", *short, body=SMUGGLE_BODY))
bad(
    "framing-cl-te-zero-cl",
    req("POST", "/public/a", "Content-Length: 0", "Transfer-Encoding: chunked", body=SMUGGLE_BODY),
)
bad(
    "framing-cl-te-on-get",
    req("GET", "/public/a", "Content-Length: 5", "Transfer-Encoding: chunked", body=SMUGGLE_BODY),
)
case(
    "framing-two-cl-equal",
    req("POST", "/public/a", "Content-Length: 5", "Content-Length: 5", body=b"hello"),
    methods=("POST",),
    bodies=(seen("POST", "/public/a", 5),),
    status=EITHER,
)
case(
    "framing-cl-list-equal",
    req("POST", "/public/a", "Content-Length: 5, 5", body=b"hello"),
    methods=("POST",),
    bodies=(seen("POST", "/public/a", 5),),
    status=EITHER,
)
bad(
    "framing-two-cl-different",
    req("POST", "/public/a", "Content-Length: 5", "Content-Length: 6", body=b"hello!" + HIDDEN),
    methods=("POST",),
)
bad(
    "framing-two-cl-different-reversed",
    req("POST", "/public/a", "Content-Length: 30", "Content-Length: 5", body=b"hello" + HIDDEN),
    methods=("POST",),
)
bad(
    "framing-cl-list-different",
    req("POST", "/public/a", "Content-Length: 5, 6", body=b"hello!" + HIDDEN),
    methods=("POST",),
)
for label, value in [
    ("plus-sign", "+5"),
    ("minus-sign", "-5"),
    ("hex", "0x5"),
    ("inner-space", "5 5"),
    ("decimal-point", "5.0"),
    ("exponent", "5e0"),
    ("empty", ""),
    ("letters", "five"),
    ("overflow", "99999999999999999999999"),
    ("int64-overflow", "18446744073709551621"),
    ("comma-only", ","),
    ("underscore-digits", "0_5"),
    ("nul", "5\x00"),
]:
    bad(
        f"cl-{label}",
        req("POST", "/public/a", f"Content-Length: {value}", body=b"hello" + HIDDEN),
        methods=("POST",),
    )
for label, value in [("leading-space", "  5"), ("trailing-space", "5  "), ("leading-zero", "005")]:
    ok(
        f"cl-ok-{label}",
        req("POST", "/public/a", f"Content-Length:{value}", body=b"hello"),
        "POST",
        n=5,
    )

# Transfer-Encoding values other than exactly "chunked".
CHUNKED_HELLO = chunked(b"hello")
for label, values, status in [
    ("chunked-twice-list", ["chunked, chunked"], S501),
    ("chunked-twice-fields", ["chunked", "chunked"], S501),
    ("gzip-chunked", ["gzip, chunked"], S501),
    ("gzip-then-chunked-fields", ["gzip", "chunked"], S501),
    ("identity", ["identity"], S501),
    ("xchunked", ["xchunked"], S501),
    ("chunked-identity", ["chunked, identity"], S501),
    ("chunked-x", ["chunkedx"], S501),
    ("chunk", ["chunk"], S501),
    ("empty", [""], S501),
    ("chunked-param", ["chunked;q=1"], S501),
    ("deflate", ["deflate"], S501),
    ("quoted", ['"chunked"'], S501),
    ("chunked-nul", ["chunked\x00"], S501),
]:
    bad(
        f"te-{label}",
        req("POST", "/public/a", *(f"Transfer-Encoding: {v}" for v in values), body=SMUGGLE_BODY),
        status=status,
        methods=("POST",),
    )
    bad(
        f"te-{label}-with-cl",
        req(
            "POST",
            "/public/a",
            *(f"Transfer-Encoding: {v}" for v in values),
            f"Content-Length: {len(SMUGGLE_BODY)}",
            body=SMUGGLE_BODY,
        ),
        status=status,
        methods=("POST",),
    )
for label, value in [
    ("upper", "CHUNKED"),
    ("mixed", "ChUnKeD"),
    ("ows", "  chunked  "),
    ("empty-list-element", " , chunked"),  # RFC 9110 5.6.1: empty elements are ignored
]:
    ok(
        f"te-ok-{label}",
        req("POST", "/public/a", f"Transfer-Encoding:{value}", body=CHUNKED_HELLO),
        "POST",
        n=5,
    )
case(
    "te-obs-fold",
    req("POST", "/public/a", "Transfer-Encoding:\r\n chunked", body=CHUNKED_HELLO),
    methods=("POST",),
    bodies=(seen("POST", "/public/a", 5),),
    status=EITHER,
)
bad(
    "te-obs-fold-after-identity",
    req("POST", "/public/a", "Transfer-Encoding: identity\r\n chunked", body=SMUGGLE_BODY),
    status=S501,
    methods=("POST",),
)
bad(
    "te-space-before-colon",
    req("POST", "/public/a", "Transfer-Encoding : chunked", body=SMUGGLE_BODY),
    methods=("POST",),
)
bad(
    "te-http10",
    req(
        "POST",
        "/public/a",
        "Transfer-Encoding: chunked",
        "Content-Length: 3",
        version="HTTP/1.0",
        body=SMUGGLE_BODY,
    ),
    methods=("POST",),
)

# Names listed in Connection never remove or add Content-Length, Transfer-Encoding or Host.
for listed in [
    "Content-Length",
    "content-length",
    "close, content-length",
    "keep-alive, Content-Length",
    "Transfer-Encoding",
    "transfer-encoding, close",
    "Host",
    "Host, Content-Length, Transfer-Encoding",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "Upgrade",
]:
    slug = re.sub(r"[^A-Za-z]+", "-", listed).strip("-")  # case kept: ids stay distinct
    closes = "close" in listed
    for framing, headers, body in [
        ("cl", ["Content-Length: 5"], b"hello"),
        ("chunked", ["Transfer-Encoding: chunked"], CHUNKED_HELLO),
    ]:
        case(
            f"connection-lists-{slug}-{framing}",
            req("POST", "/public/a", f"Connection: {listed}", *headers, body=body),
            methods=("POST",),
            bodies=(seen("POST", "/public/a", 5),),
            status=S200,
        )
        if not closes:
            # a second request behind it shows the body was read by its own framing
            case(
                f"connection-lists-{slug}-{framing}-then-get",
                req("POST", "/public/a", f"Connection: {listed}", *headers, body=body)
                + req("GET", "/public/b"),
                methods=("POST", "GET"),
                bodies=(seen("POST", "/public/a", 5), seen("GET", "/public/b")),
                status=S200,
            )

# obs-fold anywhere in a head: refused, or unfolded into one value.
case("obs-fold-plain-field", req("GET", "/public/a", "X-Note: a\r\n b"), status=EITHER)
case("obs-fold-tab", req("GET", "/public/a", "X-Note: a\r\n\tb"), status=EITHER)
case(
    "obs-fold-host",
    req("GET", "/public/a", "Host: front.test\r\n .evil", host=False),
    status=EITHER,
)
case(
    "obs-fold-content-length",
    req("POST", "/public/a", "Content-Length:\r\n 5", body=b"hello"),
    methods=("POST",),
    bodies=(seen("POST", "/public/a", 5),),
    status=EITHER,
)
case(
    "obs-fold-origin-on-api",
    req("GET", "/api/a", f"Origin: {EVIL}\r\n x"),
    status=frozenset({400, 403}),
    refused=True,
)
bad(
    "obs-fold-first-line", b"GET /public/a HTTP/1.1\r\n folded: x\r\n" + HOST.encode() + b"\r\n\r\n"
)
case("obs-fold-hides-a-field", req("GET", "/public/a", "X-A: 1\r\n X-Folded: yes"), status=EITHER)

# Bare LF and bare CR: in the request line, in fields, in chunk framing.
case("bare-lf-everywhere", req("GET", "/public/a", "X-A: 1", eol="\n"), status=EITHER)
case("bare-lf-request-line", b"GET /public/a HTTP/1.1\nHost: front.test\r\n\r\n", status=EITHER)
case(
    "bare-lf-between-fields",
    b"GET /public/a HTTP/1.1\r\nHost: front.test\nX-A: 1\r\n\r\n",
    status=EITHER,
)
case("bare-lf-end-of-head", b"GET /public/a HTTP/1.1\r\nHost: front.test\r\n\n", status=EITHER)
case(
    "bare-lf-hides-cl",
    b"POST /public/a HTTP/1.1\r\nHost: front.test\nContent-Length: 5\r\n\r\nhello",
    methods=("POST",),
    bodies=(seen("POST", "/public/a", 5),),
    status=EITHER,
)
bad("bare-cr-request-line", b"GET /public/a\rHTTP/1.1\r\nHost: front.test\r\n\r\n")
bad("bare-cr-in-target", b"GET /public/a\rb HTTP/1.1\r\nHost: front.test\r\n\r\n")
bad("bare-cr-field-value", req("GET", "/public/a", "X-A: a\rb"))
bad("bare-cr-field-name", req("GET", "/public/a", "X\rA: a"))
bad("bare-cr-end-of-field", req("GET", "/public/a", "X-A: a\r\rX-B: b"))
bad("bare-cr-end-of-head", b"GET /public/a HTTP/1.1\r\nHost: front.test\r\n\r" + HIDDEN)
for label, body in [
    ("size-line", b"5\nhello\r\n0\r\n\r\n"),
    ("after-data", b"5\r\nhello\n0\r\n\r\n"),
    ("last-chunk", b"5\r\nhello\r\n0\n\r\n"),
    ("end-of-trailers", b"5\r\nhello\r\n0\r\n\n"),
    ("cr-size-line", b"5\rhello\r\n0\r\n\r\n"),
    ("cr-after-data", b"5\r\nhello\r0\r\n\r\n"),
    ("cr-last-chunk", b"5\r\nhello\r\n0\r\r\n"),
]:
    bad(
        f"bare-lf-chunk-{label}" if "cr-" not in label else f"bare-cr-chunk-{label[3:]}",
        req("POST", "/public/a", "Transfer-Encoding: chunked", body=body + HIDDEN),
        methods=("POST",),
    )

# NUL bytes.
bad("nul-in-target", b"GET /public/a\x00b HTTP/1.1\r\nHost: front.test\r\n\r\n")
bad("nul-in-method", b"G\x00ET /public/a HTTP/1.1\r\nHost: front.test\r\n\r\n")
bad("nul-in-field-name", req("GET", "/public/a", "X-\x00A: 1"))
bad("nul-in-field-value", req("GET", "/public/a", "X-A: a\x00b"))
bad("nul-in-host", req("GET", "/public/a", "Host: front.test\x00.evil", host=False))
bad(
    "nul-in-chunk-ext",
    req(
        "POST",
        "/public/a",
        "Transfer-Encoding: chunked",
        body=b"5;a=\x00\r\nhello\r\n0\r\n\r\n" + HIDDEN,
    ),
    methods=("POST",),
)
ok("nul-in-body", req("POST", "/public/a", "Content-Length: 5", body=b"he\x00lo"), "POST", n=5)

# Chunk sizes and extensions.
for label, body in [
    ("invalid-hex", b"g\r\nhello\r\n0\r\n\r\n"),
    ("hex-then-junk", b"5g\r\nhello\r\n0\r\n\r\n"),
    ("0x-prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("leading-tab", b"\t5\r\nhello\r\n0\r\n\r\n"),
    ("overflow-64bit", b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n"),
    ("overflow-huge", b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n"),
    ("empty-size", b"\r\nhello\r\n0\r\n\r\n"),
    ("size-too-small", b"3\r\nhello\r\n0\r\n\r\n"),
    ("missing-crlf-after-data", b"5\r\nhelloX\r\n0\r\n\r\n"),
    ("no-crlf-after-data", b"5\r\nhello0\r\n\r\n"),
    ("ext-bare-lf", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
    ("ext-no-name", b"5;\r\nhello\r\n0\r\n\r\n"),
    ("ext-space-in-name", b"5;a b=c\r\nhello\r\n0\r\n\r\n"),
    ("ext-unterminated-quote", b'5;a="b\r\nhello\r\n0\r\n\r\n'),
]:
    bad(
        f"chunk-{label}",
        req("POST", "/public/a", "Transfer-Encoding: chunked", body=body + HIDDEN),
        methods=("POST",),
    )
for label, body in [
    ("ext-short", b"5;a=b\r\nhello\r\n0\r\n\r\n"),
    ("ext-quoted", b'5;a="b c"\r\nhello\r\n0\r\n\r\n'),
    ("ext-on-last", b"5\r\nhello\r\n0;last=1\r\n\r\n"),
    ("leading-zeros", b"0005\r\nhello\r\n000\r\n\r\n"),
    ("upper-hex", b"A\r\nhellohello\r\n0\r\n\r\n"),
]:
    n = 10 if label == "upper-hex" else 5
    ok(
        f"chunk-ok-{label}",
        req("POST", "/public/a", "Transfer-Encoding: chunked", body=body),
        "POST",
        n=n,
    )
for label, size in [("ext-1k", KiB), ("ext-16k", 16 * KiB), ("ext-100k", 100 * KiB)]:
    body = b"5;x=" + b"a" * size + b"\r\nhello\r\n0\r\n\r\n"
    case(
        f"chunk-{label}",
        req("POST", "/public/a", "Transfer-Encoding: chunked", body=body),
        methods=("POST",),
        bodies=(seen("POST", "/public/a", 5),),
    )
case(
    "chunk-missing-last-chunk",
    req("POST", "/public/a", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n"),
    methods=("POST",),
    incomplete=True,
)

# Trailers: bounded, dropped, never headers.
for label, trailer in [
    ("small", b"X-Trailer: 1\r\n"),
    ("authorization", b"Authorization: Bearer smuggled\r\n"),
    ("origin", f"Origin: {EVIL}\r\n".encode()),
    ("content-length", b"Content-Length: 1000\r\n"),
    ("transfer-encoding", b"Transfer-Encoding: chunked\r\n"),
    ("host", b"Host: smuggled.example\r\n"),
    ("cookie", b"Cookie: smuggled=1\r\n"),
    ("many", b"".join(b"X-T%d: smuggled\r\n" % i for i in range(50))),
]:
    for path in ("/public/t", "/api/t"):
        # Content-Length or Transfer-Encoding as a trailer: dropped, or refused as malformed
        framing = label in ("content-length", "transfer-encoding")
        case(
            f"trailer-{label}-{path.split('/')[1]}",
            req(
                "POST", path, "Transfer-Encoding: chunked", body=chunked(b"hello", trailer=trailer)
            ),
            methods=("POST",),
            bodies=(seen("POST", path, 5),),
            status=EITHER if framing else S200,
            strict_400=framing,
        )
for label, trailer in [
    ("field-over-8k", b"X-Big: " + b"s" * (9 * KiB) + b"\r\n"),
    ("over-100-fields", b"".join(b"X-T%d: smuggled\r\n" % i for i in range(150))),
    ("over-64k", b"".join(b"X-T%d: %s\r\n" % (i, b"s" * 4000) for i in range(20))),
    ("obs-fold", b"X-T: a\r\n smuggled\r\n"),
    ("no-colon", b"smuggled\r\n"),
]:
    case(
        f"trailer-{label}",
        req(
            "POST",
            "/public/t",
            "Transfer-Encoding: chunked",
            body=chunked(b"hello", trailer=trailer),
        ),
        methods=("POST",),
        bodies=(seen("POST", "/public/t", 5),),
    )

# Pipelines.
for n in range(2, 11):
    paths = [f"/public/p{i}" for i in range(n)]
    case(
        f"pipeline-{n}-gets",
        b"".join(req("GET", p) for p in paths),
        methods=("GET",) * n,
        bodies=tuple(seen("GET", p) for p in paths),
        status=S200,
    )
case(
    "pipeline-head-post-get",
    req("HEAD", "/public/h")
    + req("POST", "/public/p", "Content-Length: 3", body=b"abc")
    + req("GET", "/public/g"),
    methods=("HEAD", "POST", "GET"),
    bodies=(b"", seen("POST", "/public/p", 3), seen("GET", "/public/g")),
    status=S200,
)
case(
    "pipeline-chunked-then-get",
    req("POST", "/public/p", "Transfer-Encoding: chunked", body=CHUNKED_HELLO)
    + req("GET", "/public/g"),
    methods=("POST", "GET"),
    bodies=(seen("POST", "/public/p", 5), seen("GET", "/public/g")),
    status=S200,
)
case(
    "pipeline-behind-connection-close",
    req("GET", "/public/a", "Connection: close") + req("GET", "/public/discarded"),
    bodies=(seen("GET", "/public/a"),),
    status=S200,
    close=True,
    forbid=("/public/discarded",),
)
case(
    "pipeline-behind-http10",
    req("GET", "/public/a", version="HTTP/1.0") + req("GET", "/public/discarded"),
    bodies=(seen("GET", "/public/a"),),
    status=S200,
    close=True,
    forbid=("/public/discarded",),
)
case(
    "pipeline-behind-cors-refusal",
    req("GET", "/api/a", f"Origin: {EVIL}") + req("GET", "/public/b"),
    methods=("GET", "GET"),
    bodies=(None, seen("GET", "/public/b")),
    status=frozenset({403}),
    forbid=("/api/a",),
)
bad("pipeline-behind-two-hosts", req("GET", "/public/a", HOST) + req("GET", "/api/secret"))
bad(
    "pipeline-behind-bad-chunk",
    req("POST", "/public/a", "Transfer-Encoding: chunked", body=b"zz\r\n") + req("GET", SECRET),
    methods=("POST",),
)
bad(
    "pipeline-behind-431",
    req("GET", "/public/a", "X-Big: " + "b" * 9 * KiB) + HIDDEN,
    status=frozenset({431}),
)
case(
    "pipeline-behind-trace",
    req("TRACE", "/public/a") + req("GET", "/public/b"),
    methods=("TRACE", "GET"),
    bodies=(None, seen("GET", "/public/b")),
    status=frozenset({405}),
    allow=True,
    forbid=("/public/a",),
)
case(
    "pipeline-expect-continue",
    req("POST", "/public/e", "Expect: 100-continue", "Content-Length: 5", body=b"hello")
    + req("GET", "/public/g"),
    methods=("POST", "GET"),
    bodies=(seen("POST", "/public/e", 5), seen("GET", "/public/g")),
    status=S200,
)

# Upgrades with a body: the body is never read as a request.
for label, upgrade in [
    (
        "h2c",
        [
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
        ],
    ),
    (
        "websocket",
        [
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    ),
]:
    case(
        f"upgrade-{label}-with-cl-body",
        req("POST", "/public/u", *upgrade, f"Content-Length: {len(HIDDEN)}", body=HIDDEN),
        methods=("POST",),
        bodies=(seen("POST", "/public/u", len(HIDDEN)),),
    )
    case(
        f"upgrade-{label}-with-chunked-body",
        req("POST", "/public/u", *upgrade, "Transfer-Encoding: chunked", body=chunked(HIDDEN)),
        methods=("POST",),
        bodies=(seen("POST", "/public/u", len(HIDDEN)),),
    )
case(
    "upgrade-h2c-without-body-then-get",
    req("GET", "/public/u", "Connection: Upgrade", "Upgrade: h2c") + req("GET", "/public/g"),
    methods=("GET", "GET"),
    bodies=(seen("GET", "/public/u"), seen("GET", "/public/g")),
    status=S200,
)
case(
    "upgrade-websocket-refused-origin-then-get",
    req(
        "GET",
        "/api/ws",
        f"Origin: {EVIL}",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    + req("GET", "/public/b"),
    methods=("GET", "GET"),
    bodies=(None, seen("GET", "/public/b")),
    status=frozenset({403}),
    forbid=("/api/ws",),
)

# Target forms, methods the proxy never forwards.
ok("absolute-form", req("GET", "http://front.test/public/abs"), target="/public/abs")
ok("absolute-form-other-host", req("GET", "http://evil.example/public/abs"), target="/public/abs")
case("absolute-form-no-path", req("GET", "http://front.test"), status=frozenset({200, 400, 404}))
case("absolute-form-ftp", req("GET", "ftp://front.test/public/a"), status=S400, refused=True)
case("asterisk-options", req("OPTIONS", "*"), methods=("OPTIONS",))
case("asterisk-get", req("GET", "*"), status=S400, refused=True)
for label, data in [
    ("connect-authority", req("CONNECT", "front.test:443")),
    ("connect-path", req("CONNECT", "/public/a")),
    ("connect-absolute", req("CONNECT", "http://front.test/public/a")),
    ("connect-with-body", req("CONNECT", "front.test:443", "Content-Length: 5", body=b"hello")),
    ("trace-path", req("TRACE", "/public/a")),
    ("trace-asterisk", req("TRACE", "*")),
    ("trace-absolute", req("TRACE", "http://front.test/public/a")),
    ("trace-api", req("TRACE", "/api/a")),
]:
    case(
        label,
        data,
        methods=(label.split("-")[0].upper(),),
        status=frozenset({405}),
        refused=True,
        allow=True,
    )
bad("authority-form-get", req("GET", "front.test:443"))
case("target-fragment", req("GET", "/public/a#frag"), bodies=(seen("GET", "/public/a"),))
case("target-dot-segments", req("GET", "/public/../api/x"), bodies=(seen("GET", "/api/x"),))
case(
    "target-over-8k", req("GET", "/public/" + "a" * 9 * KiB), status=frozenset({414}), refused=True
)
case(
    "target-over-64k",
    req("GET", "/public/" + "a" * 70 * KiB),
    status=frozenset({414, 431}),
    refused=True,
)

# Versions.
ok("version-http10", req("GET", "/public/a", version="HTTP/1.0"))
ok("version-http10-no-host", req("GET", "/public/a", version="HTTP/1.0", host=False))
ok(
    "version-http10-keep-alive",
    req("GET", "/public/a", "Connection: keep-alive", version="HTTP/1.0"),
)
case("version-http09", b"GET /public/a\r\n\r\n" + HIDDEN, status=S400, refused=True, silent=True)
for label, version, status in [
    ("http20", "HTTP/2.0", frozenset({505})),
    ("http12", "HTTP/1.2", frozenset({505})),
    ("http30", "HTTP/3.0", frozenset({505})),
    ("http09-explicit", "HTTP/0.9", frozenset({505, 400})),
    ("lowercase", "http/1.1", frozenset({400, 505})),
    ("missing-minor", "HTTP/1", frozenset({400, 505})),
    ("two-digit-minor", "HTTP/1.10", frozenset({400, 505})),
    ("no-dot", "HTTP/11", frozenset({400, 505})),
    ("trailing-space", "HTTP/1.1 ", frozenset({400})),
    ("garbage", "HTXP/1.1", frozenset({400})),
]:
    case(
        f"version-{label}",
        req("GET", "/public/a", version=version) + HIDDEN,
        status=status,
        refused=True,
        close=True,
    )
case(
    "version-h2-preface",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    methods=("PRI",),
    status=frozenset({400, 505}),
    refused=True,
    silent=True,
)

# Header names: underscores are dropped, malformed names refused.
case(
    "name-transfer-underscore-encoding",
    req(
        "POST",
        "/public/a",
        "Transfer_Encoding: chunked",
        f"Content-Length: {len(CHUNKED_HELLO)}",
        body=CHUNKED_HELLO,
    ),
    methods=("POST",),
    bodies=(seen("POST", "/public/a", len(CHUNKED_HELLO)),),
    status=S200,
)
case(
    "name-content-underscore-length",
    req("GET", "/public/a", "Content_Length: 5") + req("GET", "/public/b"),
    methods=("GET", "GET"),
    bodies=(seen("GET", "/public/a"), seen("GET", "/public/b")),
    status=S200,
)
ok("name-x-forwarded-underscore-host", req("GET", "/public/a", "X_Forwarded_Host: smuggled"))
ok("name-x-forwarded-underscore-for", req("GET", "/public/a", "X_Forwarded_For: smuggled"))
case(
    "name-origin-underscore",
    req("GET", "/api/a", "Origin: https://app.test", "Access_Control_Request_Method: smuggled"),
    status=S200,
)
bad("name-space-before-colon", req("GET", "/public/a", "X-A : 1"))
bad(
    "name-cl-space-before-colon",
    req("POST", "/public/a", "Content-Length : 5", body=b"hello" + HIDDEN),
    methods=("POST",),
)
bad("name-tab-before-colon", req("GET", "/public/a", "X-A\t: 1"))
bad(
    "name-inner-space",
    req("POST", "/public/a", "Content Length: 5", body=b"hello" + HIDDEN),
    methods=("POST",),
)
bad("name-empty", req("GET", "/public/a", ": x"))
bad("name-not-a-token", req("GET", "/public/a", "X(A): 1"))
bad("name-no-colon", req("GET", "/public/a", "X-A 1"))
bad("name-host-space-before-colon", req("GET", "/public/a", "Host : front.test", host=False))

# Sizes.
case(
    "size-field-8000",
    req("GET", "/public/a", "X-Big: " + "b" * 8000),
    status=S200,
    bodies=(seen("GET", "/public/a"),),
)
case(
    "size-field-over-8k",
    req("GET", "/public/a", "X-Big: " + "b" * 9 * KiB),
    status=frozenset({431}),
    refused=True,
)
case(
    "size-name-over-8k",
    req("GET", "/public/a", "X-" + "b" * 9 * KiB + ": 1"),
    status=frozenset({431}),
    refused=True,
)
case(
    "size-95-fields",
    req("GET", "/public/a", *(f"X-F{i}: v" for i in range(95))),
    status=S200,
    bodies=(seen("GET", "/public/a"),),
)
case(
    "size-101-fields",
    req("GET", "/public/a", *(f"X-F{i}: v" for i in range(101))),
    status=frozenset({431}),
    refused=True,
)
case(
    "size-1000-fields",
    req("GET", "/public/a", *(f"X-F{i}: v" for i in range(1000))),
    status=frozenset({431}),
    refused=True,
)
case(
    "size-head-over-64k",
    req("GET", "/public/a", *(f"X-F{i}: {'v' * 800}" for i in range(90))),
    status=frozenset({431}),
    refused=True,
)
case(
    "size-head-1mib",
    req("GET", "/public/a", *(f"X-F{i}: {'v' * 8000}" for i in range(128))),
    status=frozenset({431}),
    refused=True,
)

# Host.
case("host-missing", req("GET", "/public/a", host=False), status=S400, refused=True)
case("host-twice-equal", req("GET", "/public/a", HOST), status=S400, refused=True)
case(
    "host-twice-different", req("GET", "/public/a", "Host: evil.example"), status=S400, refused=True
)
case("host-twice-case", req("GET", "/public/a", "host: front.test"), status=S400, refused=True)
case(
    "host-missing-absolute-form",
    req("GET", "http://front.test/public/a", host=False),
    status=S400,
    refused=True,
)
case("host-empty", req("GET", "/public/a", "Host:", host=False))
case("host-list", req("GET", "/public/a", "Host: a.example, b.example", host=False))
case(
    "host-http10-twice",
    req("GET", "/public/a", HOST, version="HTTP/1.0"),
    status=S400,
    refused=True,
)

# CORS refusals never reach the upstream, whatever follows them.
case(
    "cors-refused-get",
    req("GET", "/api/a", f"Origin: {EVIL}"),
    status=frozenset({403}),
    refused=True,
)
case(
    "cors-refused-post-with-body-hiding-request",
    req("POST", "/api/a", f"Origin: {EVIL}", f"Content-Length: {len(HIDDEN)}", body=HIDDEN),
    methods=("POST",),
    status=frozenset({403}),
    refused=True,
)
case(
    "cors-refused-chunked-hiding-request",
    req("POST", "/api/a", f"Origin: {EVIL}", "Transfer-Encoding: chunked", body=chunked(HIDDEN)),
    methods=("POST",),
    status=frozenset({403}),
    refused=True,
)
case(
    "cors-allowed-public",
    req("GET", "/public/a", f"Origin: {EVIL}"),
    status=S200,
    bodies=(seen("GET", "/public/a"),),
)
case(
    "cl-body-hides-request-get",
    req("GET", "/public/a", f"Content-Length: {len(HIDDEN)}", body=HIDDEN),
    bodies=(seen("GET", "/public/a", len(HIDDEN)),),
    status=S200,
)
case(
    "cl-incomplete-body",
    req("POST", "/public/a", "Content-Length: 10", body=b"hello"),
    methods=("POST",),
    incomplete=True,
)
case("method-lowercase", req("get", "/public/a"), methods=("GET",))
case("method-unknown", req("FOO", "/public/a"), methods=("FOO",))


def expect_replies(case_: Case, replies: list[Reply]) -> list[str]:
    problems = []
    if case_.strict_400 and replies and replies[0].status == 400:
        case_ = dataclasses.replace(case_, close=True, refused=True)
    if len(replies) > len(case_.methods):
        problems.append(f"{len(replies)} answers to {len(case_.methods)} requests")
    if not replies:
        if not (case_.incomplete or case_.silent):
            problems.append("no answer at all (connection closed)")
        return problems
    first = replies[0]
    if case_.status is not None and first.status not in case_.status:
        problems.append(f"first answer {first.short()}, expected one of {sorted(case_.status)}")
    if case_.close and first.status >= 400 and not first.closes:
        problems.append(f"{first.status} without Connection: close")
    if case_.close and first.status < 400 and not first.closes:
        problems.append(f"{first.status} keeps alive a connection that must close")
    if case_.allow and first.status == 405 and not first.all(b"allow"):
        problems.append("405 without an Allow header")
    for index, reply in enumerate(replies):
        if reply.status == 200 and index < len(case_.bodies):
            wanted = case_.bodies[index]
            method = case_.methods[index] if index < len(case_.methods) else "GET"
            if method == "HEAD":
                wanted = b""
            if wanted is not None and reply.body != wanted:
                problems.append(f"answer {index} is {reply.body[:80]!r}, expected {wanted!r}")
        if MARK in reply.body or any(MARK in v for _, v in reply.headers):
            problems.append(f"answer {index} carries smuggled bytes: {reply.short()}")
        if reply.status == 200 and index >= len(case_.bodies) and SECRET.encode() in reply.body:
            problems.append(f"answer {index} answers the hidden request")
    return problems


@pytest.mark.parametrize("case_", CORPUS)
async def test_hostile_request(case_: Case, h11_upstream, proxy_for, capsys) -> None:
    proxy = await proxy_for(h11_upstream.url)
    capsys.readouterr()
    problems: list[str] = []
    client = await Client.open(proxy.port)
    replies: list[Reply] = []
    try:
        client.send(case_.data)
        wait = 0.3 if case_.incomplete else READ_TIMEOUT
        for method in case_.methods:
            reply = await client.next_reply(method, wait)
            if reply is None:
                break
            replies.append(reply)
            if reply.closes:
                break
        if case_.incomplete and client.problems[-1:] == [f"no answer to POST within {wait}s"]:
            client.problems.pop()  # the proxy is waiting for the rest of the body: fine
        problems += expect_replies(case_, replies)
        if replies and replies[-1].closes:
            await client.closes()
        elif client.open_for_more and not case_.incomplete:
            # Whatever the proxy made of the hostile bytes, the next request is read afresh.
            client.send(req("GET", "/__follow"))
            follow = await client.next_reply("GET")
            if follow is not None and follow.body != seen("GET", "/__follow"):
                problems.append(f"follow-up got {follow.short()}")
            elif follow is None and not client.problems:
                problems.append("connection closed without Connection: close")
        problems += client.problems
    finally:
        await client.close()
    problems += await victim_round(proxy.port, "/__victim")
    problems += await settle(proxy, h11_upstream)
    entries = log_entries(capsys)
    refused = case_.refused or (case_.strict_400 and bool(replies) and replies[0].status == 400)
    problems += check_upstream(h11_upstream, entries, case_.forbid, "refused" if refused else None)
    problems += check_victim(h11_upstream, "/__victim")
    assert not problems, "\n".join(problems)


# --- 2. hostile upstream answers ------------------------------------------------------------


Stream = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Answer:
    data: bytes | Stream  # the upstream's answer to the first request
    method: str = "GET"
    body: bytes | None = b"hello"  # what a relayed 2xx answer must carry (None: not checked)
    status: frozenset[int] = frozenset({200, 502})  # acceptable statuses for the client
    cut: bool = False  # the proxy may cut the connection (the head was already relayed)
    rss: bool = False  # check the proxy's memory stays bounded
    close: bool = False  # the upstream closes after its answer


def answer(status: str, *headers: str, body: bytes = b"", eol: str = "\r\n") -> bytes:
    return (eol.join([f"HTTP/1.1 {status}", *headers]) + eol + eol).encode("latin-1") + body


SMUGGLED_ANSWER = answer("200 OK", "Content-Length: 8", body=b"smuggled")
HELLO = answer("200 OK", "Content-Length: 5", body=b"hello")
B502 = frozenset({502})


async def stream_header(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: ")
    chunk = b"h" * (64 * KiB)
    for _ in range(64 * MiB // len(chunk)):
        writer.write(chunk)
        async with asyncio.timeout(READ_TIMEOUT):
            await writer.drain()
    writer.write(b"\r\nContent-Length: 5\r\n\r\nhello")


ANSWERS = [
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Connection: Content-Length",
                "Content-Length: 5",
                body=b"hello" + SMUGGLED_ANSWER,
            )
        ),
        id="connection-lists-cl",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Connection: Transfer-Encoding",
                "Transfer-Encoding: chunked",
                body=CHUNKED_HELLO + SMUGGLED_ANSWER,
            )
        ),
        id="connection-lists-te",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Connection: close, Content-Length",
                "Content-Length: 5",
                body=b"hello" + SMUGGLED_ANSWER,
            )
        ),
        id="connection-close-and-cl",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Content-Length: 5",
                "Transfer-Encoding: chunked",
                body=CHUNKED_HELLO + SMUGGLED_ANSWER,
            ),
            status=B502,
        ),
        id="cl-and-te",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK", "Content-Length: 5", "Content-Length: 13", body=b"hello" + SMUGGLED_ANSWER
            ),
            status=B502,
        ),
        id="two-cl-different",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK", "Content-Length: 5", "Content-Length: 5", body=b"hello" + SMUGGLED_ANSWER
            )
        ),
        id="two-cl-equal",
    ),
    pytest.param(
        Answer(
            answer("200 OK", "Content-Length: +5", body=b"hello" + SMUGGLED_ANSWER), status=B502
        ),
        id="cl-plus-sign",
    ),
    pytest.param(
        Answer(answer("200 OK", "Content-Length: -1", body=b"hello"), status=B502), id="cl-negative"
    ),
    pytest.param(
        Answer(answer("200 OK", "Content-Length: 3", body=b"hello" + SMUGGLED_ANSWER), body=b"hel"),
        id="cl-shorter-than-body",
    ),
    pytest.param(
        Answer(
            answer("204 No Content", "Content-Length: 5", body=b"hello" + SMUGGLED_ANSWER),
            body=b"",
            status=frozenset({204, 502}),
        ),
        id="204-with-cl-and-body",
    ),
    pytest.param(
        Answer(
            answer("204 No Content", body=b"hello" + SMUGGLED_ANSWER),
            body=b"",
            status=frozenset({204, 502}),
        ),
        id="204-with-body",
    ),
    pytest.param(
        Answer(answer("204 No Content", "Content-Length: 0"), body=b"", status=frozenset({204})),
        id="204-with-cl-0",
    ),
    pytest.param(
        Answer(
            answer(
                "204 No Content", "Transfer-Encoding: chunked", body=CHUNKED_HELLO + SMUGGLED_ANSWER
            ),
            body=b"",
            status=frozenset({204, 502}),
        ),
        id="204-with-chunked-body",
    ),
    pytest.param(
        Answer(
            answer("304 Not Modified", "Content-Length: 5", body=b"hello" + SMUGGLED_ANSWER),
            body=b"",
            status=frozenset({304, 502}),
        ),
        id="304-with-cl-and-body",
    ),
    pytest.param(
        Answer(
            answer("304 Not Modified", "Content-Length: 500"), body=b"", status=frozenset({304})
        ),
        id="304-with-cl-no-body",
    ),
    pytest.param(
        Answer(HELLO + SMUGGLED_ANSWER, method="HEAD", body=b"", status=frozenset({200, 502})),
        id="head-answered-with-body",
    ),
    pytest.param(
        Answer(
            answer("200 OK", "Transfer-Encoding: chunked", body=CHUNKED_HELLO),
            method="HEAD",
            body=b"",
            status=frozenset({200, 502}),
        ),
        id="head-answered-with-chunked-body",
    ),
    pytest.param(Answer(answer("100 Continue") + HELLO), id="one-100"),
    pytest.param(
        Answer(answer("103 Early Hints", "Link: </a>; rel=preload") * 5 + HELLO), id="five-1xx"
    ),
    pytest.param(Answer(answer("100 Continue") * 1000 + HELLO), id="thousand-1xx"),
    pytest.param(
        Answer(
            answer("101 Switching Protocols", "Connection: Upgrade", "Upgrade: h2c")
            + SMUGGLED_ANSWER,
            status=B502,
        ),
        id="101-to-plain-request",
    ),
    pytest.param(
        Answer(b"HTTP/1.1 200 " + b"r" * MiB + b"\r\nContent-Length: 5\r\n\r\nhello", status=B502),
        id="reason-1mib",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK", *(f"X-H{i}: v" for i in range(10_000)), "Content-Length: 5", body=b"hello"
            ),
            status=B502,
        ),
        id="ten-thousand-headers",
    ),
    pytest.param(
        Answer(
            answer("200 OK", "X-Big: " + "b" * 70 * KiB, "Content-Length: 5", body=b"hello"),
            status=B502,
        ),
        id="header-70k",
    ),
    pytest.param(Answer(stream_header, status=B502, rss=True), id="header-64mib-streamed"),
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Transfer-Encoding: chunked",
                body=chunked(b"hello", trailer=b"Set-Cookie: smuggled=1\r\n"),
            )
        ),
        id="trailer-set-cookie",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Transfer-Encoding: chunked",
                body=chunked(
                    b"hello",
                    trailer=b"".join(b"X-T%d: %s\r\n" % (i, b"s" * 1000) for i in range(1000)),
                ),
            ),
            cut=True,
        ),
        id="trailers-1mib",
    ),
    pytest.param(
        Answer(
            answer("200 OK", "Transfer-Encoding: gzip, chunked", body=CHUNKED_HELLO), status=B502
        ),
        id="te-gzip-chunked",
    ),
    pytest.param(
        Answer(
            answer(
                "200 OK",
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: chunked",
                body=CHUNKED_HELLO,
            ),
            status=B502,
        ),
        id="te-chunked-twice",
    ),
    pytest.param(
        Answer(answer("200 OK", "Content-Length: 5", body=b"hello", eol="\n")), id="bare-lf"
    ),
    pytest.param(Answer(b"\x16\x03\x01 garbage \x00\xff\r\n\r\n", status=B502), id="garbage"),
    pytest.param(
        Answer(b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", status=B502), id="status-2000"
    ),
    pytest.param(
        Answer(
            answer("200 OK", "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"),
            status=B502,
            cut=True,
        ),
        id="bad-chunk-size",
    ),
    pytest.param(
        Answer(answer("200 OK", "X-A: a\r\n folded", "Content-Length: 5", body=b"hello")),
        id="obs-fold",
    ),
    pytest.param(
        Answer(
            answer("200 OK", "Content-Length: 5", "Content-Length : 6", body=b"hello!"), status=B502
        ),
        id="cl-space-before-colon",
    ),
    pytest.param(
        Answer(b"HTTP/1.0 200 OK\r\n\r\nhello", body=b"hello", close=True), id="http10-until-close"
    ),
]


async def scripted_upstream(
    first: bytes | Stream, close: bool = False
) -> tuple[asyncio.Server, list[str]]:
    """Answers the first request with ``first``, every later one as the h11 upstream does."""
    seen_requests: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(30):
                    head = await reader.readuntil(b"\r\n\r\n")
                    method, target = head.split(b" ", 2)[:2]
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    if length:
                        await reader.readexactly(int(length.group(1)))
                seen_requests.append(f"{method.decode()} {target.decode()}")
                if len(seen_requests) == 1:
                    if isinstance(first, bytes):
                        writer.write(first)
                    else:
                        await first(writer)
                else:
                    body = seen(method.decode(), target.decode())
                    writer.write(answer("200 OK", f"Content-Length: {len(body)}", body=body))
                async with asyncio.timeout(30):
                    await writer.drain()
                if close and len(seen_requests) == 1:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, seen_requests


async def peak_rss(stop: asyncio.Event) -> int:
    process = psutil.Process()
    peak = process.memory_info().rss
    while not stop.is_set():
        peak = max(peak, process.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)
    return peak


@pytest.mark.parametrize("answer_", ANSWERS)
async def test_hostile_upstream_answer(answer_: Answer, proxy_for) -> None:
    server, _ = await scripted_upstream(answer_.data, answer_.close)
    port = server.sockets[0].getsockname()[1]
    problems: list[str] = []
    client = None
    stop = asyncio.Event()
    rss_before = psutil.Process().memory_info().rss
    watcher = asyncio.ensure_future(peak_rss(stop)) if answer_.rss else None
    try:
        proxy = await proxy_for(f"http://127.0.0.1:{port}")
        client = await Client.open(proxy.port)
        client.send(req(answer_.method, "/public/a"))
        reply = await client.next_reply(answer_.method, 30 if answer_.rss else READ_TIMEOUT)
        if reply is None:
            if not (answer_.cut and client.eof):
                problems.append("no answer (connection cut)")
            client.problems = [p for p in client.problems if not answer_.cut]
        else:
            problems += check_answer(answer_, reply)
            second = None
            if reply.closes:
                await client.closes()
            elif client.open_for_more:
                client.send(req("GET", "/__follow"))
                second = await client.next_reply("GET")
                if second is None or second.body != seen("GET", "/__follow"):
                    problems.append(f"follow-up got {second and second.short()}")
        problems += client.problems
        if watcher is not None:
            stop.set()
            grown = (await watcher - rss_before) / MiB
            if grown > 100:
                problems.append(f"proxy RSS grew by {grown:.0f} MiB")
    finally:
        stop.set()
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)
        if client is not None:
            await client.close()
        server.close()
    assert not problems, "\n".join(problems)


def check_answer(answer_: Answer, reply: Reply) -> list[str]:
    problems = []
    if reply.status not in answer_.status:
        problems.append(f"client got {reply.short()}, expected one of {sorted(answer_.status)}")
    if MARK in reply.body or any(MARK in v.lower() for _, v in reply.headers + reply.trailers):
        problems.append(f"smuggled bytes relayed: {reply.short()} {reply.trailers}")
    if reply.trailers:
        problems.append(f"upstream trailers relayed: {reply.trailers}")
    if reply.status in (204, 304) and reply.all(b"content-length"):
        problems.append(f"{reply.status} with Content-Length {reply.all(b'content-length')}")
    if (reply.status in (204, 304) or answer_.method == "HEAD") and reply.body:
        problems.append(f"{reply.status} to {answer_.method} carries a body {reply.body[:40]!r}")
    if (
        200 <= reply.status < 300
        and answer_.body is not None
        and answer_.method != "HEAD"
        and reply.body != answer_.body
    ):
        problems.append(f"relayed body {reply.body[:60]!r}, upstream sent {answer_.body!r}")
    if reply.status == 502 and not reply.closes:
        pass  # a 502 may keep the client connection: the follow-up shows it works
    return problems


# --- 3. the property: a grammar of requests, mutated ------------------------------------------


class LoopThread:
    """An event loop in a background thread: one proxy and one upstream for all examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def run(self, coro: Awaitable[Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def fuzz_servers() -> Iterator[tuple[LoopThread, H11Upstream, Running]]:
    with LoopThread() as lt:
        upstream = H11Upstream()
        lt.run(upstream.start())
        proxy: Running = lt.run(start_proxy(upstream.url))
        try:
            yield lt, upstream, proxy
        finally:
            lt.run(proxy.stop())
            lt.run(upstream.stop())


EXTRA_HEADERS = [
    f"Origin: {EVIL}",
    "Origin: https://app.test",
    "Connection: keep-alive",
    "Connection: close",
    "Connection: Content-Length",
    "Connection: Transfer-Encoding",
    "Connection: Host",
    "Expect: 100-continue",
    "X-Token: t",
    "Cookie: client=1",
    "Upgrade: h2c",
    "Transfer_Encoding: chunked",
    "X_Forwarded_Host: smuggled",
    "Accept: */*",
]
INJECTED = [
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: identity",
    "Content-Length: 3",
    "Content-Length: 0",
    "Content-Length: -1",
    "Content-Length: 99999999999999999999",
    "Host: other.example",
    "Connection: close, Content-Length",
    "Content-Length : 1",
    "X-Fold: a\r\n folded",
    "X-Injected: yes\r\n\r\n",
]


@dataclass
class FuzzRequest:
    method: str
    head: list[str]
    body: bytes


@st.composite
def fuzz_request(draw: st.DrawFn) -> FuzzRequest:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE"]))
    path = draw(st.sampled_from(["/public/f", "/api/f", "/public/f?q=1", "/public/%41", "*"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/1.2"]))
    head = [f"{method} {path} {version}", HOST]
    head += draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=3))
    framing = draw(st.sampled_from(["none", "none", "cl", "chunked"]))
    data = draw(st.binary(max_size=40))
    body = b""
    if framing == "cl":
        head.append(f"Content-Length: {len(data)}")
        body = data
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(data)))
        ext = draw(st.sampled_from([b"", b";a=b", b';q="x y"', b";" + b"e" * 300]))
        trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"Authorization: smuggled\r\n"]))
        parts = [p for p in (data[:cut], data[cut:]) if p]
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts)
        body += b"0\r\n" + trailer + b"\r\n"
    return FuzzRequest(method, head, body)


@st.composite
def fuzz_bytes(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """Serialized requests after mutations, and the methods in order (to prime h11)."""
    requests = draw(st.lists(fuzz_request(), min_size=1, max_size=3))
    out = []
    for request in requests:
        head = list(request.head)
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["dup", "drop", "case", "inject", "none"]))
            index = draw(st.integers(1, max(1, len(head) - 1)))
            if index >= len(head) or kind == "none":
                continue
            if kind == "dup":
                head.insert(index, head[index])
            elif kind == "drop":
                del head[index]
            elif kind == "case":
                name, sep, value = head[index].partition(":")
                head[index] = draw(st.sampled_from([name.upper(), name.lower()])) + sep + value
            else:
                head.insert(index, draw(st.sampled_from(INJECTED)))
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body
        for _ in range(draw(st.integers(0, 1))):
            kind = draw(st.sampled_from(["lf", "insert", "none"]))
            if kind == "lf" and b"\r\n" in data:
                spots = [m.start() for m in re.finditer(b"\r\n", data)]
                spot = draw(st.sampled_from(spots))
                data = data[:spot] + data[spot + 1 :]
            elif kind == "insert":
                spot = draw(st.integers(0, len(data)))
                data = (
                    data[:spot] + draw(st.sampled_from([b"\x00", b" ", b"\t", b"\r"])) + data[spot:]
                )
        out.append(data)
    raw = b"".join(out)
    methods = [r.method for r in requests]
    tail = draw(st.sampled_from(["none"] * 6 + ["truncate", "hidden"]))
    if tail == "truncate":
        cut = draw(st.integers(1, max(1, len(raw) - 1)))
        raw = raw[:cut]
        ends = [sum(map(len, out[: i + 1])) for i in range(len(out))]
        methods = [m for m, end in zip(methods, ends, strict=True) if end <= cut]
    elif tail == "hidden":
        raw += req("DELETE", "/public/second")  # forwarded only if the proxy logs it
    return raw, methods + (["DELETE"] if tail == "hidden" else [])


def parse_one(data: bytes, prime: str, eof: bool) -> tuple[Reply | None, int, str | None]:
    """One answer off the front of ``data`` by a fresh h11 client that sent ``prime``:
    (the answer or None when incomplete, bytes used, an error)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=4 * MiB)
    conn.send(h11.Request(method=prime, target="/", headers=[("Host", "proxy.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    reply: Reply | None = None
    interim, body = 0, bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return None, 0, f"h11: {exc}"
        if event is h11.NEED_DATA:
            if reply is None and interim and not conn.trailing_data[0]:
                return None, len(data), "interim"  # 100 Continue, the final answer still owed
            return None, 0, None
        if isinstance(event, h11.InformationalResponse):
            interim += 1
        elif isinstance(event, h11.Response):
            reply = Reply(event.status_code, list(event.headers), interim=interim)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert reply is not None
            reply.body, reply.trailers = bytes(body), list(event.headers)
            reply.closes = conn.their_state is h11.MUST_CLOSE
            return reply, len(data) - len(conn.trailing_data[0]), None
        else:
            return None, 0, "closed mid-answer"


def parse_all(data: bytes, methods: list[str], eof: bool) -> tuple[list[Reply], str | None]:
    """All of ``data`` as complete answers. Which request each answers is the proxy's reading
    of the bytes, which may differ from the generator's: an answer primed as the expected
    method that does not parse is tried as the other of GET/HEAD (HEAD answers have no body)."""

    def parse(rest: bytes, index: int) -> tuple[list[Reply], str | None]:
        if not rest:
            return [], None
        expected = methods[index] if index < len(methods) else "GET"
        expected = expected if expected == "HEAD" else "GET"
        error = None
        for prime in (expected, "GET" if expected == "HEAD" else "HEAD"):
            reply, used, problem = parse_one(rest, prime, eof)
            if problem == "interim" and not eof:
                return [], None
            if reply is None:
                error = error or problem or f"incomplete answer: {rest[:80]!r}"
                continue
            if reply.closes:
                if rest[used:]:
                    error = error or f"bytes after a closing answer: {rest[used : used + 80]!r}"
                    continue
                return [reply], None
            tail, problem = parse(rest[used:], index + 1)
            if problem is None:
                return [reply, *tail], None
            error = error or problem
        return [], error

    return parse(data, 0)


FUZZ_QUIET = 0.1  # no more bytes for this long and fewer answers than requests: none coming


async def fuzz_example(
    proxy: Running, upstream: H11Upstream, raw: bytes, methods: list[str], number: int
) -> tuple[list[str], list[Reply]]:
    problems: list[str] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT
    data, eof = bytearray(), False
    try:
        writer.write(raw)
        while True:
            replies, error = parse_all(bytes(data), methods, eof)
            if eof:
                break
            done = error is None and len(replies) >= len(methods)
            closing = error is None and replies and replies[-1].closes
            wait = 1.0 if closing else FUZZ_QUIET if not done else 0.0
            if done and not closing:
                break
            try:
                async with asyncio.timeout(min(wait, max(0.0, deadline - loop.time()))):
                    chunk = await reader.read(65536)
            except TimeoutError:
                break
            except ConnectionError:
                chunk = b""
            data += chunk
            eof = not chunk
        replies, error = parse_all(bytes(data), methods, eof)
        if error is not None:
            problems.append(error)
        elif replies and replies[-1].closes and not eof:
            problems.append("connection not closed after a closing answer")
    finally:
        writer.transport.abort()
    problems += await victim_round(proxy.port, f"/__victim{number}")
    problems += await settle(proxy, upstream)
    return problems, replies


def run_fuzz(examples: int, capsys: pytest.CaptureFixture[str]) -> None:
    counter = iter(range(10**9))
    with fuzz_servers() as (lt, upstream, proxy):
        capsys.readouterr()

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(fuzz_bytes())
        def prop(sample: tuple[bytes, list[str]]) -> None:
            raw, methods = sample
            number = next(counter)
            problems, replies = lt.run(fuzz_example(proxy, upstream, raw, methods, number))
            entries = log_entries(capsys)
            try:
                problems += check_upstream(upstream, entries)
                problems += check_victim(upstream, f"/__victim{number}")
            finally:
                for conn in upstream.conns:  # this example is checked: start the next afresh
                    conn.requests = [r for r in conn.requests if not r.complete]
                    conn.error, conn.leftover = None, b""
            mine = [e for e in entries if e["path"] != f"/__victim{number}"]
            owed = [e for e in mine if e["status"] != 499]
            if len(replies) > len(owed) + 1:  # +1: a refusal of bytes that were no request
                problems.append(f"{len(replies)} answers, {len(owed)} requests logged")
            for reply, entry in zip(replies, mine, strict=False):
                if reply.status == 200 and entry["upstream_status"] == 200:
                    method = entry["method"]
                    wanted = b"" if method == "HEAD" else b"seen " + method.encode()
                    if not reply.body.startswith(wanted):
                        problems.append(f"answer {reply.short()} for {method} logged")
            assert not problems, f"{raw!r}\n" + "\n".join(problems)

        prop()


def test_fuzz_requests_short(capsys) -> None:
    """300 examples (about 2 s) in the default run; the 2000 below run with --all."""
    run_fuzz(int(os.environ.get("CORSPROXY_FUZZ_SHORT", "300")), capsys)


@pytest.mark.slow
def test_fuzz_requests_2000(capsys) -> None:
    run_fuzz(2000, capsys)


@pytest.mark.fuzz
def test_fuzz_requests_long(capsys) -> None:
    if "CORSPROXY_FUZZ_EXAMPLES" not in os.environ:
        pytest.skip("the long fuzz runs only with CORSPROXY_FUZZ_EXAMPLES set (e.g. 20000)")
    run_fuzz(int(os.environ.get("CORSPROXY_FUZZ_EXAMPLES") or 20000), capsys)
