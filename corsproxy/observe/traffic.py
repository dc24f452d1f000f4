"""The admin page's suggested rules (docs/operations.md#live-page): the last hour of CORS
requests, counted per minute, turned into what ``corsproxy suggest`` prints when asked.

* ``Traffic``, one per process (``LiveLog.traffic``). ``Proxy.record`` calls ``add`` for every
  CORS request with the access log's own fields (route, origin, kind, method, the requested
  method and header names, credentials): one dict lookup and increment in the current
  minute's bucket. Buckets older than an hour are dropped when a new minute starts. At most
  ``MAX_KEYS`` entries (a key in one minute) are kept over all buckets, none whose Origin and
  header list are longer than ``MAX_KEY_CHARS``: what does not fit is counted as untracked
  and said, so the memory is bounded whatever the traffic (a scan sending a new Origin per
  request included).
* ``Suggester``, in the process that owns the admin listener: on ``/suggest.json`` or
  ``/suggest.yaml`` it merges every process's buckets of the last hour, converts them into
  ``config.suggest.Observations`` and runs ``plan`` and ``render``, the same code
  ``corsproxy suggest`` runs on an access log, against the config file the running settings
  came from (its comments kept) or, without one, against the running settings.

With ``workers: N`` each worker writes its buckets to ``<run folder>/traffic/<pid>.json``
at most every ``PUBLISH_SECONDS`` while they change (a temporary file renamed into place),
next to the live page's files; the supervisor merges them when the suggestion is asked for.
The first request after a write wakes the writer: an idle worker does nothing, on no tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from corsproxy.config import suggest
from corsproxy.config.load import parse_settings
from corsproxy.config.tree import ConfigInvalid
from corsproxy.engine.policy import Settings

BUCKET = 60  # seconds per bucket
WINDOW = 3600  # seconds of traffic kept: the current bucket and the 59 before it
BUCKETS = WINDOW // BUCKET
MAX_KEYS = 5_000  # entries (one key in one bucket) kept per process, over all buckets
MAX_KEY_CHARS = 1024  # an Origin and header list longer than this together is not kept
PUBLISH_SECONDS = 5.0  # a worker rewrites its file at most this often, while counts change

# The access log's fields: route, origin, kind, method, request_method, request_headers,
# credentials (docs/operations.md#access-log)
RawKey = tuple[str, str, str, str, "str | None", "str | None", "bool | None"]


class Bucket:
    """One minute's counts: key -> [count, first seen, last seen] (Unix seconds)."""

    __slots__ = ("counts", "index", "untracked")

    def __init__(self, index: int) -> None:
        self.index = index  # Unix time // BUCKET
        self.counts: dict[RawKey, list[Any]] = {}
        self.untracked = 0


