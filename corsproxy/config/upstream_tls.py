"""TLS toward https:// upstreams: ``upstream_tls`` compiled into SSL contexts, and TLS
failures told in words (docs/operations.md#tls).

A context is built once, when the config is loaded (``build``), never per request; the same
settings and the same file contents give back the same context object, so a reload that
leaves ``upstream_tls`` alone keeps its pooled connections and TLS sessions. Each context
remembers the last resumable session per server name (``UpstreamContext.sessions``), so a new
connection to an upstream resumes the TLS session of an earlier one.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corsproxy.engine.policy import Settings

# The files a folder given as ``ca`` contributes: PEM certificates by their usual suffixes.
CA_SUFFIXES = (".pem", ".crt", ".cer")
_CACHE_SIZE = 64


class TLSFileError(Exception):
    """A ``upstream_tls`` file cannot be used: ``key`` names the key (ca, cert or key)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt for a passphrase on the terminal.
    raise _EncryptedKey


class UpstreamContext(ssl.SSLContext):
    """An SSL context that offers each new connection the last session of its server name.

    asyncio and uvloop call ``wrap_bio`` without a session; this fills it in. Sessions are
    stored by ``remember`` once a connection has carried an exchange (a TLS 1.3 ticket arrives
    after the handshake).
    """

    sessions: dict[str, ssl.SSLSession]

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and server_hostname is not None:
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, ssl_object: Any) -> None:
        """Keep the session of ``ssl_object`` (an SSLObject) for the next connection."""
        if ssl_object is None:
            return
        session = ssl_object.session
        name = ssl_object.server_hostname
        if session is None or name is None:
            return
        if session.has_ticket or session.id:
            if len(self.sessions) >= _CACHE_SIZE and name not in self.sessions:
                self.sessions.clear()
            self.sessions[name] = session


@dataclass(frozen=True, slots=True)
class Spec:
    """``upstream_tls`` as written, paths made absolute."""

    ca: str | None = None
    system_ca: bool = True
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    server_name: str | None = None


class UpstreamTLS:
    """One ``upstream_tls``, compiled: the context and a fingerprint of the settings and
    the files' contents (the pool keeps connections apart by it)."""

    __slots__ = ("context", "fingerprint", "spec")

    def __init__(self, spec: Spec, context: UpstreamContext, fingerprint: str) -> None:
        self.spec = spec
        self.context = context
        self.fingerprint = fingerprint

    @property
    def client_cert(self) -> bool:
        return self.spec.cert is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UpstreamTLS) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"UpstreamTLS({self.spec!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers get the settings pickled: an SSL context is not picklable, so each worker
        # builds its own from the same files.
        return (build, (self.spec,))


_cache: dict[str, UpstreamTLS] = {}


def build(spec: Spec) -> UpstreamTLS:
    """The compiled ``spec``; TLSFileError names the key whose file is unusable."""
    contents = _read_files(spec)
    digest = hashlib.sha256(repr((spec, contents)).encode()).hexdigest()[:16]
    found = _cache.get(digest)
    if found is not None:
        return found
    context = UpstreamContext(ssl.PROTOCOL_TLS_CLIENT)
    context.sessions = {}
    if spec.system_ca:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    for path in _ca_files(spec.ca):
        try:
            context.load_verify_locations(cafile=path)
        except (ssl.SSLError, ValueError):
            raise TLSFileError("ca", f"{path} holds no usable PEM certificate") from None
    if spec.cert is not None:
        _load_client_cert(context, spec.cert, spec.key or spec.cert)
    if not spec.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    tls = UpstreamTLS(spec, context, digest)
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[digest] = tls
    return tls


def default() -> UpstreamTLS:
    """No ``upstream_tls``: the system's CA store, certificates checked."""
    return build(Spec())


