"""``snorky`` (or ``python -m snorky``): run a Snorky server from the command line.

Every option can also come from an environment variable (shown in ``--help``), so a container or
a systemd unit configures the server without a command line full of secrets.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from snorky import ConfigurationError, Server, ServiceRegistry, _core
from snorky.server import ServerHandle, serve_until_stopped
from snorky.services import PubSubBackend, PubSubService, services_from


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; ``prog`` defaults to the program's name (``sys.argv[0]``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Snorky: live data over WebSocket.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run a PubSub server with its backend",
        description="Run a Snorky server: PubSub for browsers on the frontend, PubSub publishing on the backend.",
    )
    _env_option(
        serve,
        "--frontend-address",
        "SNORKY_FRONTEND_ADDRESS",
        "host:port browsers connect to; default %(default)s",
        fallback=_core.DEFAULT_FRONTEND_ADDRESS,
    )
    _env_option(
        serve,
        "--backend-address",
        "SNORKY_BACKEND_ADDRESS",
        "host:port of the web application's backend endpoint; default %(default)s",
        fallback=_core.DEFAULT_BACKEND_ADDRESS,
    )
    _env_option(serve, "--api-key", "SNORKY_API_KEY", "shared secret for the backend, sent as X-Backend-Key; required")
    serve.add_argument(
        "--allowed-origin",
        dest="allowed_origins",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="browser origin allowed to connect, e.g. https://app.example.com; repeatable; '*' allows any "
        "(env SNORKY_ALLOWED_ORIGINS, comma-separated)",
    )
    serve.add_argument("--pubsub-name", default="pubsub", help="frontend PubSub service name (default %(default)s)")
    serve.add_argument(
        "--pubsub-backend-name", default="pubsub_backend", help="backend PubSub service name (default %(default)s)"
    )
    serve.add_argument(
        "--services",
        action="append",
        default=[],
        metavar="MODULE:CALLABLE",
        help="also serve the service, or the list of services, returned by this callable (e.g. "
        "myapp.snorky_services:build); each goes to the frontend or backend registry by its `side`; repeatable",
    )
    serve.add_argument("--no-pubsub", action="store_true", help="do not serve the default PubSub services")
    _env_option(
        serve,
        "--broker",
        "SNORKY_BROKER",
        "the Redis several nodes share: redis://host:port/db, rediss://..., or "
        "redis+cluster://host:port,host:port; default: none, one process",
        metavar="URL",
    )
    _env_option(serve, "--node-name", "SNORKY_NODE_NAME", "this node's name in logs")
    _env_option(
        serve,
        "--node-timeout",
        "SNORKY_NODE_TIMEOUT",
        "how long a silent node counts as alive; default 15",
        type=float,
        metavar="SECONDS",
    )
    _env_option(
        serve,
        "--broker-prefix",
        "SNORKY_BROKER_PREFIX",
        "prefix of every Redis key and channel, so several applications can share a Redis; default snorky",
    )
    _env_option(
        serve,
        "--broker-ca-file",
        "SNORKY_BROKER_CA_FILE",
        "certificate authority to trust for a rediss:// broker",
        metavar="PEM",
    )
    _env_option(
        serve,
        "--token-secret",
        "SNORKY_TOKEN_SECRET",
        "HS256 secret of connection tokens, at least 16 characters (prefer the environment variable); "
        "default: none, every connection is anonymous",
    )
    serve.add_argument("--max-frame-size", type=int, default=None, help="largest client frame in bytes (1 MiB)")
    serve.add_argument("--ping-interval", type=float, default=None, help="seconds between pings (30)")
    serve.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other Server option, e.g. max_connections=20000 or sockjs=false; VALUE is read as JSON "
        "when it is JSON (numbers, true/false, lists), as text otherwise; repeatable",
    )
    _log_level_option(serve)
    echo = commands.add_parser(
        "sockjs-echo",
        help="run the SockJS protocol test application",
        description="Serve /echo, /close, /disabled_websocket_echo and /cookie_needed_echo, the services the "
        "public SockJS protocol suite tests, on Snorky's SockJS implementation. Runs until SIGINT or SIGTERM.",
    )
    echo.add_argument("--address", default="127.0.0.1:8081", help="host:port to listen on (default %(default)s)")
    _log_level_option(echo)
    return parser


def _env_option(
    parser: argparse.ArgumentParser, flag: str, variable: str, help: str, fallback: str | None = None, **kwargs: Any
) -> None:
    """An option whose default comes from the environment variable ``variable``, else
    ``fallback`` (converted by ``type``, as argparse converts a string default)."""
    parser.add_argument(flag, default=_env(variable, fallback), help=f"{help} (env {variable})", **kwargs)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    """A log level in any case; argparse applies this to the environment's value too (a string
    default), which ``choices`` alone would not check."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=_env("SNORKY_LOG_LEVEL", "INFO"),
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help="log level, in any case (env SNORKY_LOG_LEVEL; default %(default)s)",
    )


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    origins = args.allowed_origins
    if origins is None:
        origins = [o.strip() for o in (_env("SNORKY_ALLOWED_ORIGINS") or "").split(",") if o.strip()]
    options = parse_options(args.options)
    # The other flags, each named as its option; one not given (or empty in the environment)
    # leaves the server's default.
    for name in FLAGS.keys() - PASSED_ALWAYS:
        value = getattr(args, name)
        if value is not None and value != "":
            options[name] = value
    frontend, backend = ServiceRegistry(), ServiceRegistry()
    if not args.no_pubsub:
        pubsub = PubSubService(args.pubsub_name)
        frontend.register(pubsub)
        backend.register(PubSubBackend(args.pubsub_backend_name, pubsub))
    for path in args.services:
        for service in load_services(path):
            (backend if getattr(service, "side", "frontend") == "backend" else frontend).register(service)
    server = Server(
        frontend=frontend,
        backend=backend,
        frontend_address=args.frontend_address,
        backend_address=args.backend_address,
        api_key=args.api_key,
        allowed_origins=origins,
        **options,
    )
    server.run()
    return 0


