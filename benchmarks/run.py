#!/usr/bin/env python3
"""Load benchmark: corsproxy against nginx with the same CORS rules, in the same run.

    python benchmarks/run.py            # 3 interleaved rounds, about 2-3 minutes
    python benchmarks/run.py --quick    # 1 round, smoke run
    python benchmarks/run.py --json out.json
    python benchmarks/run.py --profile 5   # py-spy (or cProfile) on corsproxy under GET 100 B
    python benchmarks/run.py --profile 5 --profile-scenario preflight

Starts, on 127.0.0.1 ephemeral ports:
  upstream   nginx serving /small (100 B), /big (1 MiB) and /upload (the body is read in
             full by a buffering proxy_pass before a second server block answers 200)
  nginx      the reference CORS proxy, 1 worker, same rules as corsproxy
  corsproxy  `serve -c`, access_log off, 1 worker (and a second one with workers: 2)
  aiohttp    a plain aiohttp + uvloop proxy with the same rules (plain_aiohttp_proxy.py), the
             peer docs/performance.md#targets names
and drives them with wrk (1 thread). Figures: req/s, p50, p99, proxy CPU time per request
(user+sys of the proxy's process tree / requests), peak RSS of the largest process (sampled
every 100 ms; CPython rarely returns memory: it is the high-water mark so far). Each is the median
over rounds with the spread (min-max) and its ratio to nginx-as-proxy from the same run.

Needs wrk and nginx (installed with apt-get when missing and running as root) and psutil.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGIN = "https://app.example.com"
SMALL = 100
BIG = 1024 * 1024


# --------------------------------------------------------------------------- tools


def need_tools() -> tuple[str, str]:
    wrk, nginx = (
        shutil.which("wrk"),
        shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None),
    )
    if (wrk is None or nginx is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk and nginx with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "install", "-y", "wrk", "nginx"],
            check=False,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wrk = shutil.which("wrk")
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
    if wrk is None or nginx is None:
        sys.exit("benchmarks/run.py: needs wrk and nginx (apt-get install wrk nginx)")
    return wrk, nginx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


# --------------------------------------------------------------------------- configs

NGINX_COMMON = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
"""

HTTP_COMMON = """\
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server_tokens off;
"""

UPSTREAM_CONF = (
    NGINX_COMMON
    + """\
http {{
"""
    + HTTP_COMMON
    + """\
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    upstream sink {{ server 127.0.0.1:{sink}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location = /small {{ }}
        location = /big {{ }}
        # The whole body is read (buffered in memory) before the sink is asked: the 200
        # can only come after the last byte of the upload has arrived.
        location = /upload {{
            client_max_body_size 2m;
            client_body_buffer_size 2m;
            proxy_request_buffering on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://sink/sink;
        }}
    }}
    server {{
        listen 127.0.0.1:{sink} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
)

# The same rules as CORSPROXY_CONF: one allowed origin with credentials; preflights answered
# 204 with the same Access-Control-* headers; actual responses get ACAO/ACAC/Vary and the
# upstream's own Access-Control-* headers are hidden; a disallowed Origin is refused 403.
# (nginx does not check Access-Control-Request-Method/-Headers; corsproxy does.)
PROXY_CONF = (
    NGINX_COMMON
    + """\
http {{
"""
    + HTTP_COMMON
    + """\
    map $http_origin $cors_origin {{ "{origin}" $http_origin; default ""; }}
    map $cors_origin $cors_credentials {{ "" ""; default "true"; }}
    map "$http_origin:$cors_origin" $cors_refuse {{ ":" 0; "~^[^:]+.*:$" 1; default 0; }}
    upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 2m;
        location / {{
            if ($cors_refuse) {{ return 403; }}
            if ($request_method = OPTIONS) {{
                add_header Access-Control-Allow-Origin $cors_origin always;
                add_header Access-Control-Allow-Credentials $cors_credentials always;
                add_header Access-Control-Allow-Methods "GET, HEAD, POST, PUT" always;
                add_header Access-Control-Allow-Headers "Content-Type, X-Request-ID" always;
                add_header Access-Control-Max-Age 600 always;
                add_header Vary "{preflight_vary}" always;
                return 204;
            }}
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_max_temp_file_size 0;
            proxy_hide_header Access-Control-Allow-Origin;
            proxy_hide_header Access-Control-Allow-Credentials;
            proxy_hide_header Access-Control-Allow-Methods;
            proxy_hide_header Access-Control-Allow-Headers;
            proxy_hide_header Access-Control-Expose-Headers;
            proxy_hide_header Access-Control-Max-Age;
            proxy_hide_header Access-Control-Allow-Private-Network;
            add_header Access-Control-Allow-Origin $cors_origin always;
            add_header Access-Control-Allow-Credentials $cors_credentials always;
            add_header Vary Origin always;
        }}
    }}
}}
"""
)

PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

# nginx tunnelling WebSockets, the way its documentation shows (no origin check: corsproxy's
# handshake check is its only extra work, and it happens once per connection).
WS_PROXY_CONF = (
    NGINX_COMMON
    + """\
