"""The admin page's suggested rules (docs/operations.md#live-page): the last hour of CORS
requests, counted per minute. What is suggested from the counts is worked out when asked
(runtime/admin.py's ``Suggester``, through ``config.suggest.suggest_config``, the code
``corsproxy suggest`` runs on an access log).

``Traffic``, one per process (``LiveLog.traffic``). ``Proxy.record`` calls ``add`` for every
CORS request with the access log's own fields (route, origin, kind, method, the requested
method and header names, credentials): one dict lookup and increment in the current
minute's bucket (key -> [count, first seen, last seen]). A minute's bucket is dropped when
it is an hour old. Memory is bounded whatever the traffic (a scan sending a new Origin per
request included), by three limits; a request past one is counted as not tracked, under
that limit's name, and the suggestion says which:

* ``long``: a key whose fields together (route, origin, method, requested method and
  header names) are over ``MAX_KEY_CHARS``;
* ``keys``: more than ``MAX_KEYS`` different keys in the hour. ``keys`` holds each key once,
  with how many buckets hold it; a key goes when the last bucket holding it does;
* ``entries``: more than ``MAX_ENTRIES`` (key, minute) entries over the hour (a key seen
  every minute takes 60).

A requested method that is not a token counts as ``""``, as ``corsproxy suggest`` counts
it. The first and last times seen are those within the hour kept (an older request is no
longer counted, so neither is its time).

With ``workers: N`` each worker writes its ``snapshot`` to ``<run folder>/traffic/<pid>.json``
``PUBLISH_SECONDS`` after its counts changed, and once more when it stops (snapshots.py);
the supervisor ``read``s them (deleting a file not rewritten for an hour) and ``merge``s
them when the suggestion is asked for. An idle worker does nothing, on no tick.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from corsproxy.config import suggest
from corsproxy.engine.headers import is_token
from corsproxy.observe import snapshots

BUCKET = 60  # seconds per bucket
WINDOW = 3600  # seconds of traffic kept: the current bucket and the 59 before it
BUCKETS = WINDOW // BUCKET
MAX_KEYS = 5_000  # different keys kept per process over the hour
MAX_ENTRIES = 30_000  # (key, minute) entries kept per process over the hour
MAX_KEY_CHARS = 1024  # a key whose fields are longer than this together is not kept
PUBLISH_SECONDS = 5.0  # a worker rewrites its file at most this often, while counts change
# Why a request was not tracked (see the module's docstring), as snapshots and merge name it.
LOST = ("long", "keys", "entries")

# The access log's fields: route, origin, kind, method, request_method, request_headers,
# credentials (docs/operations.md#access-log)
RawKey = tuple[str, str, str, str, "str | None", "str | None", "bool | None"]


class Bucket:
    """One minute's counts: key -> [count, first seen, last seen] (Unix seconds), and the
    requests not tracked, by limit."""

    __slots__ = ("counts", "index", "lost")

    def __init__(self, index: int) -> None:
        self.index = index  # Unix time // BUCKET
        self.counts: dict[RawKey, list[Any]] = {}
        self.lost = dict.fromkeys(LOST, 0)


class Traffic:
    """One process's CORS requests of the last hour (see the module's docstring). ``clock``
    is injectable so tests age buckets without waiting."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_keys: int = MAX_KEYS,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.max_entries = max_entries
        self.buckets: deque[Bucket] = deque()
        self.current = Bucket(-1)
        self.ends = float("-inf")  # when the current bucket's minute is over
        # every key some bucket holds -> [buckets holding it, the key object they share]
        self.keys: dict[RawKey, list[Any]] = {}
        self.entries = 0  # (key, minute) entries over all buckets
        self.dirty = False  # counted since the last snapshot: a worker's writer is awake
        self.version = 0  # bumped when dirty becomes true: the counts changed
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
        """A finished CORS request, by its fields (see ``count``)."""
        if origin is not None:
            self.count((route, origin, kind, method, request_method, request_headers, credentials))

    def count(self, key: RawKey) -> None:
        """A finished CORS request, by a key the caller built once (the proxy keeps one per
        memoised decision): a dict increment (a new minute also drops old ones)."""
        now = self.clock()
        if now >= self.ends:
            self.rotate(now)
        if not self.dirty:
            self.changed()
        entry = self.current.counts.get(key)
        if entry is not None:
            entry[0] += 1
            entry[2] = now
        else:
            self.first_this_minute(key, now)

    def changed(self) -> None:
        self.dirty = True
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def first_this_minute(self, key: RawKey, now: float) -> None:
        """A key not yet in this minute's bucket: a new entry, within the limits."""
        bucket = self.current
        asked = key[4]
        if asked and not is_token(asked):  # counted as corsproxy suggest counts it
            key = (*key[:4], "", *key[5:])  # type: ignore[assignment]
            entry = bucket.counts.get(key)
            if entry is not None:
                entry[0] += 1
                entry[2] = now
                return
        held = self.keys.get(key)
        if held is None:
            size = len(key[0]) + len(key[1]) + len(key[3]) + len(key[4] or "") + len(key[5] or "")
            if size > MAX_KEY_CHARS:
                bucket.lost["long"] += 1
                return
            if len(self.keys) >= self.max_keys:
                bucket.lost["keys"] += 1
                return
        if self.entries >= self.max_entries:
            bucket.lost["entries"] += 1
            return
        if held is None:
            held = self.keys[key] = [0, key]
        held[0] += 1
        bucket.counts[held[1]] = [1, now, now]  # the shared key: its strings are kept once
        self.entries += 1

    def rotate(self, now: float) -> None:
        index = int(now // BUCKET)
        self.expire(index)
        if index != self.current.index:
            self.current = Bucket(index)
            self.buckets.append(self.current)
        self.ends = (index + 1) * BUCKET

    def expire(self, index: int) -> None:
        """Drop the buckets that are not among the BUCKETS ending with minute ``index``, and
        the keys no bucket holds any more."""
        keys = self.keys
        while self.buckets and self.buckets[0].index <= index - BUCKETS:
            counts = self.buckets.popleft().counts
            self.entries -= len(counts)
            for key in counts:
                held = keys[key]
                held[0] -= 1
                if not held[0]:
                    del keys[key]


def snapshot(traffic: Traffic) -> dict[str, Any]:
    """The buckets of the last hour as plain data (new lists of strings and numbers: a
    thread may read it while the proxy counts on), also what a worker writes: each key once
    in ``keys``, each bucket's rows ``[key number, count, first, last]``."""
    traffic.expire(int(traffic.clock() // BUCKET))
    traffic.dirty = False
    numbers: dict[RawKey, int] = {}
    keys: list[list[Any]] = []
    buckets = []
    for b in traffic.buckets:
        rows = []
        for key, (count, first, last) in b.counts.items():
            n = numbers.get(key)
            if n is None:
                n = numbers[key] = len(keys)
                keys.append(list(key))
            rows.append([n, count, first, last])
        buckets.append([b.index, dict(b.lost), rows])
    return {"pid": os.getpid(), "bucket": BUCKET, "keys": keys, "buckets": buckets}


async def publish(traffic: Traffic, folder: Path) -> None:
    """A worker: rewrite its file PUBLISH_SECONDS after its counts changed (what follows
    goes into the same write), until cancelled, and once more then (snapshots.publish)."""
    await snapshots.publish(
        traffic, folder, lambda: snapshot(traffic), PUBLISH_SECONDS, pending=traffic.dirty
    )


def read(folder: Path) -> list[dict[str, Any]]:
    """Every worker's file; one not rewritten for an hour holds nothing that still counts:
    it is deleted (a replaced worker's)."""
    return snapshots.read(folder, max_age=WINDOW)


def folder_version(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a worker rewrites its file (for the suggestion's cache)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                found.append((entry.name, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(found))


# --- when the suggestion is asked for -------------------------------------------------


def merge(
    snapshots: Iterable[dict[str, Any]], now: float
) -> tuple[dict[RawKey, list[Any]], dict[str, int]]:
    """The counts of the last hour of every snapshot, by key: [count, first, last], and the
    requests not tracked, by limit (LOST)."""
    oldest = int(now // BUCKET) - BUCKETS + 1
    counts: dict[RawKey, list[Any]] = {}
    lost = dict.fromkeys(LOST, 0)
    for snap in snapshots:
        keys: list[RawKey] = [tuple(k) for k in snap.get("keys", ())]  # type: ignore[misc]
        for index, dropped, rows in snap.get("buckets", ()):
            if index < oldest:
                continue
            for reason in LOST:
                lost[reason] += dropped.get(reason, 0)
            for n, count, first, last in rows:
                key = keys[n]
                found = counts.get(key)
                if found is None:
                    counts[key] = [count, first, last]
                else:
                    found[0] += count
                    found[1] = min(found[1], first)
                    found[2] = max(found[2], last)
    return counts, lost


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


def lost_note(lost: dict[str, int]) -> list[str]:
    """The comment that says how many requests were not counted, and which limit each hit."""
    total = sum(lost.values())
    if not total:
        return []
    why = {
        "keys": f"past the cap of {MAX_KEYS} different (route, origin, method, headers) "
        "combinations a process keeps for the hour",
        "entries": f"past the cap of {MAX_ENTRIES} (combination, minute) counts a process "
        "keeps for the hour",
        "long": f"with an Origin, method and header list over {MAX_KEY_CHARS} characters together",
    }
    parts = [
        f"{lost[reason]} {why[reason]}" for reason in ("keys", "entries", "long") if lost[reason]
    ]
    return [f"# {total} request(s) not counted: " + "; ".join(parts)]
