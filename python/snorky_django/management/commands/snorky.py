"""``manage.py snorky``: the embedded Snorky server, configured from ``settings.SNORKY``."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import datetime
from typing import Any

import django
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

import snorky
from snorky import ServerHandle, SnorkyError
from snorky.backend import SnorkyBackend
from snorky_django.conf import connect_host, snorky_settings, split_address
from snorky_django.relay import OutboxRelay
from snorky_django.server import DjangoServer, build_server

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = (
        "Runs the Snorky server: WebSocket for browsers (FRONTEND_ADDRESS) and the backend Django posts "
        "to (BACKEND_ADDRESS), with the services and dealers of settings.SNORKY, and the outbox relay "
        'when SNORKY["DELIVERY"] is "outbox". Stops gracefully on CONTROL-C or SIGTERM.'
    )

    server_class = DjangoServer

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--frontend-address",
            metavar="HOST:PORT",
            help='where browsers connect (default SNORKY["FRONTEND_ADDRESS"], "0.0.0.0:5001")',
        )
        parser.add_argument(
            "--backend-address",
            metavar="HOST:PORT",
            help='where Django posts (default SNORKY["BACKEND_ADDRESS"], "127.0.0.1:5002")',
        )
        parser.add_argument(
            "--broker",
            metavar="URL",
            help='the Redis several nodes share (default SNORKY["BROKER"]: none, one process)',
        )
        parser.add_argument(
            "--node-name", metavar="NAME", help='this node\'s name in logs (default SNORKY["NODE_NAME"])'
        )
        parser.add_argument(
            "--no-relay",
            action="store_true",
            help="do not relay the outbox from this process (another process does)",
        )
        parser.add_argument(
            "--relay-only",
            action="store_true",
            help="run only the outbox relay, posting to the server at BACKEND_URL (or --backend-address)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(int(options["verbosity"]))
        for key in ("frontend_address", "backend_address"):
            if options[key] is not None:
                try:
                    split_address(options[key])
                except ValueError:
                    raise CommandError(f"--{key.replace('_', '-')} {options[key]!r} is not HOST:PORT") from None
        if options["relay_only"]:
            if options["no_relay"]:
                raise CommandError("--relay-only and --no-relay exclude each other")
            self._relay_only(options["backend_address"])
            return
        try:
            server = build_server(
                frontend_address=options["frontend_address"],
                backend_address=options["backend_address"],
                relay=False if options["no_relay"] else None,
                server_class=self.server_class,
                **{key: options[key] for key in ("broker", "node_name") if options[key]},
            )
        except ImproperlyConfigured as err:
            raise CommandError(f"{err}. Fix settings.SNORKY (manage.py check explains each problem).") from err
        except snorky.ConfigurationError as err:
            raise CommandError(f"Snorky configuration error: {err}. Fix settings.SNORKY.") from err
        server.on_started = lambda handle: self._banner(server, handle)
        try:
            server.run()
        except SnorkyError as err:
            raise CommandError(
                f"Snorky could not start: {err}. Is another server using the port? "
                "Change it with --frontend-address/--backend-address or SNORKY['FRONTEND_ADDRESS'/'BACKEND_ADDRESS']."
            ) from err
        self.stdout.write("Snorky stopped.")

    def _relay_only(self, backend_address: str | None) -> None:
        """Relays the outbox to a server running elsewhere until SIGINT or SIGTERM."""
        conf = snorky_settings
        if not conf.API_KEY:
            raise CommandError('SNORKY["API_KEY"] is not set. Fix settings.SNORKY.')
        url = conf.BACKEND_URL
        if backend_address is not None:
            host, port = split_address(backend_address)
            url = f"http://{connect_host(host)}:{port}/backend"
        relay = OutboxRelay(SnorkyBackend(url, conf.API_KEY, timeout=float(conf.BACKEND_TIMEOUT)))
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        relay.start()
        self.stdout.write(f"Relaying the outbox to {url}. Quit with CONTROL-C.")
        self.stdout.flush()
        try:
            while not stop.wait(0.2) and relay.running:
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            relay.stop()
        self.stdout.write("Relay stopped.")

    def _configure_logging(self, verbosity: int) -> None:
        """Shows the server's logs on stderr, unless the project's LOGGING already handles them."""
        level = _LEVELS.get(verbosity, logging.INFO)
        for name in ("snorky", "snorky_django"):
            logger = logging.getLogger(name)
            if logger.handlers or logging.getLogger().handlers:
                continue
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%d/%b/%Y %H:%M:%S")
            )
            logger.addHandler(handler)
            logger.setLevel(level)

    def _banner(self, server: DjangoServer, handle: ServerHandle) -> None:
        conf = snorky_settings
        frontend_host, _ = split_address(server.frontend_address)
        backend_host, _ = split_address(server.backend_address)
        services = server.services
        delivery = conf.DELIVERY
        if delivery == "outbox":
            delivery += ", relayed by this process" if server.relay is not None else ", relayed elsewhere (--no-relay)"
        origins = conf.ALLOWED_ORIGINS
        lines = [
            datetime.now().strftime("%B %d, %Y - %X"),
            f"Django version {django.get_version()}, Snorky {snorky.__version__}, "
            f"using settings {settings.SETTINGS_MODULE!r}",
            f"Starting Snorky server: WebSocket at ws://{frontend_host}:{handle.frontend_port}/ws, "
            f"backend at http://{backend_host}:{handle.backend_port}/backend",
            "Services: "
            + ", ".join(s.name for s in services.frontend)
            + " (backend: "
            + ", ".join(s.name for s in services.backend)
            + ")",
        ]
        if services.dealers:
            lines.append("DataSync dealers: " + ", ".join(services.dealers))
        lines.append(f"Delivery: {delivery}")
        lines.append(f"Broker: {_redacted(server.broker)}" if server.broker else "Broker: none (one process)")
        lines.append("Allowed origins: " + (", ".join(origins) if origins else "none (non-browser clients only)"))
        lines.append("Quit the server with CONTROL-C.")
        self.stdout.write("\n".join(lines))
        self.stdout.flush()


def _redacted(url: str) -> str:
    """``url`` without its password, for the banner."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
