"""`workers: N` and `tls`, with real `python -m corsproxy` processes, real
signals and real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest
import trustme
from cryptography.hazmat.primitives import serialization  # installed with trustme
from multidict import CIMultiDictProxy
from procutil import (
    Proc,
    accepts,
    assert_no_traceback,
    clean_env,
    eventually,
    free_port,
    run,
    running,
    wait_listening,
)
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = aiohttp.ClientTimeout(total=10)
FRESH = 50  # requests on fresh connections: with two workers, both answer (1 - 2**-49)


def log_entries(proc: Proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout().splitlines() if line.startswith("{")]


def gone(pid: int) -> bool:
    """Exited: reaped, or a zombie (its files, listening socket included, are closed)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def workers_of(supervisor: psutil.Process) -> set[int]:
    """The live workers (not multiprocessing's resource tracker, not a dead one)."""
    pids = set()
    for child in supervisor.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # gone, or a zombie until the supervisor reaps it
            continue
    return pids


# --- workers ----------------------------------------------------------------------------


WORKERS_CONFIG = """\
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
upstream: {upstream}
workers: 2
access_log: json
defaults:
  allow_origins: [{origin}]
"""
OLD, NEW = "https://old.test", "https://new.test"  # same length: a rewrite keeps the size


@dataclass
class Workers:
    proc: Proc
    path: Path
    port: int
    admin: int
    upstream: str
    session: aiohttp.ClientSession  # force_close: every request opens a new connection

    @property
    def supervisor(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def worker_pids(self) -> set[int]:
        return workers_of(self.supervisor)

    def write(self, origin: str) -> None:
        write_workers_config(self.path, self.port, self.admin, self.upstream, origin)

    async def get(self, origin: str) -> tuple[int, str | None]:
        url = f"http://127.0.0.1:{self.port}/x"
        async with self.session.get(url, headers={"Origin": origin}) as response:
            await response.read()
            return response.status, response.headers.get("Access-Control-Allow-Origin")

    async def admin_get(self, path: str) -> tuple[int, str]:
        async with self.session.get(f"http://127.0.0.1:{self.admin}{path}") as response:
            return response.status, await response.text()

    async def requests_total(self) -> float:
        _, text = await self.admin_get("/metrics")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "corsproxy_requests_total"
        )

    async def until_applied(self, allowed: str, refused: str, streak: int = 20) -> None:
        """Poll on fresh connections until ``streak`` answers in a row follow the given rules:
        the supervisor has signalled the workers, each applies the reload on its own."""
        loop = asyncio.get_running_loop()
        deadline, run_ = loop.time() + 10, 0
        while run_ < streak:
            assert loop.time() < deadline, "the workers did not all apply the reload"
            origin = allowed if run_ % 2 else refused
            expected = (200, allowed) if origin == allowed else (403, None)
            run_ = run_ + 1 if await self.get(origin) == expected else 0

    async def batch(self, allowed: str, refused: str) -> list[dict]:
        """FRESH requests, half from each origin, all under one rule set; their log lines."""
        before = len(log_entries(self.proc))
        for i in range(FRESH):
            origin = allowed if i % 2 else refused
            status, acao = await self.get(origin)
            expected = (200, allowed) if origin == allowed else (403, None)
            assert (status, acao) == expected, (i, origin)
        await eventually(
            lambda: len(log_entries(self.proc)) >= before + FRESH, what="log lines", timeout=10
        )
        return log_entries(self.proc)[before:]


def write_workers_config(path: Path, port: int, admin: int, upstream: str, origin: str) -> None:
    path.write_text(WORKERS_CONFIG.format(port=port, admin=admin, upstream=upstream, origin=origin))


@asynccontextmanager
async def two_workers(tmp_path: Path, upstream_url: str) -> AsyncIterator[Workers]:
    run_tmp = tmp_path / "tmp"  # the supervisor's run folder goes here: checked when it stops
    run_tmp.mkdir()
    path, port, admin = tmp_path / "corsproxy.yaml", free_port(), free_port()
    write_workers_config(path, port, admin, upstream_url, OLD)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        args = ["serve", "-c", str(path)]
        with running(args, tmp_path / "out", env=clean_env(TMPDIR=str(run_tmp))) as proc:
            workers = Workers(proc, path, port, admin, upstream_url, session)
            await wait_listening(workers.admin, proc)  # the admin listener opens last
            assert len(workers.worker_pids()) == 2
            yield workers
    assert_no_traceback(proc.stdout(), proc.stderr())


