"""Command line: the only reader of argv and the environment (README.md)."""

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

from corsproxy import __version__
from corsproxy.config.load import load_settings
from corsproxy.config.overrides import Overrides
from corsproxy.config.tree import ConfigInvalid, Diagnostic
from corsproxy.engine import browser
from corsproxy.engine import headers as h
from corsproxy.engine.origins import NULL_ORIGIN, split_origin
from corsproxy.engine.policy import Settings
from corsproxy.runtime.reload import ConfigSource

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

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=HELP_FORMAT,
    )
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
    serve.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin listener: /healthz /readyz /metrics /config (default: $CORSPROXY_ADMIN, "
        "else the file's admin, else none)",
    )
    serve.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="PEM file (or folder) of CAs to trust for https:// upstreams, added to the "
        "system's (default: $CORSPROXY_UPSTREAM_CA); sets upstream_tls.ca",
    )
    serve.add_argument(
        "--upstream-insecure",
        action="store_true",
        help="do not check https:// upstreams' certificates (a self-signed dev server); "
        "warned about at start-up",
    )

    check = commands.add_parser(
        "check",
        help="validate a config file",
        description=CHECK_DESCRIPTION,
        epilog=CHECK_EPILOG,
        formatter_class=HELP_FORMAT,
    )
    check.add_argument(
        "-c", "--config", help="config file (default: $CORSPROXY_CONFIG, else ./corsproxy.yaml)"
    )

    commands.add_parser(
        "schema",
        help="print the JSON Schema of the config file (for editors and CI)",
        description=SCHEMA_DESCRIPTION,
        epilog=SCHEMA_EPILOG,
        formatter_class=HELP_FORMAT,
    )

    add_explain_parser(commands)
    add_probe_parser(commands)
    add_suggest_parser(commands)

    demo = commands.add_parser(
        "demo",
        help="run the proxy in front of a built-in echo upstream",
        description=DEMO_DESCRIPTION,
        epilog=DEMO_EPILOG,
        formatter_class=HELP_FORMAT,
    )
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
        if args.command == "schema":
            from corsproxy.config.schema import schema_text

            sys.stdout.write(schema_text())
            return EXIT_OK
        if args.command == "explain":
            return run_explain(args)
        if args.command == "probe":
            return run_probe(args)
        if args.command == "suggest":
            return run_suggest(args)
        if args.command == "serve":
            return run_serve(args)
        return run_demo(args)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`corsproxy explain ... | head`): say nothing more, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
    ca = None
    if getattr(args, "upstream_ca", None):
        ca = (os.path.abspath(args.upstream_ca), "--upstream-ca")
    elif os.environ.get("CORSPROXY_UPSTREAM_CA"):
        ca = (os.path.abspath(os.environ["CORSPROXY_UPSTREAM_CA"]), "$CORSPROXY_UPSTREAM_CA")
    insecure = "--upstream-insecure" if getattr(args, "upstream_insecure", False) else None
    return Overrides(
        upstream,
        origins,
        args.allow_credentials,
        listen,
        upstream_ca=ca,
        upstream_insecure=insecure,
    )


def config_source(
    config: str | None, overrides: Overrides, admin: tuple[str, str] | None = None
) -> ConfigSource | None:
    """Where serve (and explain, modelling it) reads its rules: the file from -c,
    $CORSPROXY_CONFIG or ./corsproxy.yaml, else the flags' catch-all route; None (said on
    stderr) when there is neither."""
    path, named = config_path(config)
    if named or os.path.exists(path):
        return ConfigSource(path, overrides, admin)
    if overrides.upstream is not None:
        return ConfigSource(None, overrides, admin)
    print(
        f"corsproxy: error: no config: {path} does not exist; pass -c FILE, or "
        "--upstream URL --allow-origin ORIGIN",
        file=sys.stderr,
    )
    return None


def load_for_serve(args: argparse.Namespace) -> tuple[ConfigSource, Settings] | None:
    overrides = serve_overrides(args)
    source = config_source(args.config, overrides, admin_override(args))
    if source is None:
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


def admin_override(args: argparse.Namespace) -> tuple[str, str] | None:
    """``--admin``, else ``$CORSPROXY_ADMIN``: replaces the file's ``admin`` (or sets one)."""
    if args.admin:
        return args.admin, "--admin"
    if os.environ.get("CORSPROXY_ADMIN"):
        return os.environ["CORSPROXY_ADMIN"], "$CORSPROXY_ADMIN"
    return None