def sockjs_echo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _core.reset_log_cache()
    handle = ServerHandle(_core.start_sockjs_echo(args.address))
    serve_until_stopped(handle)
    return 0


#: Server options that have a flag of their own (its destination is the option's name), which
#: ``--option`` does not take.
FLAGS = {
    "frontend_address": "--frontend-address",
    "backend_address": "--backend-address",
    "api_key": "--api-key",
    "allowed_origins": "--allowed-origin",
    "broker": "--broker",
    "node_name": "--node-name",
    "node_timeout": "--node-timeout",
    "broker_prefix": "--broker-prefix",
    "broker_ca_file": "--broker-ca-file",
    "token_secret": "--token-secret",
    "max_frame_size": "--max-frame-size",
    "ping_interval": "--ping-interval",
}

#: Of those, the ones ``serve`` always passes to ``Server``.
PASSED_ALWAYS = {"frontend_address", "backend_address", "api_key", "allowed_origins"}


def parse_options(pairs: Sequence[str]) -> dict[str, object]:
    """``--option NAME=VALUE`` pairs as ``Server`` keyword arguments: a value that is JSON is
    decoded (``20000``, ``false``, ``["a", "b"]``), any other is a string. Unknown names are left
    for ``Server``, which names them; an error never repeats a value, which may be a secret."""
    options: dict[str, object] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        name = name.strip()
        if not equals:
            raise ConfigurationError("--option takes NAME=VALUE, e.g. max_connections=20000: one has no '='")
        if not name.isidentifier():
            raise ConfigurationError(f"--option {name!r}: not an option name (see the Server options)")
        if name in FLAGS:
            raise ConfigurationError(f"--option {name}: set it with {FLAGS[name]}")
        if name in options:
            raise ConfigurationError(f"--option {name} is given twice")
        try:
            options[name] = json.loads(text)
        except ValueError:
            options[name] = text
    return options


def load_services(path: str) -> list[Any]:
    """Imports ``module:callable`` and calls it; it returns a service or an iterable of services
    (as a callable in Django's ``SNORKY["SERVICES"]`` does). ``module:name`` may also name a service."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--services {path!r} must look like package.module:callable")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigurationError(f"--services {path!r}: cannot import it: {err}") from err
    except Exception as err:  # the module's own code failed while it was imported
        raise ConfigurationError(f"--services {path!r}: importing it raised {type(err).__name__}: {err}") from err
    try:
        return services_from(target, f"--services {path!r}")
    except ConfigurationError:
        raise
    except Exception as err:  # the callable failed
        raise ConfigurationError(f"--services {path!r}: calling it raised {type(err).__name__}: {err}") from err


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Runs the command line (``argv``: ``sys.argv[1:]`` by default); returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "sockjs-echo":
            return sockjs_echo(args)
        return serve(args)
    except ConfigurationError as err:
        print(f"snorky: configuration error: {err}", file=sys.stderr)
        return 2


def console_main() -> int:
    """The ``snorky`` console script: like ``python -m snorky``, it imports ``--services`` modules
    from the current directory (a console script's ``sys.path`` starts with its own directory)."""
    sys.path.insert(0, os.getcwd())
    return main()


if __name__ == "__main__":
    sys.exit(main(prog="python -m snorky.cli"))
