"""https:// upstreams: a private CA, client certificates, the self-signed dev
server, with real aiohttp HTTPS upstreams on 127.0.0.1 and certificates from trustme."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import WSMsgType, web
from conftest import serving
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from procutil import clean_env, eventually, free_port, running, wait_listening

from corsproxy.config.load import parse_settings
from corsproxy.config.tree import ConfigInvalid
from corsproxy.observe.metrics import ReloadMetrics
from corsproxy.runtime.reload import ConfigSource, Reloader

ORIGIN = "https://app.test"
MiB = 1 << 20
CONFIG = """\
upstream: {upstream}
defaults:
  allow_origins: [https://app.test]
"""


@dataclass
class HTTPSUpstream:
    url: str
    port: int
    resumed: list[bool] = field(default_factory=list)  # per request: TLS session resumed


async def hello(request: web.Request) -> web.StreamResponse:
    if request.path == "/big":
        response = web.StreamResponse(headers={"Content-Length": str(100 * MiB)})
        await response.prepare(request)
        chunk = b"x" * MiB
        for _ in range(100):
            await response.write(chunk)
        await response.write_eof()
        return response
    if request.path == "/ws":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str("echo " + message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws
    return web.Response(text="ok")


@asynccontextmanager
async def https_upstream(
    cert: trustme.LeafCert | tuple[bytes, bytes],
    client_ca: trustme.CA | None = None,
    port: int = 0,
) -> AsyncIterator[HTTPSUpstream]:
    """An aiohttp HTTPS server presenting ``cert`` (trustme leaf, or (cert, key) PEM);
    ``client_ca``: it requires a client certificate issued by that CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if isinstance(cert, trustme.LeafCert):
        cert.configure_cert(context)
    else:
        folder = Path(__import__("tempfile").mkdtemp())
        (folder / "c.pem").write_bytes(cert[0] + cert[1])
        context.load_cert_chain(folder / "c.pem")
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    up = HTTPSUpstream("", 0)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        up.resumed.append(bool(ssl_object and ssl_object.session_reused))
        return await hello(request)  # type: ignore[arg-type]

    async with serving(handle, ssl_context=context, port=port) as up.port:
        up.url = f"https://127.0.0.1:{up.port}"
        yield up


def self_signed(name: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1, as a dev server makes one: (cert, key) PEM."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return authority


def access_reasons(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [
        json.loads(line)["reason"]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{")
    ]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url, headers={"Origin": ORIGIN}) as response:
        return response.status, await response.text()


# --- trust ----------------------------------------------------------------------------------


async def test_trusted_through_ca_is_200(ca, make_proxy, client) -> None:
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        proxy = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=up.url)
        assert await get(client, proxy.url + "/x") == (200, "ok")


async def test_untrusted_ca_is_502_with_the_reason(ca, make_proxy, client, caplog, capsys):
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        proxy = await make_proxy(CONFIG, upstream=up.url)  # the system store only
        caplog.set_level(logging.INFO, "corsproxy")
        capsys.readouterr()
        status, body = await get(client, proxy.url + "/x")
    reason = "upstream TLS: certificate verify failed: unable to get local issuer certificate"
    assert (status, body) == (502, reason + "\n")
    (warning,) = [w for w in warnings(caplog) if up.url in w]
    assert reason in warning and "upstream_tls.ca" in warning and "502" in warning


async def test_self_signed_dev_server_is_502_saying_so_and_logged_once(
    make_proxy, client, caplog, capsys
) -> None:
    async with https_upstream(self_signed()) as up:
        proxy = await make_proxy(CONFIG, upstream=up.url)
        caplog.set_level(logging.INFO, "corsproxy")
        capsys.readouterr()
        for _ in range(3):
            status, body = await get(client, proxy.url + "/x")
            assert (status, body) == (
                502,
                "upstream TLS: certificate verify failed: self-signed certificate\n",
            )
    (warning,) = [w for w in warnings(caplog) if up.url in w]  # three failures, one line
    assert warning.startswith(
        f"upstream {up.url} (route default): upstream TLS: certificate verify failed: "
        "self-signed certificate (trust its CA with upstream_tls.ca"
    )
    reasons: list[str] = []

    def logged() -> bool:
        reasons.extend(access_reasons(capsys))
        return len(reasons) >= 3

    await eventually(logged, 5, "three access-log lines")
    assert set(reasons) == {
        "upstream TLS: certificate verify failed: self-signed certificate (trust its CA with "
        "upstream_tls.ca, or upstream_tls.verify: false in development)"
    }


async def test_self_signed_with_verify_false_is_200_and_warned(
    make_proxy, client, tmp_path
) -> None:
    text = CONFIG + "upstream_tls: {{verify: false}}\n"
    async with https_upstream(self_signed()) as up:
        _, diagnostics = parse_settings(text.format(upstream=up.url), str(tmp_path / "c.yaml"))
        assert [str(d) for d in diagnostics] == [
            f"{tmp_path / 'c.yaml'}:4: upstream_tls.verify: warning: verify: false: upstream "
            "certificates are not checked (used by the default route): anyone on the network "
            "path can pose as the upstream; for local development only"
        ]
        proxy = await make_proxy(text, upstream=up.url)
        assert await get(client, proxy.url + "/x") == (200, "ok")


async def test_self_signed_trusted_as_its_own_ca_is_200(make_proxy, client, tmp_path) -> None:
    cert, key = self_signed()
    (tmp_path / "dev.pem").write_bytes(cert)
    async with https_upstream((cert, key)) as up:
        proxy = await make_proxy(
            CONFIG + "upstream_tls: {{ca: dev.pem, system_ca: false}}\n", upstream=up.url
        )
        assert await get(client, proxy.url + "/x") == (200, "ok")


async def test_hostname_mismatch_is_502_then_server_name_fixes_it(
    ca, make_proxy, client, caplog
) -> None:
    async with https_upstream(ca.issue_cert("api.internal")) as up:
        caplog.set_level(logging.INFO, "corsproxy")
        proxy = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=up.url)
        assert await get(client, proxy.url + "/x") == (
            502,
            "upstream TLS: certificate verify failed: hostname mismatch\n",
        )
        (warning,) = [w for w in warnings(caplog) if up.url in w]
        assert "hostname mismatch: certificate is not valid for '127.0.0.1'" in warning
        assert "upstream_tls.server_name" in warning
        fixed = await make_proxy(
            CONFIG + "upstream_tls: {{ca: ca.pem, server_name: api.internal}}\n",
            upstream=up.url,
        )
        assert await get(client, fixed.url + "/x") == (200, "ok")


async def test_route_upstream_tls_replaces_the_top_level_one_whole(ca, make_proxy, client) -> None:
    config = CONFIG + (
        "upstream_tls: {{ca: ca.pem}}\n"
        "routes:\n"
        "  - path: /own/**\n"
        "    upstream_tls: {{server_name: api.internal}}\n"  # no ca: the system store only
    )
    async with https_upstream(ca.issue_cert("127.0.0.1", "api.internal")) as up:
        proxy = await make_proxy(config, upstream=up.url)
        assert await get(client, proxy.url + "/x") == (200, "ok")
        status, body = await get(client, proxy.url + "/own/x")
        assert status == 502 and "unable to get local issuer certificate" in body


# --- mutual TLS -----------------------------------------------------------------------------


@contextmanager
def blocking_https_upstream(cert: trustme.LeafCert, client_ca: trustme.CA) -> Iterator[str]:
    """A plain-socket HTTPS server in a thread that requires a client certificate and, as
    nginx or Go do, sends the TLS alert when there is none (an asyncio server hangs up)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    client_ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(5)
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
                tls.recv(65536)  # TLS 1.3: a missing certificate is found here
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (ssl.SSLError, OSError):
                # A lingering close, as nginx does: the alert is read before any reset.
                with contextlib.suppress(OSError):
                    tls.shutdown(socket.SHUT_WR)
                    while tls.recv(65536):
                        pass
            finally:
                tls.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_client_certificate_required(ca, make_proxy, client, tmp_path, caplog) -> None:
    ca.issue_cert("proxy.test").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "client.pem")
    )
    caplog.set_level(logging.INFO, "corsproxy")
    with blocking_https_upstream(ca.issue_cert("127.0.0.1"), client_ca=ca) as url:
        without = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=url)
        assert await get(client, without.url + "/x") == (
            502,
            "upstream TLS: upstream asked for a client certificate\n",
        )
        (warning,) = [w for w in warnings(caplog) if url in w]
        assert "set upstream_tls.cert and upstream_tls.key" in warning
        with_cert = await make_proxy(
            CONFIG + "upstream_tls: {{ca: ca.pem, cert: client.pem, key: client.pem}}\n",
            upstream=url,
        )
        assert await get(client, with_cert.url + "/x") == (200, "ok")


async def test_client_certificate_required_by_an_aiohttp_upstream(
    ca, make_proxy, client, tmp_path, caplog
) -> None:
    """An asyncio server sends no alert when the certificate is missing, it hangs up: the
    log still says what to look at."""
    ca.issue_cert("proxy.test").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "client.pem")
    )
    async with https_upstream(ca.issue_cert("127.0.0.1"), client_ca=ca) as up:
        caplog.set_level(logging.INFO, "corsproxy")
        without = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=up.url)
        assert await get(client, without.url + "/x") == (502, "upstream closed the connection\n")
        (warning,) = [w for w in warnings(caplog) if up.url in w]
        assert "did the upstream ask for a client certificate?" in warning
        with_cert = await make_proxy(
            CONFIG + "upstream_tls: {{ca: ca.pem, cert: client.pem}}\n", upstream=up.url
        )
        assert await get(client, with_cert.url + "/x") == (200, "ok")


async def test_client_certificate_from_another_ca_is_refused(
    ca, make_proxy, client, tmp_path
) -> None:
    trustme.CA().issue_cert("proxy.test").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "client.pem")
    )
    with blocking_https_upstream(ca.issue_cert("127.0.0.1"), client_ca=ca) as url:
        proxy = await make_proxy(
            CONFIG + "upstream_tls: {{ca: ca.pem, cert: client.pem}}\n", upstream=url
        )
        status, body = await get(client, proxy.url + "/x")
        assert status == 502
        assert body.startswith("upstream TLS: upstream refused the client certificate (")


# --- sessions, streaming, WebSockets --------------------------------------------------------


async def test_new_connections_resume_the_tls_session(ca, make_proxy, client) -> None:
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        proxy = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=up.url)
        assert await get(client, proxy.url + "/x") == (200, "ok")
        proxy.proxy.pool.close()  # the pooled connection goes: the next one is new
        assert await get(client, proxy.url + "/x") == (200, "ok")
        assert up.resumed == [False, True]


async def test_100_mib_streams_through_an_https_upstream(ca, make_proxy, client) -> None:
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        proxy = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=up.url)
        size = 0
        async with client.get(proxy.url + "/big", headers={"Origin": ORIGIN}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
            async for chunk in response.content.iter_chunked(MiB):
                size += len(chunk)
        assert size == 100 * MiB


async def test_websocket_through_an_https_upstream(ca, make_proxy, client) -> None:
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        proxy = await make_proxy(CONFIG + "upstream_tls: {{ca: ca.pem}}\n", upstream=up.url)
        async with client.ws_connect(proxy.url + "/ws", origin=ORIGIN) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(5)).data == "echo hello"
            await ws.send_bytes(b"\x00" * 70000)
            assert (await ws.receive(5)).data == b"\x00" * 70000


# --- reload ---------------------------------------------------------------------------------


async def test_reload_that_swaps_the_ca_retires_pooled_connections(
    ca, make_proxy, client, tmp_path, caplog
) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        text = CONFIG.format(upstream=up.url) + "upstream_tls: {ca: ca.pem}\n"
        proxy = await make_proxy(text)
        path = tmp_path / "corsproxy.yaml"
        reloader = Reloader(
            ConfigSource(str(path)), lambda: proxy.proxy.settings, proxy.apply, ReloadMetrics()
        )
        caplog.set_level(logging.INFO, "corsproxy")
        assert await get(client, proxy.url + "/x") == (200, "ok")
        assert sum(map(len, proxy.proxy.pool.free.values())) == 1  # pooled, kept alive

        path.write_text(path.read_text().replace("ca: ca.pem", "ca: other-ca.pem"))
        assert reloader.reload("test") == "success"
        assert any("upstream_tls changed for routes: default" in m for m in caplog.messages)
        assert sum(map(len, proxy.proxy.pool.free.values())) == 0  # retired
        status, body = await get(client, proxy.url + "/x")  # a new connection, the new CA
        assert status == 502 and "unable to get local issuer certificate" in body

        path.write_text(path.read_text().replace("ca: other-ca.pem", "ca: ca.pem"))
        assert reloader.reload("test") == "success"
        assert await get(client, proxy.url + "/x") == (200, "ok")


async def test_every_reload_warns_about_verify_false(make_proxy, tmp_path, caplog) -> None:
    text = "upstream: https://127.0.0.1:1\nupstream_tls: {verify: false}\n"
    proxy = await make_proxy(text)
    path = tmp_path / "corsproxy.yaml"
    reloader = Reloader(
        ConfigSource(str(path)), lambda: proxy.proxy.settings, proxy.apply, ReloadMetrics()
    )
    caplog.set_level(logging.INFO, "corsproxy")
    for n in range(2):
        path.write_text(path.read_text() + f"# edit {n}\n")
        reloader.reload("test")
    said = [w for w in warnings(caplog) if "upstream_tls.verify: warning: verify: false" in w]
    assert len(said) == 2


# --- config ---------------------------------------------------------------------------------


def errors_of(text: str, tmp_path: Path) -> list[str]:
    try:
        parse_settings(text, str(tmp_path / "c.yaml"))
    except ConfigInvalid as exc:
        prefix = f"{tmp_path / 'c.yaml'}:"
        return [str(d).removeprefix(prefix) for d in exc.diagnostics if d.severity == "error"]
    return []


def test_bad_files_are_config_errors_with_the_key_path(ca, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    ca.issue_cert("c.test").cert_chain_pems[0].write_to_path(str(tmp_path / "leaf.pem"))
    other = trustme.CA().issue_cert("c.test")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    cases = {
        "upstream_tls: {ca: junk.pem}": (
            f"upstream_tls.ca: error: {tmp_path}/junk.pem holds no usable PEM certificate"
        ),
        "upstream_tls: {ca: missing.pem}": (
            f"upstream_tls.ca: error: cannot read '{tmp_path}/missing.pem'"
        ),
        "upstream_tls: {cert: junk.pem, key: junk.pem}": (
            f"upstream_tls.cert: error: {tmp_path}/junk.pem holds no usable PEM certificate"
        ),
        "upstream_tls: {cert: leaf.pem, key: other-key.pem}": (
            f"upstream_tls.key: error: {tmp_path}/other-key.pem does not match the "
            f"certificate in {tmp_path}/leaf.pem"
        ),
        "upstream_tls: {key: other-key.pem}": (
            "upstream_tls.key: error: a key needs its cert: set cert too"
        ),
        "upstream_tls: {system_ca: false}": (
            "upstream_tls.system_ca: error: system_ca: false trusts only ca, and there is no "
            "ca: no upstream certificate could ever be trusted"
        ),
        "upstream_tls: {server_name: 'a b'}": (
            "upstream_tls.server_name: error: expected a host name, got 'a b'"
        ),
        "routes: [{path: /x, upstream_tls: {ca: junk.pem}}]": (
            f"routes[0].upstream_tls.ca: error: {tmp_path}/junk.pem holds no usable PEM certificate"
        ),
    }
    for line, expected in cases.items():
        text = f"upstream: https://a\n{line}\n"
        assert errors_of(text, tmp_path) == [f"2: {expected}"], line


def test_ca_folder(ca, tmp_path: Path) -> None:
    (tmp_path / "cas").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "cas" / "one.crt"))
    settings, _ = parse_settings(
        "upstream: https://a\nupstream_tls: {ca: cas}\n", str(tmp_path / "c.yaml")
    )
    assert settings.table.fallback.upstream is not None
    (tmp_path / "empty").mkdir()
    assert errors_of("upstream: https://a\nupstream_tls: {ca: empty}\n", tmp_path) == [
        f"2: upstream_tls.ca: error: {tmp_path}/empty is a folder with no .pem, .crt, .cer "
        "file in it"
    ]


def test_route_verify_false_warning_names_the_route(tmp_path: Path) -> None:
    text = (
        "upstream: https://a\nroutes:\n"
        "  - {path: /dev/**, name: dev, upstream_tls: {verify: false}}\n"
        "  - {path: /api/**}\n"
    )
    _, diagnostics = parse_settings(text, str(tmp_path / "c.yaml"))
    assert [str(d).removeprefix(f"{tmp_path / 'c.yaml'}:") for d in diagnostics] == [
        "3: routes[0].upstream_tls.verify: warning: verify: false: upstream certificates are "
        "not checked (used by 'dev' (/dev/**)): anyone on the network path can pose as the "
        "upstream; for local development only"
    ]


def test_settings_with_upstream_tls_pickle_for_workers(ca, tmp_path: Path) -> None:
    import pickle

    settings, _ = parse_settings(
        "upstream: https://a\nupstream_tls: {ca: ca.pem}\n", str(tmp_path / "c.yaml")
    )
    again = pickle.loads(pickle.dumps(settings))
    upstream = again.table.fallback.upstream
    assert upstream == settings.table.fallback.upstream
    assert upstream.tls.context.verify_mode == ssl.CERT_REQUIRED


# --- no file: --upstream-ca, --upstream-insecure, $CORSPROXY_UPSTREAM_CA -------------------


@pytest.mark.parametrize("how", ["--upstream-ca", "$CORSPROXY_UPSTREAM_CA", "--upstream-insecure"])
async def test_no_file_flags_and_variable(ca, tmp_path: Path, client, how: str) -> None:
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        port = free_port()
        args = ["serve", "--upstream", up.url, "--allow-origin", ORIGIN]
        args += ["--listen", f"127.0.0.1:{port}"]
        env = clean_env()
        if how == "--upstream-ca":
            args += ["--upstream-ca", "ca.pem"]  # relative to the working directory
        elif how == "--upstream-insecure":
            args += ["--upstream-insecure"]
        else:
            env["CORSPROXY_UPSTREAM_CA"] = str(tmp_path / "ca.pem")
        with running(args, tmp_path / "out", env=env, cwd=tmp_path) as proc:
            await wait_listening(port, proc)
            assert await get(client, f"http://127.0.0.1:{port}/x") == (200, "ok")
            stderr = proc.stderr()
        if how == "--upstream-insecure":
            assert (
                "--upstream-insecure: upstream_tls.verify: warning: verify: false: upstream "
                "certificates are not checked (used by the default route)" in stderr
            )
        else:
            assert "warning" not in stderr


async def test_no_file_without_the_ca_is_502_saying_why(ca, tmp_path: Path, client) -> None:
    async with https_upstream(ca.issue_cert("127.0.0.1")) as up:
        port = free_port()
        args = ["serve", "--upstream", up.url, "--allow-origin", ORIGIN]
        args += ["--listen", f"127.0.0.1:{port}"]
        with running(args, tmp_path / "out", cwd=tmp_path) as proc:
            await wait_listening(port, proc)
            status, body = await get(client, f"http://127.0.0.1:{port}/x")
            assert status == 502
            assert body == (
                "upstream TLS: certificate verify failed: unable to get local issuer certificate\n"
            )
            await eventually(lambda: "upstream TLS" in proc.stderr(), 5, "the warning")


def test_upstream_ca_flag_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    from procutil import run

    done = run(
        ["serve", "--upstream", "https://127.0.0.1:1", "--upstream-ca", "nope.pem"],
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"--upstream-ca: upstream_tls.ca: error: cannot read '{tmp_path}/nope.pem'"
    )


async def test_probe_shows_the_502_body_line(tmp_path: Path, make_proxy) -> None:
    from corsproxy.tools.cli import browser_request
    from corsproxy.tools.probe import format_text, probe

    async with https_upstream(self_signed()) as up:
        proxy = await make_proxy(CONFIG, upstream=up.url)
        result = await probe(proxy.url + "/x", browser_request(ORIGIN, "GET", [], False), 5)
    text = format_text(result)
    assert "502" in text
    assert "upstream TLS: certificate verify failed: self-signed certificate" in text