class Traffic:
    """One process's CORS requests of the last hour (see the module's docstring). ``clock``
    is injectable so tests age buckets without waiting."""

    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.buckets: deque[Bucket] = deque()
        self.current = Bucket(-1)
        self.ends = float("-inf")  # when the current bucket's minute is over
        self.size = 0  # entries over all buckets
        self.dirty = False  # counted since the last write: a worker's writer is awake
        self.on_change: Callable[[], None] | None = None  # called when dirty becomes true

    def add(
        self,
        route: str,
        origin: str | None,
        kind: str,
        method: str,
        request_method: str | None,
        request_headers: str | None,
        credentials: bool | None,
    ) -> None:
        """A finished CORS request: a dict increment (a new minute also drops old ones)."""
        if origin is None:
            return
        now = self.clock()
        if now >= self.ends:
            self.rotate(now)
        bucket = self.current
        if not self.dirty:
            self.dirty = True
            if self.on_change is not None:
                self.on_change()
        key = (route, origin, kind, method, request_method, request_headers, credentials)
        entry = bucket.counts.get(key)
        if entry is not None:
            entry[0] += 1
            entry[2] = now
        elif (
            self.size < self.max_keys and len(origin) + len(request_headers or "") <= MAX_KEY_CHARS
        ):
            bucket.counts[key] = [1, now, now]
            self.size += 1
        else:
            bucket.untracked += 1

    def rotate(self, now: float) -> None:
        index = int(now // BUCKET)
        self.expire(index)
        if index != self.current.index:
            self.current = Bucket(index)
            self.buckets.append(self.current)
        self.ends = (index + 1) * BUCKET

    def expire(self, index: int) -> None:
        """Drop the buckets that are not among the BUCKETS ending with minute ``index``."""
        while self.buckets and self.buckets[0].index <= index - BUCKETS:
            self.size -= len(self.buckets.popleft().counts)


def snapshot(traffic: Traffic) -> dict[str, Any]:
    """The buckets of the last hour as plain data (also what a worker writes)."""
    traffic.expire(int(traffic.clock() // BUCKET))
    return {
        "pid": os.getpid(),
        "bucket": BUCKET,
        "buckets": [
            [b.index, b.untracked, [[*key, *entry] for key, entry in list(b.counts.items())]]
            for b in list(traffic.buckets)
        ],
    }


def write_snapshot(traffic: Traffic, folder: Path) -> None:
    """Atomically (a temporary file, then a rename)."""
    final = folder / f"{os.getpid()}.json"
    partial = folder / f".{os.getpid()}.json.new"
    partial.write_text(json.dumps(snapshot(traffic), separators=(",", ":")))
    partial.replace(final)


async def publish(traffic: Traffic, folder: Path) -> None:
    """A worker: rewrite its file shortly after its counts changed (what follows within
    PUBLISH_SECONDS goes into the same write), until cancelled. Woken by the first request
    after a write, never on a tick."""
    changed = asyncio.Event()
    traffic.on_change = changed.set
    if traffic.dirty:  # counted before this writer started
        changed.set()
    try:
        while True:
            await changed.wait()
            await asyncio.sleep(PUBLISH_SECONDS)  # gather what follows into the same write
            changed.clear()
            traffic.dirty = False
            with contextlib.suppress(OSError):
                write_snapshot(traffic, folder)
    finally:
        traffic.on_change = None


def read_snapshots(folder: Path) -> list[dict[str, Any]]:
    """Every worker's file (one caught mid-rename or unreadable is skipped)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


# --- when the suggestion is asked for -------------------------------------------------


def merge(snapshots: Iterable[dict[str, Any]], now: float) -> tuple[dict[RawKey, list[Any]], int]:
    """The counts of the last hour of every snapshot, by key: [count, first, last], and the
    requests not tracked."""
    oldest = int(now // BUCKET) - BUCKETS + 1
    counts: dict[RawKey, list[Any]] = {}
    untracked = 0
    for snap in snapshots:
        for index, lost, rows in snap.get("buckets", ()):
            if index < oldest:
                continue
            untracked += lost
            for *fields, count, first, last in rows:
                key: RawKey = tuple(fields)  # type: ignore[assignment]
                found = counts.get(key)
                if found is None:
                    counts[key] = [count, first, last]
                else:
                    found[0] += count
                    found[1] = min(found[1], first)
                    found[2] = max(found[2], last)
    return counts, untracked


def stamp(seconds: float) -> str:
    """The access log's time format (observe/accesslog.py)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def observations(counts: dict[RawKey, list[Any]]) -> suggest.Observations:
    """The merged counts as ``corsproxy suggest`` counts access-log lines."""
    obs = suggest.Observations(max_keys=max(suggest.MAX_KEYS, len(counts)))
    for key, (count, first, last) in counts.items():
        route, origin, kind, method, request_method, request_headers, credentials = key
        entry = {
            "time": stamp(first),
            "route": route,
            "origin": origin,
            "kind": kind,
            "method": method,
            "request_method": request_method,
            "request_headers": request_headers,
            "credentials": credentials,
        }
        obs.add(entry, count, stamp(last))
    return obs


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


class Suggester:
    """What ``/suggest.json`` and ``/suggest.yaml`` answer, worked out when asked.
    ``snapshots`` yields the ``snapshot`` of every process's Traffic."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        snapshots: Callable[[], list[dict[str, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.clock = clock

    def suggestion(self, min_count: int = 1) -> dict[str, Any]:
        counts, untracked = merge(self.snapshots(), self.clock())
        obs = observations(counts)
        text, settings, path, notes = config_text(self.settings())
        refs = suggest.policy_refs(settings)
        plans = suggest.plan(obs, refs, min_count)
        requests = obs.cors_requests + untracked
        first = min((c[1] for c in counts.values()), default=None)
        last = max((c[2] for c in counts.values()), default=None)
        seen = f", {stamp(first)} to {stamp(last)}" if first is not None and last else ""
        head = [
            "# Suggested by corsproxy's admin page from the last hour of traffic it holds: "
            f"{requests} cross-origin request(s){seen}. A suggestion to review, not applied: "
            "read every RISKY line before enforcing.",
            *notes,
        ]
        if untracked:
            head.append(
                f"# {untracked} request(s) not counted: more than {MAX_KEYS} different "
                "(route, origin, method, headers) combinations in the hour, or an Origin and "
                f"header list over {MAX_KEY_CHARS} characters"
            )
        head += suggest.preamble(obs, plans, suggest.unknown_routes(obs, refs))[1:]
        head += suggest.report_only_note(settings)
        source = path or "the running settings"
        error = None
        try:
            out = suggest.render(text, plans, head)
            parse_settings(out, path or settings.source)  # never show rules check refuses
        except (ValueError, ConfigInvalid) as exc:
            out, error = "", f"no suggestion: {exc}"
        return {
            "yaml": out,
            "error": error,
            "against": source,
            "min_count": min_count,
            "window": WINDOW,
            "bucket": BUCKET,
            "requests": requests,
            "untracked": untracked,
            "keys": len(counts),
            "first": first,
            "last": last,
            "now": self.clock(),
        }