def _ca_files(ca: str | None) -> list[str]:
    if ca is None:
        return []
    if not os.path.isdir(ca):
        return [ca]
    files = sorted(
        os.path.join(ca, name)
        for name in os.listdir(ca)
        if name.lower().endswith(CA_SUFFIXES) and os.path.isfile(os.path.join(ca, name))
    )
    if not files:
        suffixes = ", ".join(CA_SUFFIXES)
        raise TLSFileError("ca", f"{ca} is a folder with no {suffixes} file in it")
    return files


def _read_files(spec: Spec) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for key, path in (("ca", spec.ca), ("cert", spec.cert), ("key", spec.key)):
        if path is None:
            continue
        for name in _ca_files(path) if key == "ca" else [path]:
            try:
                with open(name, "rb") as f:
                    out.append(f.read())
            except OSError as exc:
                raise TLSFileError(key, f"cannot read {name}: {exc.strerror or exc}") from None
    return tuple(out)


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TLSFileError("key", f"{key} is encrypted; give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSFileError("key", f"{key} does not match the certificate in {cert}") from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cert)
        except (ssl.SSLError, OSError):
            raise TLSFileError("cert", f"{cert} holds no usable PEM certificate") from None
        raise TLSFileError("key", f"{key} holds no usable PEM private key") from None


# --- failures, in words --------------------------------------------------------------------

X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64
_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)
PREFIX = "upstream TLS: "


def describe(exc: ssl.SSLError, tls: UpstreamTLS | None) -> tuple[str, str]:
    """(message, cause) of a TLS failure toward an upstream. The message (the 502's body)
    names no host; the cause, for the operator's log, starts with it and adds the detail."""
    client_cert = tls is not None and tls.client_cert
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = (exc.verify_message or "").rstrip(".")
        if code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
            message = PREFIX + "certificate verify failed: hostname mismatch"
            named = detail.partition(", ")[2] or detail
            return message, (
                f"{message}: {named} (upstream_tls.server_name sets the name to check)"
            )
        words = detail.lower() or "unknown reason"
        message = PREFIX + f"certificate verify failed: {words}"
        hint = ""
        if code in (18, 19, 20, 21):  # self-signed, or an issuer not in the trusted CAs
            hint = (
                " (trust its CA with upstream_tls.ca, or upstream_tls.verify: false in development)"
            )
        return message, message + hint
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        message = PREFIX + "upstream asked for a client certificate"
        return message, message + " (set upstream_tls.cert and upstream_tls.key)"
    if reason in _CLIENT_CERT_REFUSED and client_cert:
        words = reason.split("ALERT_", 1)[-1].replace("_", " ").lower()
        message = PREFIX + f"upstream refused the client certificate ({words})"
        return message, message
    if reason == "WRONG_VERSION_NUMBER":
        message = PREFIX + "the upstream does not speak TLS"
        return message, message + " (is it an http:// upstream?)"
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        message = PREFIX + "the upstream closed the connection during the handshake"
        return message, message
    words = (reason or str(exc)).replace("_", " ").lower()
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and not client_cert:
        # TLS 1.2 says only "handshake failure" when a client certificate was required
        message = PREFIX + words
        return message, message + " (does the upstream require a client certificate?)"
    return PREFIX + words, PREFIX + words


def unanswered(tls: UpstreamTLS) -> str:
    """Why a fresh TLS connection may close before any answer, for the operator's log."""
    if tls.client_cert:
        return "TLS connection closed before any answer: was the client certificate refused?"
    return (
        "TLS connection closed before any answer: did the upstream ask for a client "
        "certificate? set upstream_tls.cert and upstream_tls.key"
    )


def tls_changes(old: Settings, new: Settings) -> list[str]:
    """Routes (by name) present before and after a reload whose upstream TLS changed: its
    settings, or the contents of its files."""

    def by_name(settings: Settings) -> dict[str, str | None]:
        table = settings.table
        return {
            r.name: r.upstream.tls.fingerprint if r.upstream and r.upstream.tls else None
            for r in (*table.routes, table.fallback)
        }

    before, after = by_name(old), by_name(new)
    return [n for n, tls in after.items() if n in before and before[n] != tls]
