"""Command line: the only reader of argv and the environment (SPEC 2)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from corsproxy import __version__, browser
from corsproxy import headers as h
from corsproxy.config import (
    ConfigInvalid,
    Diagnostic,
    Overrides,
    load_settings,
    settings_from_flags,
)
from corsproxy.origins import NULL_ORIGIN, split_origin
from corsproxy.policy import Settings
from corsproxy.reload import ConfigSource

EXIT_OK = 0
EXIT_INVALID = 2
DEFAULT_CONFIG = "corsproxy.yaml"
DEMO_CONFIG = Path("config") / "corsproxy.yaml"

log = logging.getLogger("corsproxy")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="corsproxy", description="A CORS-enforcing reverse proxy.")
    parser.add_argument("--version", action="version", version=f"corsproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "-c", "--config", help="config file (default: $CORSPROXY_CONFIG, else ./corsproxy.yaml)"
    )
    serve.add_argument("--upstream", help="default upstream URL (no file needed)")
    serve.add_argument(
        "--allow-origin",
        action="append",
        dest="allow_origins",
        metavar="ORIGIN",
        help="allowed origin; repeat for more",
    )
    serve.add_argument(
        "--allow-credentials",
        action="store_true",
        help="allow credentialed requests (cookies, Authorization)",
    )
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help="listen address (default 127.0.0.1:8080)"
    )

    check = commands.add_parser("check", help="validate a config file")
    check.add_argument(
        "-c", "--config", help="config file (default: $CORSPROXY_CONFIG, else ./corsproxy.yaml)"
    )

    add_explain_parser(commands)
    add_probe_parser(commands)

    demo = commands.add_parser("demo", help="run the proxy in front of a built-in echo upstream")
    demo.add_argument("-c", "--config", help=f"rules to use (default: {DEMO_CONFIG})")
    demo.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8080",
        help="proxy address (default 127.0.0.1:8080)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "check":
            return run_check(args)
        if args.command == "explain":
            return run_explain(args)
        if args.command == "probe":
            return run_probe(args)
        if args.command == "serve":
            return run_serve(args)
        return run_demo(args)
    except KeyboardInterrupt:
        return EXIT_OK


def config_path(explicit: str | None) -> tuple[str, bool]:
    """(path, named): a file given by -c or $CORSPROXY_CONFIG, else ./corsproxy.yaml."""
    if explicit:
        return explicit, True
    from_env = os.environ.get("CORSPROXY_CONFIG")
    if from_env:
        return from_env, True
    return DEFAULT_CONFIG, False


def print_diagnostics(diagnostics: Sequence[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        print(diagnostic, file=sys.stderr)


def run_check(args: argparse.Namespace) -> int:
    path, named = config_path(args.config)
    if not named and not os.path.exists(path):
        print(f"corsproxy: error: no config: {path} does not exist; pass -c FILE", file=sys.stderr)
        return EXIT_INVALID
    try:
        settings, warnings = load_settings(path)
    except ConfigInvalid as exc:
        print_diagnostics(exc.diagnostics)
        return EXIT_INVALID
    print_diagnostics(warnings)
    routes = len(settings.table.routes)
    note = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"{path}: ok: {routes} route(s){note}")
    return EXIT_OK


def serve_overrides(args: argparse.Namespace) -> Overrides:
    """Flags first, then $CORSPROXY_UPSTREAM / $CORSPROXY_ALLOW_ORIGINS (for docker run -e)."""
    upstream = None
    if args.upstream:
        upstream = (args.upstream, "--upstream")
    elif os.environ.get("CORSPROXY_UPSTREAM"):
        upstream = (os.environ["CORSPROXY_UPSTREAM"], "$CORSPROXY_UPSTREAM")
    origins = None
    if args.allow_origins:
        origins = (tuple(args.allow_origins), "--allow-origin")
    elif os.environ.get("CORSPROXY_ALLOW_ORIGINS"):
        listed = tuple(
            o.strip() for o in os.environ["CORSPROXY_ALLOW_ORIGINS"].split(",") if o.strip()
        )
        origins = (listed, "$CORSPROXY_ALLOW_ORIGINS")
    listen = (args.listen, "--listen") if args.listen else None
    return Overrides(upstream, origins, args.allow_credentials, listen)


def load_for_serve(args: argparse.Namespace) -> tuple[ConfigSource, Settings] | None:
    overrides = serve_overrides(args)
    path, named = config_path(args.config)
    if named or os.path.exists(path):
        source = ConfigSource(path, overrides)
    elif overrides.upstream is not None:
        source = ConfigSource(None, overrides)
    else:
        print(
            f"corsproxy: error: no config: {path} does not exist; pass -c FILE, or "
            "--upstream URL --allow-origin ORIGIN",
            file=sys.stderr,
        )
        return None
    try:
        settings, warnings = source.load()
    except ConfigInvalid as exc:
        print_diagnostics(exc.diagnostics)
        return None
    print_diagnostics(warnings)
    if source.path is None and overrides.allow_origins is None:
        log.warning("no --allow-origin given: every cross-origin request will be refused")
    return source, settings


def run_serve(args: argparse.Namespace) -> int:
    from corsproxy.app import TLSError, make_ssl_context, run, serve
    from corsproxy.workers import supervise

    loaded = load_for_serve(args)
    if loaded is None:
        return EXIT_INVALID
    source, settings = loaded
    try:
        make_ssl_context(settings)  # a bad cert or key stops here, before any worker starts
        if settings.workers > 1:
            return supervise(source, settings)
        run(serve(source, settings))
    except TLSError as exc:
        print(f"corsproxy: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"corsproxy: error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    from corsproxy.app import run

    path = args.config or find_demo_config()
    if path is None:
        print(
            f"corsproxy: error: {DEMO_CONFIG} not found; run from the repository or pass -c FILE",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        return run(demo(path, args.listen))
    except OSError as exc:
        print(
            f"corsproxy: error: cannot listen on {args.listen}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_INVALID


def find_demo_config() -> str | None:
    for candidate in (DEMO_CONFIG, Path(__file__).resolve().parent.parent / DEMO_CONFIG):
        if candidate.is_file():
            return str(candidate)
    return None


async def demo(path: str, listen: str) -> int:
    from corsproxy.app import start
    from corsproxy.echo import start_echo

    echo_runner, echo_port = await start_echo()
    echo_url = f"http://127.0.0.1:{echo_port}"
    try:
        settings, warnings = load_settings(
            path, Overrides(listen=(listen, "--listen"), every_upstream=echo_url)
        )
    except ConfigInvalid as exc:
        print_diagnostics(exc.diagnostics)
        await echo_runner.cleanup()
        return EXIT_INVALID
    print_diagnostics(warnings)
    try:
        running = await start(settings)
    except OSError:
        await echo_runner.cleanup()
        raise
    print(DEMO_TEXT.format(proxy=running.url, echo=echo_url, config=path), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
    await echo_runner.cleanup()
    return EXIT_OK


DEMO_TEXT = """\
corsproxy demo: proxy {proxy} -> echo upstream {echo}, rules from {config}
Try these in another terminal (Ctrl-C here stops the demo):

  # an allowed origin: the answer carries Access-Control-Allow-Origin
  curl -si {proxy}/api/orders -H 'Origin: https://app.example.com'

  # a preflight, answered by the proxy itself (the upstream never sees it)
  curl -si -X OPTIONS {proxy}/api/orders -H 'Origin: https://app.example.com' \\
       -H 'Access-Control-Request-Method: PUT' -H 'Access-Control-Request-Headers: content-type'

  # a disallowed origin: refused with 403 and the reason
  curl -si {proxy}/api/orders -H 'Origin: https://evil.example.net'

  # the upstream sends 'Access-Control-Allow-Origin: *' itself: the proxy strips it
  curl -si '{proxy}/api/orders?echo_cors=1'

  # a public route open to every origin
  curl -si {proxy}/public/status -H 'Origin: https://anywhere.example.org'