def run_serve(args: argparse.Namespace) -> int:
    from corsproxy.runtime.app import ListenError, TLSError, make_ssl_context, run, serve
    from corsproxy.runtime.workers import supervise

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
    except OSError as exc:  # a ListenError names the listener, its address and why
        why = exc if isinstance(exc, ListenError) else f"cannot listen: {exc.strerror or exc}"
        print(f"corsproxy: error: {why}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    from corsproxy.runtime.app import ListenError, run

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
        why = exc if isinstance(exc, ListenError) else f"cannot listen on {args.listen}: {exc}"
        print(f"corsproxy: error: {why}", file=sys.stderr)
        return EXIT_INVALID


def find_demo_config() -> str | None:
    for candidate in (DEMO_CONFIG, Path(__file__).resolve().parent.parent / DEMO_CONFIG):
        if candidate.is_file():
            return str(candidate)
    return None


async def demo(path: str, listen: str) -> int:
    from corsproxy.runtime.app import demo_admin, start
    from corsproxy.tools.echo import start_echo

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
    admin, admin_line = await demo_admin(running)  # the config's admin, or why not
    print(DEMO_TEXT.format(proxy=running.url, echo=echo_url, config=path), flush=True)
    print(admin_line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
    if admin is not None:
        await admin.cleanup()
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
        "explain",
        help="tell what a browser would see through the proxy, without any network",
        description=EXPLAIN_DESCRIPTION,
        epilog=EXPLAIN_EPILOG,
        formatter_class=HELP_FORMAT,
    )
    explain.add_argument(
        "-c", "--config", help="config file (default: $CORSPROXY_CONFIG, else ./corsproxy.yaml)"
    )
    explain.add_argument(
        "--upstream", help="as serve's: the upstream URL, no file needed ($CORSPROXY_UPSTREAM)"
    )
    explain.add_argument(
        "--allow-origin",
        action="append",
        dest="allow_origins",
        metavar="ORIGIN",
        help="as serve's: an allowed origin; repeat for more ($CORSPROXY_ALLOW_ORIGINS)",
    )
    explain.add_argument(
        "--allow-credentials",
        action="store_true",
        help="as serve's: allow credentialed requests (cookies, Authorization)",
    )
    explain.add_argument("--origin", required=True, help="the page's origin, or null")
    explain.add_argument(
        "--method", default="GET", help="the method the page asks fetch() for (default GET)"
    )
    explain.add_argument("--path", required=True, help="request path (and query) on the proxy")
    add_page_arguments(explain)
    explain.add_argument(
        "--host", help="Host the page addresses (default: the config's listen address)"
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")


def run_explain(args: argparse.Namespace) -> int:
    from corsproxy.engine.explain import explain, format_text, to_json

    try:
        request = browser_request(args.origin, args.method, args.headers, args.credentials)
        if not args.path.startswith("/"):
            raise ArgumentError(f"--path {args.path!r} must start with '/'")
        if args.host is not None and not valid_host(args.host):
            raise ArgumentError(f"--host {args.host!r} is not host[:port]")
    except ArgumentError as exc:
        print(f"corsproxy explain: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    loaded = load_for_explain(args)
    if loaded is None:
        return EXIT_INVALID
    settings, origins_from, no_file = loaded
    result = explain(
        settings, request, args.path, args.host, origins_from=origins_from, no_file=no_file
    )
    print(to_json(result) if args.json else format_text(result).rstrip("\n"))
    return result.exit_code


def load_for_explain(args: argparse.Namespace) -> tuple[Settings, str | None, bool] | None:
    """The rules `serve` would run with, given the same -c / --upstream / --allow-origin /
    --allow-credentials and $CORSPROXY_* variables (serve_overrides and ConfigSource, as in
    load_for_serve). Also returns where the origins came from when a flag or a variable
    set them, and whether there is no file (the flags' catch-all route)."""
    overrides = serve_overrides(
        argparse.Namespace(
            upstream=args.upstream,
            allow_origins=args.allow_origins,
            allow_credentials=args.allow_credentials,
            listen=None,
        )
    )
    source = config_source(args.config, overrides)
    if source is None:
        return None
    try:
        settings, _ = source.load()
    except ConfigInvalid as exc:
        print_diagnostics(exc.diagnostics)
        return None
    origins = overrides.allow_origins
    no_file = source.path is None
    origins_from = origins[1] if origins is not None else "--allow-origin" if no_file else None
    return settings, origins_from, no_file


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
        "probe",
        help="check a live server as a browser would (preflight, request, verdict)",
        description=PROBE_DESCRIPTION,
        epilog=PROBE_EPILOG,
        formatter_class=HELP_FORMAT,
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
    from corsproxy.tools.probe import ProbeError, probe
    from corsproxy.tools.probe import format_text as probe_text
    from corsproxy.tools.probe import to_json as probe_json

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


# --- help texts (description and epilog of each subcommand) ---------------------------------

HELP_FORMAT = argparse.RawDescriptionHelpFormatter

SERVE_DESCRIPTION = """\
Run the proxy: answer CORS preflights itself, stream every other request to the upstream,
and put on each response exactly the Access-Control-* headers the rules decide (whatever
the upstream sent is stripped). The rules come from a YAML file (-c FILE, else
$CORSPROXY_CONFIG, else ./corsproxy.yaml), or with no file at all from --upstream and
--allow-origin: one catch-all route allowing those origins, every method and header, and
exposing every response header (max_age 600). Flags and variables replace the file's
upstream and defaults.allow_origins. An edited file is reloaded live."""

SERVE_EPILOG = """\
examples:
  corsproxy serve --upstream http://localhost:3000 --allow-origin http://localhost:5173
  corsproxy serve -c corsproxy.yaml
  corsproxy serve --upstream https://localhost:3000 --upstream-ca rootCA.pem \\
      --allow-origin https://localhost:5173

environment variables (a flag wins over its variable):
  CORSPROXY_CONFIG         the config file, when -c is not given
  CORSPROXY_UPSTREAM       the default upstream URL, as --upstream
  CORSPROXY_ALLOW_ORIGINS  allowed origins, comma-separated, as --allow-origin
  CORSPROXY_ADMIN          the admin listener's HOST:PORT, as --admin
  CORSPROXY_UPSTREAM_CA    a PEM file of CA certificates to trust for https:// upstreams,
                           as --upstream-ca

exit status:
  0  stopped cleanly (SIGTERM or Ctrl-C, after the requests in flight finished)
  2  bad arguments, an invalid config (FILE:LINE: key: error: ...), no config, or cannot
     listen"""

CHECK_DESCRIPTION = """\
Validate a config file without starting anything: every problem is reported at once as
FILE:LINE: key.path: error: message (warnings as ...: warning: ...), the same messages
serve refuses the file with. On success, prints how many routes the file has."""

CHECK_EPILOG = """\
example:
  corsproxy check -c corsproxy.yaml

exit status:
  0  valid (warnings allowed)
  2  invalid, unreadable or missing file, or bad arguments"""

EXPLAIN_DESCRIPTION = """\
Tell, without any network and without a running proxy, what a browser on a page at
--origin would see for a fetch() through the proxy: whether it sends a preflight and why,
what the proxy answers, the CORS headers of the response, the browser's verdict and, when
blocked, the smallest config change that would allow it. The rules are the ones serve would
run with: the same -c FILE, or serve's no-file flags --upstream URL --allow-origin ORIGIN
[--allow-credentials], and the same $CORSPROXY_* variables."""

EXPLAIN_EPILOG = """\
examples:
  corsproxy explain -c corsproxy.yaml --origin https://app.example.com --method PUT \\
      --path /api/orders --header 'Content-Type: application/json' --credentials
  corsproxy explain --upstream http://localhost:3000 --allow-origin http://localhost:5173 \\
      --origin http://localhost:5173 --path /api/orders

exit status:
  0  the browser lets the page read the response
  1  the browser blocks it
  2  bad arguments, or an invalid or missing config
  3  cannot tell: the route is cors: passthrough, the upstream decides (use probe)"""

PROBE_DESCRIPTION = """\
Check a live server, corsproxy or not, the way a browser would: send the CORS preflight
when a browser would (exactly its headers, never credentials), then the actual request,
and judge each answer with the Fetch Standard's rules. Shows each step's status, CORS
headers and the first line of a non-2xx body; when corsproxy refused the request, the
verdict names the failed check, and a hint says where the fix is. No cookies are sent and
no redirect is followed."""

PROBE_EPILOG = """\
example:
  corsproxy probe http://127.0.0.1:8080/api/orders --origin https://app.example.com \\
      --method PUT --header 'Content-Type: application/json' --credentials

exit status:
  0  the browser lets the page read the response
  1  the browser blocks it
  2  bad arguments, a bad URL, cannot connect, or no answer within --timeout"""

DEMO_DESCRIPTION = """\
Run the proxy in front of a built-in echo API (which answers with what it received, as
JSON), with the rules of config/corsproxy.yaml, and print curl commands to try. Ctrl-C
stops both."""

DEMO_EPILOG = """\
example:
  corsproxy demo --listen 127.0.0.1:8080

exit status:
  0  stopped with Ctrl-C or SIGTERM
  2  the rules are missing or invalid, cannot listen, or bad arguments"""

SCHEMA_DESCRIPTION = """\
Print the JSON Schema (2020-12) of the config file on stdout, generated from the same tables
the validator checks every key with, for editors (YAML language servers) and CI. A schema
cannot express every rule (full origin and path syntax, '*' with credentials inherited from
defaults, readable TLS files): run check for those."""

SCHEMA_EPILOG = """\
example:
  corsproxy schema > corsproxy.schema.json

exit status:
  0  the schema was printed
  2  bad arguments"""


# --- suggest --------------------------------------------------------------------------------


def add_suggest_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    suggest = commands.add_parser(
        "suggest",
        help="turn access-log lines into the tightest rules that would have served them",
        description=SUGGEST_DESCRIPTION,
        epilog=SUGGEST_EPILOG,
        formatter_class=HELP_FORMAT,
    )
    suggest.add_argument(
        "-c", "--config", help="config file (default: $CORSPROXY_CONFIG, else ./corsproxy.yaml)"
    )
    suggest.add_argument(
        "--from",
        action="append",
        default=[],
        dest="logs",
        metavar="LOG",
        help="a JSON access-log file; repeat for more (default: stdin)",
    )
    suggest.add_argument(
        "--min-count",
        type=int,
        default=1,
        metavar="N",
        help="suggest only what was seen at least N times; the rest is listed as comments "
        "(default 1)",
    )
    suggest.add_argument(
        "--since",
        metavar="DURATION",
        help="only lines from the last DURATION: 90s, 30m, 24h, 7d, 2w (default: all)",
    )
    suggest.add_argument(
        "--diff", action="store_true", help="print a unified diff against the file instead"
    )


def run_suggest(args: argparse.Namespace) -> int:
    import time

    from corsproxy.config import suggest
    from corsproxy.config.load import parse_settings

    def fail(message: str) -> int:
        print(f"corsproxy suggest: error: {message}", file=sys.stderr)
        return EXIT_INVALID

    if args.min_count < 1:
        return fail(f"--min-count {args.min_count} must be 1 or more")
    since = None
    if args.since is not None:
        try:
            seconds = suggest.parse_duration(args.since)
        except ValueError as exc:
            return fail(f"--since {exc}")
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))
    path, named = config_path(args.config)
    if not named and not os.path.exists(path):
        return fail(f"no config: {path} does not exist; pass -c FILE")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        settings, _ = parse_settings(text, path)
    except OSError as exc:
        return fail(f"cannot read {path}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        return fail(f"{path}: not UTF-8 text")
    except ConfigInvalid as exc:
        print_diagnostics(exc.diagnostics)
        return EXIT_INVALID
    obs = suggest.Observations(since=since)
    started = time.perf_counter()
    try:
        for log_path in args.logs or ["-"]:
            if log_path == "-":
                for line in sys.stdin:
                    obs.add_line(line)
                continue
            with open(log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    obs.add_line(line)
    except OSError as exc:
        return fail(f"cannot read {exc.filename or log_path}: {exc.strerror or exc}")
    try:
        out = suggest.suggest_config(text, path, settings, obs, args.min_count)
    except suggest.NoSuggestion as exc:
        if exc.diagnostics is None:
            return fail(exc.message)
        # a bug: never print rules that check would refuse
        print(f"corsproxy suggest: internal error: {exc.message}", file=sys.stderr)
        print_diagnostics(exc.diagnostics)
        return 1
    sys.stdout.write(suggest.diff(text, out, path) if args.diff else out)
    print(
        f"corsproxy suggest: {obs.lines} line(s), {obs.cors_requests} cross-origin "
        f"request(s), {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return EXIT_OK


SUGGEST_DESCRIPTION = """\
Read JSON access-log lines (--from files, else stdin; a proxy run with report_only: true
logs every decision and changes nothing) and print the config file with, for each route,
the smallest allow_origins, allow_methods, allow_headers and allow_credentials that would
have allowed every cross-origin request seen at least --min-count times, and nothing else.
Each entry carries a comment with its count and when it was first and last seen; entries
below --min-count, risky origins (null, http:// next to credentials, IP addresses,
look-alikes of a suggested origin such as app.example.com.evil.io) and, where ten or more
subdomains of one domain were seen, the *.domain wildcard, are comments, never rules. The
rest of the file (keys and comments) is kept; the output passes check as printed.
See docs/migrating.md."""

SUGGEST_EPILOG = """\
examples:
  corsproxy suggest -c corsproxy.yaml --from access.log --min-count 5 > suggested.yaml
  corsproxy serve -c corsproxy.yaml | tee access.log        # with report_only: true
  kubectl logs deploy/corsproxy --since=24h | corsproxy suggest -c corsproxy.yaml --diff

exit status:
  0  the suggestion (or the diff) was printed
  2  bad arguments, an invalid or missing config, or an unreadable log"""