http {{
"""
    + HTTP_COMMON
    + """\
    upstream ws {{ server 127.0.0.1:{up}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""
)
WS_CONNS = 16  # connections, each echoing one message at a time
WS_SIZE = 32  # bytes of payload per message
WS_LOAD = os.path.join(REPO, "benchmarks", "websocket_load.py")

CORSPROXY_CONF = """\
listen: 127.0.0.1:{port}
upstream: http://127.0.0.1:{up}
workers: {workers}
access_log: off
timeouts: {{connect: 5, read: 60, idle: 75, shutdown: 1}}
defaults:
  allow_origins: [{origin}]
  allow_methods: [GET, HEAD, POST, PUT]
  allow_headers: [Content-Type, X-Request-ID]
  allow_credentials: true
  max_age: 600
"""

LUA_PREFLIGHT = f"""\
wrk.method = "OPTIONS"
wrk.headers["Origin"] = "{ORIGIN}"
wrk.headers["Access-Control-Request-Method"] = "POST"
wrk.headers["Access-Control-Request-Headers"] = "content-type,x-request-id"
"""

LUA_GET = f"""\
wrk.method = "GET"
wrk.headers["Origin"] = "{ORIGIN}"
"""

LUA_POST = f"""\
wrk.method = "POST"
wrk.headers["Origin"] = "{ORIGIN}"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.body = string.rep("x", {BIG})
"""


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> tuple[int, int]:
        """(largest single process, whole tree) resident set size in bytes."""
        sizes = []
        for p in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                sizes.append(p.memory_info().rss)
        return (max(sizes) if sizes else 0, sum(sizes))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                for p in self.tree()[::-1]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
                self.proc.wait(timeout=5)


def start_nginx(nginx: str, workdir: str, name: str, conf: str, port: int) -> Server:
    path = os.path.join(workdir, f"{name}.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen(
        [nginx, "-p", workdir, "-c", path, "-e", f"{workdir}/{name}-error.log"],
        stdout=subprocess.DEVNULL,
        stderr=open(f"{workdir}/{name}.stderr", "w"),  # noqa: SIM115 (child keeps it)
    )
    wait_port(port, proc)
    return Server(name, port, proc)


def start_corsproxy(
    workdir: str,
    name: str,
    port: int,
    up: int,
    workers: int,
    prefix: list[str] | None = None,
    conf: str = CORSPROXY_CONF,
) -> Server:
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(conf.format(port=port, up=up, workers=workers, origin=ORIGIN))
    cmd = [*(prefix or [sys.executable]), "-m", "corsproxy", "serve", "-c", path]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(f"{workdir}/{name}.log", "w"),  # noqa: SIM115 (child keeps it)
    )
    wait_port(port, proc, timeout=20)
    if workers > 1:  # every worker up before measuring
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(psutil.Process(proc.pid).children()) < workers:
            time.sleep(0.1)
    return Server(name, port, proc)


def start_plain_aiohttp(workdir: str, port: int, up: int) -> Server:
    """The issue's "plain aiohttp + uvloop proxy" peer (benchmarks/plain_aiohttp_proxy.py)."""
    script = os.path.join(REPO, "benchmarks", "plain_aiohttp_proxy.py")
    proc = subprocess.Popen(
        [sys.executable, script, str(port), f"http://127.0.0.1:{up}", ORIGIN],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=open(f"{workdir}/aiohttp.log", "w"),  # noqa: SIM115 (child keeps it)
    )
    wait_port(port, proc, timeout=20)
    return Server("aiohttp", port, proc)


# --------------------------------------------------------------------------- wrk


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * UNITS[m.group(2)]


@dataclass
class Sample:
    rps: float
    p50: float  # ms
    p99: float  # ms
    cpu_us: float  # proxy CPU per request, microseconds
    rss_max: float  # MiB, largest process
    rss_total: float  # MiB, whole tree
    requests: int
    errors: int


def run_wrk(wrk: str, script: str, url: str, conns: int, seconds: float, server: Server) -> Sample:
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            one, total = server.rss()
            peak[0], peak[1] = max(peak[0], one), max(peak[1], total)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu0 = server.cpu()
    sampler.start()
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{conns}",
            f"-d{int(seconds)}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    cpu1 = server.cpu()
    done.set()
    sampler.join()
    text = out.stdout
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
        requests = int(re.search(r"(\d+) requests in", text).group(1))
        p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
        p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    except AttributeError:
        raise RuntimeError(f"cannot parse wrk output for {url}:\n{text}\n{out.stderr}") from None
    errors = 0
    for pattern in (
        r"Non-2xx or 3xx responses: (\d+)",
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
    ):
        m = re.search(pattern, text)
        if m:
            errors += sum(int(g) for g in m.groups())
    cpu_us = (cpu1 - cpu0) / requests * 1e6 if requests else float("nan")
    return Sample(rps, p50, p99, cpu_us, peak[0] / 2**20, peak[1] / 2**20, requests, errors)


# --------------------------------------------------------------------------- plan


@dataclass
class Scenario:
    name: str
    script: str
    path: str
    upstream_path: str | None  # path on the upstream for the direct baseline; None: no baseline
    conns: int
    targets: tuple[str, ...]
    results: dict[str, list[Sample]] = field(default_factory=dict)


def scenarios(workdir: str) -> list[Scenario]:
    def lua(name: str, text: str) -> str:
        path = os.path.join(workdir, f"{name}.lua")
        with open(path, "w") as f:
            f.write(text)
        return path

    pre, get, post = lua("preflight", LUA_PREFLIGHT), lua("get", LUA_GET), lua("post", LUA_POST)
    return [
        Scenario("preflight", pre, "/small", None, 32, ("nginx", "corsproxy", "aiohttp")),
        Scenario(
            "GET 100 B",
            get,
            "/small",
            "/small",
            32,
            ("upstream", "nginx", "corsproxy", "corsproxy-w2", "aiohttp"),
        ),
        Scenario(
            "GET 1 MiB", get, "/big", "/big", 16, ("upstream", "nginx", "corsproxy", "aiohttp")
        ),
        Scenario(
            "POST 1 MiB",
            post,
            "/upload",
            "/upload",
            16,
            ("upstream", "nginx", "corsproxy", "aiohttp"),
        ),
    ]


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(v: float) -> str:
    if v != v:
        return "nan"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


FIGURES = (
    ("req/s", "rps"),
    ("p50 ms", "p50"),
    ("p99 ms", "p99"),
    ("CPU us/req", "cpu_us"),
    ("RSS MiB", "rss_max"),
)


def table(sc: Scenario) -> str:
    ref = sc.results.get("nginx", [])
    lines = [
        f"### {sc.name}  (wrk -t1 -c{sc.conns}; median [min-max] over {len(ref)} round(s); "
        f"(Nx) = ratio to nginx-as-proxy, median of per-round ratios)",
        "",
    ]
    head = "| target | " + " | ".join(name for name, _ in FIGURES) + " | errors |"
    lines += [head, "|" + "---|" * (len(FIGURES) + 2)]
    for target in sc.targets:
        samples = sc.results.get(target, [])
        if not samples:
            continue
        cells = []
        for _, attr in FIGURES:
            vals = [getattr(s, attr) for s in samples]
            med, lo, hi = spread(vals)
            cell = f"{fmt(med)} [{fmt(lo)}-{fmt(hi)}]" if len(vals) > 1 else fmt(med)
            if target != "nginx" and ref and len(ref) == len(samples):
                ratios = [
                    getattr(s, attr) / getattr(r, attr) if getattr(r, attr) else float("nan")
                    for s, r in zip(samples, ref, strict=True)
                ]
                cell += f" ({statistics.median(ratios):.2f}x)"
            cells.append(cell)
        label = target
        if target == "upstream":
            label = "upstream direct (baseline; CPU/RSS are the upstream's)"
        elif target == "corsproxy-w2":
            label = "corsproxy workers: 2 (RSS: largest process)"
        elif target == "aiohttp":
            label = "plain aiohttp proxy (peer)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sum(s.errors for s in samples)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def start_all(nginx: str, workdir: str, with_proxies: bool = True) -> dict[str, Server]:
    os.makedirs(os.path.join(workdir, "www"))
    with open(os.path.join(workdir, "www", "small"), "wb") as f:
        f.write(b"s" * SMALL)
    with open(os.path.join(workdir, "www", "big"), "wb") as f:
        f.write(os.urandom(BIG))
    servers: dict[str, Server] = {}
    up, sink = free_port(), free_port()
    servers["upstream"] = start_nginx(
        nginx,
        workdir,
        "upstream",
        UPSTREAM_CONF.format(dir=workdir, name="upstream", port=up, sink=sink),
        up,
    )
    if with_proxies:
        ng = free_port()
        servers["nginx"] = start_nginx(
            nginx,
            workdir,
            "proxy",
            PROXY_CONF.format(
                dir=workdir,
                name="proxy",
                port=ng,
                up=up,
                origin=ORIGIN,
                preflight_vary=PREFLIGHT_VARY,
            ),
            ng,
        )
        servers["corsproxy"] = start_corsproxy(workdir, "corsproxy", free_port(), up, 1)
        servers["corsproxy-w2"] = start_corsproxy(workdir, "corsproxy-w2", free_port(), up, 2)
        servers["aiohttp"] = start_plain_aiohttp(workdir, free_port(), up)
    return servers


def sanity(servers: dict[str, Server]) -> None:
    """One request per scenario and target, checked, before anything is measured."""
    import http.client

    def req(port: int, method: str, path: str, headers: dict, body: bytes | None = None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    pre = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-request-id",
    }
    for name in ("nginx", "corsproxy", "corsproxy-w2", "aiohttp"):
        port = servers[name].port
        st, hd, _ = req(port, "OPTIONS", "/small", pre)
        assert st == 204 and hd.get("access-control-allow-origin") == ORIGIN, (name, st, hd)
        assert hd.get("access-control-allow-methods") == "GET, HEAD, POST, PUT", (name, hd)
        assert hd.get("vary") == PREFLIGHT_VARY, (name, hd)
        st, hd, body = req(port, "GET", "/small", {"Origin": ORIGIN})
        assert (
            st == 200
            and len(body) == SMALL
            and hd.get("access-control-allow-credentials") == "true"
        ), (name, st, hd)
        st, hd, body = req(port, "GET", "/big", {"Origin": ORIGIN})
        assert st == 200 and len(body) == BIG, (name, st)
        st, hd, body = req(port, "POST", "/upload", {"Origin": ORIGIN}, b"x" * BIG)
        assert st == 200 and body == b"ok\n", (name, st, body)
        st, _, _ = req(port, "GET", "/small", {"Origin": "https://evil.example"})
        assert st == 403, (name, st)


def admin_page_scenario(wrk: str, workdir: str, up: int, rounds: int, seconds: float) -> str:
    """What an open admin page costs: corsproxy (with its admin listener) under the GET 100 B
    load, with and without a client reading /state.json once a second as the page does, in
    interleaved rounds; the difference in the process's CPU."""
    import http.client

    admin = free_port()
    conf = CORSPROXY_CONF + f"admin: 127.0.0.1:{admin}\n"
    server = start_corsproxy(workdir, "corsproxy-admin", free_port(), up, 1, conf=conf)
    script = os.path.join(workdir, "admin-get.lua")
    with open(script, "w") as f:
        f.write(LUA_GET)
    url = f"http://127.0.0.1:{server.port}/small"
    results: dict[str, list[Sample]] = {"closed": [], "open": []}

    def page(stop: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        for path in ("/", "/admin.css", "/admin.js"):
            conn.request("GET", path)
            conn.getresponse().read()
        while not stop.is_set():
            conn.request("GET", "/state.json")
            conn.getresponse().read()
            stop.wait(1.0)
        conn.close()

    try:
        run_wrk(wrk, script, url, 32, 1, server)  # warm-up
        for rnd in range(rounds):
            for state in ("closed", "open") if rnd % 2 == 0 else ("open", "closed"):
                stop = threading.Event()
                poller = threading.Thread(target=page, args=(stop,), daemon=True)
                if state == "open":
                    poller.start()
                results[state].append(run_wrk(wrk, script, url, 32, seconds, server))
                stop.set()
                if state == "open":
                    poller.join()
    finally:
        server.stop()
    closed = statistics.median(s.cpu_us for s in results["closed"])
    opened = statistics.median(s.cpu_us for s in results["open"])
    rps = statistics.median(s.rps for s in results["open"])
    per_second = (opened - closed) * rps / 1000  # ms of CPU per second of load
    return "\n".join(
        [
            f"### the admin page open during GET 100 B  (wrk -t1 -c32; median over {rounds} "
            "round(s); the page reads /state.json once a second)",
            "",
            "| admin page | CPU us/request (corsproxy) |",
            "|---|---|",
            f"| closed | {fmt(closed)} |",
            f"| open | {fmt(opened)} ({opened / closed:.2f}x; about {per_second:.1f} ms CPU per "
            "second of load) |",
        ]
    )


def websocket_scenario(nginx: str, workdir: str, rounds: int, seconds: float) -> str:
    """Small WebSocket messages echoed by the demo's echo upstream, hit directly, through
    nginx and through corsproxy; the proxy CPU per relayed message, in the same run."""
    up = free_port()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    echo = subprocess.Popen(
        [sys.executable, "-m", "corsproxy.tools.echo", "--listen", f"127.0.0.1:{up}"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(f"{workdir}/ws-echo.log", "w"),  # noqa: SIM115 (child keeps it)
    )
    servers = {"upstream": Server("upstream", up, echo)}
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        wait_port(up, echo, timeout=20)
        ngp = free_port()
        conf = WS_PROXY_CONF.format(dir=workdir, name="wsproxy", port=ngp, up=up)
        servers["nginx"] = start_nginx(nginx, workdir, "wsproxy", conf, ngp)
        servers["corsproxy"] = start_corsproxy(workdir, "corsproxy-ws", free_port(), up, 1)

        def load(server: Server, length: float) -> tuple[float, float]:
            before = server.cpu()
            args = (server.port, WS_CONNS, length, WS_SIZE)
            out = subprocess.run(
                [sys.executable, WS_LOAD, *map(str, args), ORIGIN],
                capture_output=True,
                text=True,
                timeout=length + 30,
                check=True,
            )
            cpu = server.cpu() - before
            done = json.loads(out.stdout)
            messages = 2 * done["round_trips"]  # one each way per round trip
            return messages / done["seconds"], cpu / messages * 1e6

        for server in servers.values():
            load(server, 1)  # warm-up
        targets = list(servers)
        for rnd in range(rounds):
            k = rnd % len(targets)
            for t in targets[k:] + targets[:k]:
                results.setdefault(t, []).append(load(servers[t], seconds))
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
    lines = [
        f"### WebSocket echo, {WS_SIZE} B messages  ({WS_CONNS} connections; median [min-max] "
        f"over {rounds} round(s); (Nx) = ratio to nginx, median of per-round ratios)",
        "",
        "| target | messages/s | CPU us/message |",
        "|---|---|---|",
    ]
    for t, label in (
        ("upstream", "upstream direct (baseline; CPU is the echo upstream's)"),
        ("nginx", "nginx"),
        ("corsproxy", "corsproxy"),
    ):
        cells = []
        for i in (0, 1):
            values = [r[i] for r in results[t]]
            mid, lo, hi = spread(values)
            cell = f"{fmt(mid)} [{fmt(lo)}-{fmt(hi)}]"
            if t != "nginx":
                ratios = [r[i] / n[i] for r, n in zip(results[t], results["nginx"], strict=True)]
                cell += f" ({statistics.median(ratios):.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


HTTPS_UPSTREAM_CONF = (
    NGINX_COMMON
    + """\
http {{
"""
    + HTTP_COMMON
    + """\
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {dir}/https-upstream.pem;
        ssl_certificate_key {dir}/https-upstream-key.pem;
        root {dir}/www;
        location = /small {{ }}
    }}
}}
"""
)
HTTPS_NAME = "upstream.bench"  # the upstream certificate's name; both proxies check it


def https_scenario(wrk: str, nginx: str, workdir: str, rounds: int, seconds: float) -> str:
    """GET 100 B from an HTTPS upstream (nginx, `listen ... ssl`, a trustme certificate):
    nginx with proxy_ssl (verify on, sessions reused, keep-alive) against corsproxy with
    upstream_tls, both checking the certificate; the proxy CPU per request in the same run."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(HTTPS_NAME)
    ca.cert_pem.write_to_path(f"{workdir}/https-ca.pem")
    leaf.cert_chain_pems[0].write_to_path(f"{workdir}/https-upstream.pem")
    leaf.private_key_pem.write_to_path(f"{workdir}/https-upstream-key.pem")
    up, ngp = free_port(), free_port()
    servers: dict[str, Server] = {}
    try:
        conf = HTTPS_UPSTREAM_CONF.format(dir=workdir, name="https-upstream", port=up)
        servers["upstream"] = start_nginx(nginx, workdir, "https-upstream", conf, up)
        proxy = PROXY_CONF.format(
            dir=workdir,
            name="https-proxy",
            port=ngp,
            up=up,
            origin=ORIGIN,
            preflight_vary=PREFLIGHT_VARY,
        ).replace(
            "proxy_pass http://up;",
            f"proxy_pass https://up;\n"
            f"            proxy_ssl_verify on;\n"
            f"            proxy_ssl_trusted_certificate {workdir}/https-ca.pem;\n"
            f"            proxy_ssl_name {HTTPS_NAME};\n"
            f"            proxy_ssl_server_name on;\n"
            f"            proxy_ssl_session_reuse on;",
        )
        servers["nginx"] = start_nginx(nginx, workdir, "https-proxy", proxy, ngp)
        conf = CORSPROXY_CONF.replace("upstream: http://", "upstream: https://") + (
            f"upstream_tls: {{{{ca: https-ca.pem, server_name: {HTTPS_NAME}}}}}\n"
        )
        servers["corsproxy"] = start_corsproxy(
            workdir, "corsproxy-https", free_port(), up, 1, conf=conf
        )
        script = os.path.join(workdir, "https-get.lua")
        with open(script, "w") as f:
            f.write(LUA_GET)
        targets = ("nginx", "corsproxy")
        sc = Scenario("GET 100 B, https upstream", script, "/small", None, 32, targets)
        for t in sc.targets:  # warm-up, and a check that both answer 200 over TLS
            s = run_wrk(wrk, script, f"http://127.0.0.1:{servers[t].port}/small", 32, 1, servers[t])
            assert s.errors == 0, (t, s)
        for rnd in range(rounds):
            order = list(sc.targets)[rnd % 2 :] + list(sc.targets)[: rnd % 2]
            for t in order:
                url = f"http://127.0.0.1:{servers[t].port}/small"
                sc.results.setdefault(t, []).append(
                    run_wrk(wrk, script, url, sc.conns, seconds, servers[t])
                )
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
    return table(sc)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 round (smoke run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="length of each wrk run")
    ap.add_argument("--json", help="write every sample to this file")
    ap.add_argument(
        "--profile",
        type=float,
        metavar="SECONDS",
        help="instead: profile corsproxy under load (py-spy if installed, else cProfile)",
    )
    ap.add_argument(
        "--profile-scenario",
        choices=("get", "preflight", "big"),
        default="get",
        help="what --profile loads corsproxy with: GET 100 B (default), preflights, GET 1 MiB",
    )
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    wrk, nginx = need_tools()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="corsproxy-bench-")
    os.chmod(workdir, 0o755)  # nginx workers (user nobody when started as root) read www/
    servers: dict[str, Server] = {}
    try:
        if args.profile:
            return profile(wrk, nginx, workdir, args.profile, args.profile_scenario)
        servers = start_all(nginx, workdir)
        sanity(servers)
        plan = scenarios(workdir)
        # warm-up: every target once per scenario (connection pools, code paths)
        for sc in plan:
            for t in sc.targets:
                path = sc.upstream_path if t == "upstream" else sc.path
                run_wrk(
                    wrk,
                    sc.script,
                    f"http://127.0.0.1:{servers[t].port}{path}",
                    sc.conns,
                    1,
                    servers[t],
                )
        for rnd in range(rounds):
            for sc in plan:
                order = list(sc.targets)
                k = rnd % len(order)
                order = order[k:] + order[:k]  # rotate: no target always first or last
                for t in order:
                    path = sc.upstream_path if t == "upstream" else sc.path
                    s = run_wrk(
                        wrk,
                        sc.script,
                        f"http://127.0.0.1:{servers[t].port}{path}",
                        sc.conns,
                        args.seconds,
                        servers[t],
                    )
                    sc.results.setdefault(t, []).append(s)
            print(f"round {rnd + 1}/{rounds} done ({time.monotonic() - started:.0f} s)", flush=True)
        print()
        print(
            f"corsproxy benchmark: {rounds} round(s) of {args.seconds:g} s per run, "
            f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
        )
        print()
        for sc in plan:
            print(table(sc))
            print()
        print(websocket_scenario(nginx, workdir, rounds, args.seconds))
        print()
        print(https_scenario(wrk, nginx, workdir, rounds, args.seconds))
        print()
        up = servers["upstream"].port
        print(admin_page_scenario(wrk, workdir, up, rounds, args.seconds))
        print()
        print(f"total run time: {time.monotonic() - started:.0f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        sc.name: {t: [s.__dict__ for s in v] for t, v in sc.results.items()}
                        for sc in plan
                    },
                    f,
                    indent=1,
                )
        return 0
    finally:
        for s in reversed(list(servers.values())):
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def profile(wrk: str, nginx: str, workdir: str, seconds: float, what: str) -> int:
    servers = start_all(nginx, workdir, with_proxies=False)
    up = servers["upstream"].port
    script = os.path.join(workdir, f"{what}.lua")
    with open(script, "w") as f:
        f.write(LUA_PREFLIGHT if what == "preflight" else LUA_GET)
    pyspy = shutil.which("py-spy")
    prof = os.path.join(workdir, "corsproxy.prof")
    prefix = None if pyspy else [sys.executable, "-m", "cProfile", "-o", prof]
    cp = start_corsproxy(workdir, "corsproxy", free_port(), up, 1, prefix=prefix)
    servers["corsproxy"] = cp
    url = f"http://127.0.0.1:{cp.port}/{'big' if what == 'big' else 'small'}"
    conns = 16 if what == "big" else 32
    try:
        run_wrk(wrk, script, url, conns, 1, cp)  # warm-up
        if pyspy:
            name = {"preflight": "profile-preflight.txt", "big": "profile-get-big.txt"}.get(
                what, "profile-get-small.txt"
            )
            out = os.path.join(REPO, "benchmarks", name)
            spy = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "-p",
                    str(cp.proc.pid),
                    "-d",
                    str(int(seconds) + 1),
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    out,
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            s = run_wrk(wrk, script, url, conns, seconds, cp)
            spy.wait(timeout=seconds + 30)
            print(f"under profile: {s.rps:.0f} req/s, {s.cpu_us:.0f} us CPU/request")
            print(f"py-spy folded stacks written to {out}")
            summarise_folded(out)
        else:
            s = run_wrk(wrk, script, url, conns, seconds, cp)
            print(f"under cProfile: {s.rps:.0f} req/s, {s.cpu_us:.0f} us CPU/request")
            cp.stop()
            import pstats

            st = pstats.Stats(prof)
            st.sort_stats("tottime").print_stats(30)
            st.sort_stats("cumulative").print_stats(40)
    finally:
        for srv in reversed(list(servers.values())):
            srv.stop()
    return 0


GROUPS = (  # checked from the innermost frame outwards; the first hit names the sample
    ("access log / metrics", ("AccessLogger", "prometheus_client", "accesslog.py", "metrics.py")),
    ("socket writes (transport.write)", ("StreamWriter._write ",)),
    (
        "aiohttp client (ClientSession request path)",
        ("aiohttp/client", "aiohttp/connector", "aiohttp/tracing", "aiohttp/cookiejar", "yarl/"),
    ),
    (
        "aiohttp server (parsing, web_protocol, response)",
        (
            "aiohttp/web_",
            "aiohttp/http_",
            "aiohttp/_http",
            "aiohttp/streams",
            "aiohttp/base_protocol",
            "aiohttp/helpers",
        ),
    ),
    ("corsproxy handler (route, decide, headers)", ("corsproxy/",)),
    ("event loop (uvloop, C: epoll, reads, callbacks)", ("asyncio/", "uvloop")),
)


def summarise_folded(path: str) -> None:
    """Time per group and per function from py-spy's raw (folded) output.

    py-spy names frames ``func (file:line)``; lines are dropped so each function is one row.
    Coroutines resumed by uvloop show no loop frames above them.
    """

    def fn(frame: str) -> str:
        return re.sub(r":\d+\)$", ")", frame)

    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    groups: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            count = int(n)
            frames = [fn(x) for x in stack.split(";") if x]
            if not frames:
                continue
            total += count
            selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + count
            g = "other"
            for fr in reversed(frames):
                hit = next(
                    (name for name, keys in GROUPS if any(k in fr + " " for k in keys)), None
                )
                if hit:
                    g = hit
                    if hit.startswith("socket writes"):
                        upstream = any(
                            "client_reqrep" in x or "aiohttp/client.py" in x for x in frames
                        )
                        g += ": request to upstream" if upstream else ": response to client"
                    break
            groups[g] = groups.get(g, 0) + count
    print(f"\n{total} samples; by group (innermost frame that belongs to a group):")
    for g, c in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * c / total:5.1f}%  {g}")
    print("\ntop self time (per function):")
    for fr, c in sorted(selfs.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {100 * c / total:5.1f}%  {fr}")
    print("\ntop inclusive time (per function):")
    for fr, c in sorted(incl.items(), key=lambda kv: -kv[1])[:35]:
        print(f"  {100 * c / total:5.1f}%  {fr}")


if __name__ == "__main__":
    sys.exit(main())
