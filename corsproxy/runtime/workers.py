"""``workers: N``: N processes serve one port (SO_REUSEPORT) under a small supervisor.

The supervisor binds no proxy port. It reads and validates the config, starts the workers,
restarts one that dies, answers the admin listener (summing the workers' metrics through
prometheus_client's multiprocess mode), and on a valid reload hands every worker the settings
it accepted (a file in its private run folder, then SIGHUP): workers never read the config
file themselves, so they all run what the supervisor validated, and a worker restarted while
the file on disk is invalid or names another port starts with the running settings. SIGTERM
is passed on; each worker drains its own connections. A worker whose supervisor is gone
stops by itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
from multiprocessing.process import BaseProcess
from pathlib import Path

from corsproxy.config.view import config_view, host_port
from corsproxy.engine.policy import Settings
from corsproxy.observe import snapshots, traffic
from corsproxy.observe.live import LiveState, publish, read_snapshots
from corsproxy.observe.metrics import (
    ReloadMetrics,
    RequestMetrics,
    exposition,
    multiprocess_registry,
)
from corsproxy.runtime.admin import AdminView, Suggester
from corsproxy.runtime.app import (
    TLSError,
    bind_failure,
    open_admin,
    run,
    start,
    stop_on_signals,
    summary,
)
from corsproxy.runtime.reload import ConfigSource, Reloader

log = logging.getLogger("corsproxy")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EXIT_START_FAILED = 2
CHECK_SECONDS = 0.2
KILL_GRACE_SECONDS = 5.0  # past timeouts.shutdown, a worker that still runs is killed
SETTINGS_FILE = "settings.pickle"


def supervise(source: ConfigSource, settings: Settings) -> int:
    """Run the workers until SIGTERM/SIGINT; the exit status for the command."""
    rundir = Path(tempfile.mkdtemp(prefix="corsproxy-"))
    (rundir / "metrics").mkdir()
    (rundir / "ready").mkdir()
    (rundir / "live").mkdir()  # each worker's LiveLog, for the admin page (observe/live.py)
    (rundir / "traffic").mkdir()  # each worker's last hour of CORS requests (observe/traffic.py)
    # Read by prometheus_client when a worker imports it: set before any worker starts.
    os.environ[MULTIPROC_ENV] = str(rundir / "metrics")
    try:
        return run(Supervisor(source, settings, rundir).main())
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


class Supervisor:
    def __init__(self, source: ConfigSource, settings: Settings, rundir: Path) -> None:
        self.source = source
        self.settings = settings
        self.rundir = rundir
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        # process_* of the supervisor and of each live worker, labelled with pid and role.
        self.reload_metrics = ReloadMetrics(processes=self.processes)

    def processes(self) -> list[tuple[int, str]]:
        found = [(os.getpid(), "supervisor")]
        for process in self.workers:
            if process.pid is not None and process.is_alive():
                found.append((process.pid, "worker"))
        return found

    def spawn(self) -> BaseProcess:
        process = self.context.Process(
            target=worker_main, args=(str(self.rundir), os.getpid()), daemon=False
        )
        process.start()
        return process

    def publish(self, settings: Settings) -> None:
        """Write the settings workers load, atomically (a worker never reads half a file)."""
        partial = self.rundir / (SETTINGS_FILE + ".new")
        partial.write_bytes(pickle.dumps(settings))
        partial.replace(self.rundir / SETTINGS_FILE)

    def ready_file(self, process: BaseProcess) -> Path:
        return self.rundir / "ready" / str(process.pid)

    def ready(self) -> bool:
        return all(p.is_alive() and self.ready_file(p).exists() for p in self.workers)

    def apply(self, settings: Settings) -> None:
        self.settings = settings
        self.publish(settings)
        for process in self.workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    async def main(self) -> int:
        count = self.settings.workers
        await probe_listen(self.settings)
        self.publish(self.settings)
        # Signals first: a SIGTERM or SIGHUP during startup must not kill the supervisor and
        # leave its workers running.
        reloader = Reloader(self.source, lambda: self.settings, self.apply, self.reload_metrics)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
        stop = stop_on_signals(signal.SIGTERM, signal.SIGINT)
        self.workers = [self.spawn() for _ in range(count)]
        if not await self.wait_ready(stop):
            await self.stop_workers()
            if stop.is_set():
                return 0
            log.error("a worker failed to start; stopping")
            return EXIT_START_FAILED
        # The admin page: the counts from the same files /metrics sums, the refusals and
        # upstream faults from the file each worker writes (observe/live.py).
        live = LiveState(
            lambda: self.settings,
            lambda: multiprocess_registry(str(self.rundir / "metrics")).collect(),
            lambda: read_snapshots(self.rundir / "live"),
            reloader.history,
            workers=count,
        )
        view = AdminView(
            ready=self.ready,
            metrics=lambda: exposition(
                multiprocess_registry(str(self.rundir / "metrics")),
                self.reload_metrics.registry,
            ),
            config=lambda: config_view(self.settings),
            state=live.state,
            sample=live.sample,
            suggestion=Suggester(
                lambda: self.settings,
                lambda: traffic.read(self.rundir / "traffic"),  # in the thread
                lambda: traffic.folder_version(self.rundir / "traffic"),
                threadsafe=True,
            ).suggestion,
        )
        try:
            admin = await open_admin(self.settings, view)
        except OSError:
            await self.stop_workers()
            raise
        scheme = "https" if self.settings.tls else "http"
        url = f"{scheme}://{host_port(self.settings.listen_host, self.settings.listen_port)}"
        pids = [p.pid for p in self.workers if p.pid is not None]
        log.info("%s", summary(self.source.describe(), self.settings, url, pids, workers=True))
        tasks = [asyncio.ensure_future(reloader.watch()), asyncio.ensure_future(self.keep_alive())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await self.stop_workers()
            if admin is not None:
                await admin.cleanup()
        return 0

    async def wait_ready(self, stop: asyncio.Event) -> bool:
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline and not stop.is_set():
            if any(not p.is_alive() for p in self.workers):
                return False
            if self.ready():
                return True
            await asyncio.sleep(0.05)
        return False

    async def keep_alive(self) -> None:
        """A worker that dies is replaced, so the port keeps its full capacity."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            for index, process in enumerate(self.workers):
                if not process.is_alive():
                    log.error(
                        "worker %s exited with status %s; starting another",
                        process.pid,
                        process.exitcode,
                    )
                    self.ready_file(process).unlink(missing_ok=True)
                    self.workers[index] = self.spawn()
                    alive = {p.pid for p in self.workers if p.pid is not None}
                    for folder in ("live", "traffic"):
                        snapshots.prune(self.rundir / folder, alive, spare=len(self.workers))

    async def stop_workers(self) -> None:
        for process in self.workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeouts.shutdown + KILL_GRACE_SECONDS
        while any(p.is_alive() for p in self.workers) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for process in self.workers:
            if process.is_alive():
                log.error("worker %s did not stop in time; killing it", process.pid)
                process.kill()
            process.join(1)