async def test_two_workers_both_serve_and_metrics_sum(upstream, tmp_path: Path) -> None:
    async with two_workers(tmp_path, upstream.url) as w:
        assert await w.admin_get("/readyz") == (200, "ready\n")
        assert (await w.admin_get("/healthz"))[0] == 200
        entries = await w.batch(allowed=OLD, refused=NEW)
        pids = {e["pid"] for e in entries}
        assert pids == w.worker_pids(), pids
        assert len(pids) == 2 and w.proc.pid not in pids
        # Each worker counts its own requests; the supervisor's /metrics sums them.
        await eventually(
            lambda: len(upstream.seen) == FRESH // 2, what="upstream requests", timeout=10
        )

        async def counted() -> bool:
            return await w.requests_total() >= FRESH

        await eventually(counted, what="requests counted", timeout=10)
        assert await w.requests_total() == FRESH
        _, text = await w.admin_get("/metrics")
        series = 'corsproxy_requests_total{{decision="{}",kind="actual",route="default"}} 25.0'
        assert series.format("allowed") in text and series.format("rejected") in text


async def test_a_reload_reaches_every_worker(upstream, tmp_path: Path) -> None:
    async with two_workers(tmp_path, upstream.url) as w:
        await w.batch(allowed=OLD, refused=NEW)

        # 1. The file is rewritten: the supervisor's poll notices, validates, tells the workers.
        w.write(NEW)
        await eventually(
            lambda: "reload (file changed) applied" in w.proc.stderr(), what="reload", timeout=10
        )
        await w.until_applied(allowed=NEW, refused=OLD)
        entries = await w.batch(allowed=NEW, refused=OLD)
        assert {e["pid"] for e in entries} == w.worker_pids()
        assert len({e["pid"] for e in entries}) == 2

        # 2. SIGHUP to the supervisor, the file's size and mtime kept so only the signal can
        # have caused the reload.
        stat = w.path.stat()
        w.write(OLD)
        os.utime(w.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        w.proc.popen.send_signal(signal.SIGHUP)
        await eventually(
            lambda: "reload (SIGHUP) applied" in w.proc.stderr(), what="reload", timeout=10
        )
        await w.until_applied(allowed=OLD, refused=NEW)
        entries = await w.batch(allowed=OLD, refused=NEW)
        assert len({e["pid"] for e in entries}) == 2
        _, text = await w.admin_get("/metrics")
        assert 'corsproxy_config_reloads_total{result="success"} 2.0' in text


async def test_a_killed_worker_is_replaced(upstream, tmp_path: Path) -> None:
    async with two_workers(tmp_path, upstream.url) as w:
        first = w.worker_pids()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Wait until its sockets are closed (a zombie, or reaped): connections the kernel had
        # queued for it are reset, the ones after that go to the survivor.
        await eventually(lambda: gone(victim), what="the worker to die", timeout=10)
        # The survivor keeps the port served while the supervisor starts another worker.
        for _ in range(300):
            status, _ = await w.get(OLD)
            assert status == 200
            now = w.worker_pids()
            if len(now) == 2 and now != first and (await w.admin_get("/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no replacement became ready:\n{w.proc.stderr()}")
        (replacement,) = now - first
        assert replacement != w.proc.pid
        assert re.search(rf"worker {victim} exited with status -9", w.proc.stderr())
        # The new worker serves, under the same rules.
        entries = await w.batch(allowed=OLD, refused=NEW)
        assert replacement in {e["pid"] for e in entries}


async def test_sigterm_stops_supervisor_and_workers(upstream, tmp_path: Path) -> None:
    async with two_workers(tmp_path, upstream.url) as w:
        children = w.supervisor.children(recursive=True)
        assert len(children) >= 2
        status, _ = await w.get(OLD)
        assert status == 200
        w.proc.popen.send_signal(signal.SIGTERM)
        await eventually(
            lambda: w.proc.popen.poll() is not None, what="the supervisor to exit", timeout=10
        )
        assert w.proc.popen.returncode == 0, w.proc.stderr()
        await eventually(
            lambda: all(gone(c.pid) for c in children), what="the workers to stop", timeout=10
        )
        assert not accepts(w.port) and not accepts(w.admin)
        assert list((tmp_path / "tmp").iterdir()) == [], "the run folder was left behind"


async def test_a_replacement_worker_runs_the_accepted_settings(upstream, tmp_path: Path) -> None:
    """A worker started after a reload runs what the supervisor accepted: the new rules on
    the old port (listen needs a restart), and not an invalid file left on disk."""
    async with two_workers(tmp_path, upstream.url) as w:
        other_port = free_port()
        text = w.path.read_text().replace(f":{w.port}\n", f":{other_port}\n")
        text = text.replace(OLD, NEW)
        w.path.write_text(text)
        await eventually(
            lambda: "reload (file changed) applied" in w.proc.stderr(), what="reload", timeout=10
        )
        assert re.search(r"reload: .*listen.* changed; that takes a restart", w.proc.stderr())
        w.path.write_text(text + "bogus_key: 1\n")
        await eventually(
            lambda: "refused, the old rules stay" in w.proc.stderr(), what="refusal", timeout=10
        )

        first = w.worker_pids()
        for victim in sorted(first):  # replace both workers, one after the other
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda v=victim: gone(v), what="the worker to die", timeout=10)
            await eventually(lambda: len(w.worker_pids()) == 2, what="a replacement", timeout=10)
        await eventually(
            lambda: len(w.worker_pids() - first) == 2, what="two new workers", timeout=10
        )
        for _ in range(100):
            if (await w.admin_get("/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert (await w.admin_get("/readyz"))[0] == 200
        entries = await w.batch(allowed=NEW, refused=OLD)
        assert {e["pid"] for e in entries} == w.worker_pids()
        assert not accepts(other_port)
        assert w.proc.stderr().count("exited with status") == 2, w.proc.stderr()


async def test_sigterm_while_workers_start_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "corsproxy.yaml"
    port = free_port()
    path.write_text(f"listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:9\nworkers: 2\n")
    with running(["serve", "-c", str(path)], tmp_path / "out") as proc:
        supervisor = psutil.Process(proc.pid)
        children: list[psutil.Process] = []

        def spawned() -> bool:
            children[:] = supervisor.children(recursive=True)
            return any(c.pid in workers_of(supervisor) for c in children)

        await eventually(spawned, what="a worker process", timeout=10)
        proc.popen.send_signal(signal.SIGTERM)
        await eventually(
            lambda: proc.popen.poll() is not None, what="the supervisor to exit", timeout=10
        )
        assert proc.popen.returncode == 0, proc.stderr()
        await eventually(
            lambda: all(gone(c.pid) for c in children), what="the workers to stop", timeout=10
        )
        assert not accepts(port)
    assert_no_traceback(proc.stdout(), proc.stderr())


async def test_workers_stop_when_the_supervisor_is_killed(upstream, tmp_path: Path) -> None:
    async with two_workers(tmp_path, upstream.url) as w:
        children = w.supervisor.children(recursive=True)
        w.proc.popen.send_signal(signal.SIGKILL)
        await eventually(
            lambda: all(gone(c.pid) for c in children), what="the workers to stop", timeout=10
        )
        assert not accepts(w.port)
        assert "the supervisor is gone; stopping" in w.proc.stderr()


@pytest.mark.parametrize(
    ("workers", "holder_reuses_port"),
    [(1, False), (2, False), (2, True)],
    ids=["one-process", "workers", "workers-vs-reuseport-holder"],
)
def test_port_in_use_is_one_line_and_exit_2(
    tmp_path: Path, workers: int, holder_reuses_port: bool
) -> None:
    """Also when the holder set SO_REUSEPORT (another corsproxy's workers): the workers must
    not quietly share its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        if holder_reuses_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = tmp_path / "corsproxy.yaml"
        path.write_text(
            f"listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:9\nworkers: {workers}\n"
        )
        result = run(["serve", "-c", str(path)])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("corsproxy: error: cannot listen"), lines
    assert "address already in use" in lines[0].lower()


# --- TLS --------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: trustme.CA
    folder: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls") / "certs"
    folder.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(folder / "cert.pem"), append=True)
    server.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(folder / "other-key.pem"))
    (folder / "garbage.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    (folder / "encrypted-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return Certs(ca, folder)


TLS_CONFIG = """\
listen: 127.0.0.1:{port}
upstream: {upstream}
access_log: off
tls: {{cert: certs/{cert}, key: certs/{key}}}
workers: {workers}
defaults:
  allow_origins: [https://app.test]
"""


def tls_config(certs: Certs, upstream: str, port: int, **over: object) -> Path:
    """A config file next to the certs folder: the tls paths are relative to it."""
    values: dict[str, object] = {"cert": "cert.pem", "key": "key.pem", "workers": 1}
    values.update(over)
    path = certs.folder.parent / f"tls-{port}.yaml"
    path.write_text(TLS_CONFIG.format(port=port, upstream=upstream, **values))
    return path


async def test_tls_listener_speaks_https_and_same_origin_uses_https(
    upstream, certs: Certs, tmp_path: Path
) -> None:
    port = free_port()
    path = tls_config(certs, upstream.url, port)
    # Run from another folder: the cert paths resolve against the config file's folder.
    with running(["serve", "-c", str(path)], tmp_path / "out", cwd=tmp_path) as proc:
        await wait_listening(port, proc)
        url = f"https://127.0.0.1:{port}/x"
        host = f"localhost:{port}"
        connector = aiohttp.TCPConnector(ssl=certs.client_context())
        async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:

            async def get(origin: str | None) -> tuple[int, CIMultiDictProxy[str]]:
                headers = {"Host": host} | ({"Origin": origin} if origin else {})
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    return response.status, response.headers

            # The same scheme, host and port: not a CORS request.
            status, head = await get(f"https://{host}")
            assert status == 200
            assert "Access-Control-Allow-Origin" not in head
            assert "Origin" in head.get("Vary", "")
            assert upstream.seen[-1].header("X-Forwarded-Proto") == "https"
            assert upstream.seen[-1].header("X-Forwarded-Host") == host
            # The same host and port over http is another origin: refused by these rules.
            status, head = await get(f"http://{host}")
            assert status == 403
            assert "Access-Control-Allow-Origin" not in head
            # A listed origin gets its CORS headers over TLS as over plain HTTP.
            status, head = await get("https://app.test")
            assert (status, head["Access-Control-Allow-Origin"]) == (200, "https://app.test")

        # Plain HTTP on the TLS port gets no answer it could mistake for one.
        async with aiohttp.ClientSession(timeout=TIMEOUT) as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{port}/x") as response:
                    await response.read()
        assert f"listening on https://127.0.0.1:{port}" in proc.stderr()
    assert_no_traceback(proc.stdout(), proc.stderr())


def test_unreadable_cert_is_a_config_error(certs: Certs) -> None:
    path = tls_config(certs, "http://127.0.0.1:9", free_port(), cert="missing.pem")
    for command in ("check", "serve"):
        result = run([command, "-c", str(path)])
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1, result.stderr
        assert re.match(rf"^{re.escape(str(path))}:4: tls\.cert: error: .*missing\.pem", errors[0])
        assert_no_traceback(result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("over", "says"),
    [
        ({"key": "other-key.pem"}, r"tls\.key: .*other-key\.pem does not match"),
        ({"cert": "garbage.pem"}, r"tls\.cert: .*garbage\.pem holds no usable PEM certificate"),
        ({"key": "garbage.pem"}, r"tls\.key: .*garbage\.pem holds no usable PEM private key"),
        ({"key": "encrypted-key.pem"}, r"tls\.key: .*encrypted-key\.pem is encrypted"),
        ({"key": "other-key.pem", "workers": 2}, r"tls\.key: .*other-key\.pem does not match"),
    ],
    ids=["mismatch", "garbage-cert", "garbage-key", "encrypted-key", "mismatch-workers"],
)
def test_unusable_cert_or_key_stops_serve_with_one_line(
    certs: Certs, over: dict[str, object], says: str
) -> None:
    port = free_port()
    path = tls_config(certs, "http://127.0.0.1:9", port, **over)
    assert run(["check", "-c", str(path)]).returncode == 0  # readable: check cannot tell
    result = run(["serve", "-c", str(path)])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.match(rf"^corsproxy: error: {says}", lines[0]), lines[0]
    assert not accepts(port)
