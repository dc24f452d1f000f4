"""Helpers for tests that run corsproxy as a real subprocess: free ports, waiting for a
listener, starting and always stopping the process; and ``eventually``, which waits for an
effect by polling against a deadline rather than sleeping a fixed time."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


async def eventually(
    predicate: Callable[[], object], timeout: float = 5.0, what: str = "", interval: float = 0.01
) -> None:
    """Poll ``predicate`` (a plain function, or one returning an awaitable such as a scrape
    of /metrics) until it is true; fail after ``timeout`` seconds. For waiting on an effect
    (a request reached the upstream, a request was counted): a fixed sleep is either too
    short on a slow machine or wastes time on a fast one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        await asyncio.sleep(interval)


def _port_band() -> range:
    """Ports for this process to hand out: below the kernel's ephemeral range (which bind to
    port 0 and every outgoing connection draw from, so another test's client socket cannot
    take a port between free_port() and the bind), one slice per xdist worker."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, min(ephemeral_low, 32768)
    if high - low < 2000:
        return range(0)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0) % workers
    size = (high - low) // workers
    return range(low + index * size, low + (index + 1) * size)


_BAND = _port_band()
_next = [random.randrange(len(_BAND))] if _BAND else [0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (also: an upstream that is down)."""
    for _ in range(len(_BAND)):
        port = _BAND[_next[0] % len(_BAND)]
        _next[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


closed_port = free_port  # the name tests use for "an upstream nobody listens on"


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until 127.0.0.1:port accepts a connection; fail fast if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accepts(port):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening")
        time.sleep(0.02)
    raise AssertionError(f"nothing accepted connections on 127.0.0.1:{port} within {timeout}s")


async def wait_listening(port: int, proc: Proc | None = None, timeout: float = 20.0) -> None:
    """Like ``wait_port``, without blocking the event loop (in-process upstreams keep
    serving meanwhile); fails at once, with its stderr, if ``proc`` exits first."""

    def up() -> bool:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"exited with {proc.popen.returncode}:\n{proc.stderr()}")
        return accepts(port)

    await eventually(up, timeout, f"127.0.0.1:{port} to accept connections", interval=0.02)


def assert_no_traceback(*outputs: str) -> None:
    """No Python traceback in a process's output: errors are one line each."""
    for text in outputs:
        assert "Traceback" not in text, text
        assert 'File "' not in text, text


@dataclass
class Proc:
    """A running ``python -m corsproxy ...`` with its output captured in files."""

    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def corsproxy_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "corsproxy", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CORSPROXY_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORSPROXY_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def running(
    args: Sequence[str],
    out_dir: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str = REPO,
) -> Iterator[Proc]:
    """Start corsproxy with ``args``; on exit SIGTERM it, then SIGKILL if it lingers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = out_dir / f"stdout-{time.monotonic_ns()}.txt"
    stderr_path = out_dir / f"stderr-{time.monotonic_ns()}.txt"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        popen = subprocess.Popen(
            corsproxy_cmd(*args),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else clean_env(),
            cwd=cwd,
        )
    proc = Proc(popen, stdout_path, stderr_path)
    try:
        yield proc
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, wait, SIGKILL as a last resort; returns the exit status."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return popen.returncode


def run(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str = REPO,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run corsproxy to completion and capture its output as text."""
    return subprocess.run(
        corsproxy_cmd(*args),
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
