"""How a worker hands what it observed to the supervisor's admin page: one small JSON file
per process, ``<folder>/<pid>.json``, in a folder of the run folder (``live/`` for
live.py's recent refusals, ``traffic/`` for traffic.py's last hour of CORS requests).

* ``write``: atomically, a temporary file (``.<pid>.json.new``) renamed into place, so a
  reader never sees half a file.
* ``read``: every process's file, one caught mid-rename or unreadable skipped; with
  ``max_age``, a file not rewritten for that long is deleted and skipped (a replaced
  worker's, once nothing in it can count any more).
* ``prune``: the supervisor, when it replaces a worker, keeps the files of the living and of
  the few workers that died last (their last refusals are worth seeing), so a worker that
  crashes again and again cannot fill the folder.
* ``publish``: a worker's writer. Event-driven, never on a tick: woken by the first change
  after a write, it waits ``seconds`` (what follows goes into the same write) and writes;
  an idle worker does nothing. When cancelled (the worker stops) it writes once more if
  something changed since its last write, so a stopping worker's last seconds are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Watched(Protocol):
    """What ``publish`` watches: it sets ``on_change``, called on a change (None: unwatched)."""

    on_change: Callable[[], None] | None


def write(folder: Path, data: Any) -> None:
    """``data`` as this process's file in ``folder``, atomically (a temporary file, then a
    rename)."""
    final = folder / f"{os.getpid()}.json"
    partial = folder / f".{os.getpid()}.json.new"
    partial.write_text(json.dumps(data, separators=(",", ":")))
    partial.replace(final)


def read(folder: Path, max_age: float | None = None) -> list[dict[str, Any]]:
    """Every process's file in ``folder`` (one caught mid-rename or unreadable is skipped).
    With ``max_age``, a file not modified for longer than that many seconds is deleted and
    skipped."""
    found = []
    oldest = time.time() - max_age if max_age is not None else None
    for path in sorted(folder.glob("*.json")):
        try:
            if oldest is not None and path.stat().st_mtime < oldest:
                path.unlink(missing_ok=True)
                continue
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def prune(folder: Path, alive: set[int], spare: int) -> None:
    """Delete the files of processes not in ``alive``, but the ``spare`` newest of them."""
    dead = []
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            if int(path.stem) not in alive:
                dead.append((path.stat().st_mtime, path))
    dead.sort(reverse=True)
    for _, path in dead[spare:]:
        path.unlink(missing_ok=True)


async def publish(
    source: Watched,
    folder: Path,
    snapshot: Callable[[], Any],
    seconds: float,
    pending: bool = False,
) -> None:
    """Write ``snapshot()`` to this process's file in ``folder`` ``seconds`` after
    ``source`` changed, until cancelled; then once more if it changed since the last write.
    ``pending``: it changed before this writer started."""
    changed = asyncio.Event()
    source.on_change = changed.set
    if pending:
        changed.set()
    try:
        while True:
            await changed.wait()
            await asyncio.sleep(seconds)  # gather what follows into the same write
            changed.clear()
            with contextlib.suppress(OSError):
                write(folder, snapshot())
    finally:
        source.on_change = None
        if changed.is_set():  # stopping: what changed since the last write
            with contextlib.suppress(OSError):
                write(folder, snapshot())