async def probe_listen(settings: Settings) -> None:
    """Fail at once, with one OSError, when the port is taken. Workers bind with SO_REUSEPORT,
    which would let them share the port with another corsproxy's workers; a bind without it,
    released at once, refuses any port someone else holds."""
    loop = asyncio.get_running_loop()
    host, port = settings.listen_host, settings.listen_port
    try:
        server = await loop.create_server(asyncio.Protocol, host, port, reuse_address=True)
    except OSError as exc:
        raise bind_failure("", host, port, exc) from None
    server.close()
    await server.wait_closed()


def load_published(rundir: Path) -> Settings:
    settings = pickle.loads((rundir / SETTINGS_FILE).read_bytes())
    assert isinstance(settings, Settings)
    return settings


def worker_main(rundir: str, supervisor: int) -> None:
    """A worker process: serve the port next to its siblings until SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    sys.exit(run(worker_serve(Path(rundir), supervisor)))


async def worker_serve(rundir: Path, supervisor: int) -> int:
    loop = asyncio.get_running_loop()
    stop = stop_on_signals(signal.SIGTERM)
    reloads = asyncio.Event()
    # Installed before the settings are read: a reload published meanwhile is not missed.
    loop.add_signal_handler(signal.SIGHUP, reloads.set)
    settings = load_published(rundir)
    try:
        running = await start(settings, RequestMetrics(), reuse_port=True)
    except TLSError as exc:
        log.error("worker %s: %s", os.getpid(), exc)
        return EXIT_START_FAILED
    except OSError as exc:
        log.error("worker %s: %s", os.getpid(), exc)
        return EXIT_START_FAILED

    async def follow() -> None:
        """Apply what the supervisor publishes; stop if the supervisor is gone."""
        while True:
            try:
                await asyncio.wait_for(reloads.wait(), CHECK_SECONDS * 5)
            except TimeoutError:
                if os.getppid() != supervisor:
                    log.error("worker %s: the supervisor is gone; stopping", os.getpid())
                    stop.set()
                    return
                continue
            reloads.clear()
            try:
                running.apply(load_published(rundir))
            except Exception:  # keep serving under the rules it has
                log.exception("worker %s could not apply a reload", os.getpid())

    follower = asyncio.ensure_future(follow())
    publisher = asyncio.ensure_future(publish(running.proxy.live, rundir / "live"))
    counts = asyncio.ensure_future(traffic.publish(running.proxy.live.traffic, rundir / "traffic"))
    ready = rundir / "ready" / str(os.getpid())
    ready.touch()
    try:
        await stop.wait()
    finally:
        follower.cancel()
        ready.unlink(missing_ok=True)
        await running.stop()
        # After the last request: each writer writes what changed since its last write.
        publisher.cancel()
        counts.cancel()
        await asyncio.gather(publisher, counts, return_exceptions=True)
    return 0