"""


def add_page_arguments(parser: argparse.ArgumentParser) -> None:
    """What the page sets on its fetch(), the same for explain and probe (browser_request)."""
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        dest="headers",
        metavar="'NAME: VALUE'",
        help="a request header the page sets; repeat for more (a bare NAME has an empty value)",
    )
    parser.add_argument(
        "--credentials", action="store_true", help="credentials: 'include' (cookies, auth)"
    )


# --- explain --------------------------------------------------------------------------------


def add_explain_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    explain = commands.add_parser(
        "explain", help="tell what a browser would see through the proxy, without any network"
    )
    explain.add_argument(
        "-c", "--config", help="config file (default: $CORSPROXY_CONFIG, else ./corsproxy.yaml)"
    )
    explain.add_argument("--origin", required=True, help="the page's origin, or null")
    explain.add_argument("--method", required=True, help="the method the page asks fetch() for")
    explain.add_argument("--path", required=True, help="request path (and query) on the proxy")
    add_page_arguments(explain)
    explain.add_argument(
        "--host", help="Host the page addresses (default: the config's listen address)"
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")


def run_explain(args: argparse.Namespace) -> int:
    from corsproxy.explain import explain, format_text, to_json

    try:
        request = browser_request(args.origin, args.method, args.headers, args.credentials)
        if not args.path.startswith("/"):
            raise ArgumentError(f"--path {args.path!r} must start with '/'")
        if args.host is not None and not valid_host(args.host):
            raise ArgumentError(f"--host {args.host!r} is not host[:port]")
    except ArgumentError as exc:
        print(f"corsproxy explain: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    loaded = load_for_explain(args.config)
    if loaded is None:
        return EXIT_INVALID
    settings, origins_from = loaded
    result = explain(settings, request, args.path, args.host, origins_from=origins_from)
    print(to_json(result) if args.json else format_text(result).rstrip("\n"))
    return result.exit_code


def load_for_explain(explicit: str | None) -> tuple[Settings, str | None] | None:
    """The rules `serve` would run with here: the same file, the same $CORSPROXY_* variables.
    Also returns where the origins came from when a variable replaced them."""
    overrides = serve_overrides(
        argparse.Namespace(upstream=None, allow_origins=None, allow_credentials=False, listen=None)
    )
    path, named = config_path(explicit)
    try:
        if named or os.path.exists(path):
            settings, _ = load_settings(path, overrides)
        elif overrides.upstream is not None:
            settings, _ = settings_from_flags(overrides)
        else:
            print(
                f"corsproxy: error: no config: {path} does not exist; pass -c FILE",
                file=sys.stderr,
            )
            return None
    except ConfigInvalid as exc:
        print_diagnostics(exc.diagnostics)
        return None
    origins = overrides.allow_origins
    return settings, origins[1] if origins is not None else None


def valid_host(host: str) -> bool:
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name:
        name, port = host, ""
    if port and not port.isdigit():
        return False
    return bool(name) and not any(c in name for c in "/?#@ \t\r\n,")


# --- probe ----------------------------------------------------------------------------------


def add_probe_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    probe = commands.add_parser(
        "probe", help="check a live server as a browser would (preflight, request, verdict)"
    )
    probe.add_argument("url", metavar="URL", help="the http:// or https:// URL the page fetches")
    probe.add_argument("--origin", required=True, help="the page's origin, or null")
    probe.add_argument(
        "--method", default="GET", help="the method the page asks fetch() for (default GET)"
    )
    add_page_arguments(probe)
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per request (default 10)"
    )


def run_probe(args: argparse.Namespace) -> int:
    from corsproxy.probe import ProbeError, probe
    from corsproxy.probe import format_text as probe_text
    from corsproxy.probe import to_json as probe_json

    try:
        if not args.timeout > 0:
            raise ArgumentError(f"--timeout {args.timeout:g} must be more than 0")
        request = browser_request(args.origin, args.method, args.headers, args.credentials)
        result = asyncio.run(probe(args.url, request, args.timeout))
    except (ArgumentError, ProbeError) as exc:
        print(f"corsproxy probe: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(probe_json(result) if args.json else probe_text(result))
    return EXIT_OK if result.allowed else 1


class ArgumentError(ValueError):
    """A command-line value that cannot describe a browser request."""


def browser_request(
    origin: str, method: str, header_args: Sequence[str], credentials: bool
) -> browser.Request:
    """A browser.Request from ``--origin``, ``--method``, ``--header 'Name: value'``.

    The origin is serialised as a browser sends it (lowercase, no default port). A bare
    ``--header NAME`` is sent with an empty value. Raises ArgumentError.
    """
    if not h.is_token(method):
        raise ArgumentError(f"--method {method!r} is not an HTTP method name (a token)")
    pairs: list[tuple[str, str]] = []
    for arg in header_args:
        name, _, value = arg.partition(":")
        name, value = name.strip(), value.strip()
        if not h.is_token(name):
            raise ArgumentError(f"--header {arg!r}: expected 'Name: value' or a header name")
        if any(c in value for c in "\r\n\x00"):
            raise ArgumentError(f"--header {arg!r}: the value has a line break or NUL")
        pairs.append((name, value))
    return browser.Request(serialise_origin(origin), method, tuple(pairs), credentials)


def serialise_origin(origin: str) -> str:
    if origin == NULL_ORIGIN:
        return origin
    lowered = origin.strip()
    scheme, sep, rest = lowered.partition("://")
    parsed = split_origin(scheme.lower() + sep + rest) if sep else None
    if parsed is None:
        hint = ""
        if sep and ("/" in rest or "?" in rest or "#" in rest):
            hint = " (an origin has no path, not even a trailing '/')"
        raise ArgumentError(
            f"--origin {origin!r} is not an origin: expected scheme://host[:port] "
            f"with scheme http or https, or null{hint}"
        )
    port = "" if parsed.port is None else f":{parsed.port}"
    return f"{parsed.scheme}://{parsed.host}{port}"
