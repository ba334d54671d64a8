"""``manage.py snorky``: the embedded Snorky server, configured from ``settings.SNORKY``."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

import snorky
from snorky import ServerHandle, SnorkyError
from snorky.backend import SnorkyBackend
from snorky_django.conf import connect_host, snorky_settings, split_address, valid_backend_url
from snorky_django.logical_setup import leftover_slots
from snorky_django.server import DjangoServer, build_server, new_relay

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = (
        "Runs the Snorky server: WebSocket for browsers (FRONTEND_ADDRESS) and the backend Django posts "
        "to (BACKEND_ADDRESS), with the services and dealers of settings.SNORKY, and the relay of the "
        'outbox (SNORKY["DELIVERY"] = "outbox") or of the replication slot ("logical"). Stops gracefully '
        "on CONTROL-C or SIGTERM."
    )

    server_class = DjangoServer

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--frontend-address",
            metavar="HOST:PORT",
            help='where browsers connect (default SNORKY["FRONTEND_ADDRESS"], "0.0.0.0:5001"); moves only this '
            "process: pages are still told PUBLIC_URL (or FRONTEND_ADDRESS's port), and the command warns",
        )
        parser.add_argument(
            "--backend-address",
            metavar="HOST:PORT",
            help='where Django posts (default SNORKY["BACKEND_ADDRESS"], "127.0.0.1:5002"); moves only this '
            "process: Django still posts to BACKEND_URL, and the command warns",
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
            help="do not relay the outbox or the replication slot from this process (another process does)",
        )
        parser.add_argument(
            "--relay-only",
            action="store_true",
            help="run only the relay (the outbox's, or the replication slot's with DELIVERY \"logical\"), "
            "posting to the server at BACKEND_URL (or --backend-address)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(int(options["verbosity"]))
        for key in ("frontend_address", "backend_address"):
            if options[key] is not None:
                try:
                    split_address(options[key])
                except ValueError as err:
                    raise CommandError(f"--{key.replace('_', '-')} {err}") from None
        if options["relay_only"]:
            if options["no_relay"]:
                raise CommandError("--relay-only and --no-relay exclude each other")
            ignored = [f"--{key.replace('_', '-')}" for key in ("frontend_address", "broker") if options[key]]
            if ignored:
                raise CommandError(
                    f"--relay-only runs no server, so {' and '.join(ignored)} would do nothing: the relay posts to "
                    "BACKEND_URL (or --backend-address); give those to the server's own manage.py snorky"
                )
            self._warn(address_warnings(None, options["backend_address"], relay_only=True))
            self._warn(leftover_slots())
            self._relay_only(options["backend_address"])
            return
        broker = options["broker"] or snorky_settings.BROKER
        self._warn(address_warnings(options["frontend_address"], options["backend_address"], broker=broker))
        self._warn(leftover_slots())
        try:
            server = build_server(
                frontend_address=options["frontend_address"],
                backend_address=options["backend_address"],
                relay=False if options["no_relay"] else None,
                server_class=self.server_class,
                **{key: options[key] for key in ("broker", "node_name") if options[key]},
            )
        except ImproperlyConfigured as err:
            text = str(err)
            if not text.endswith("."):
                text += ". Fix settings.SNORKY (manage.py check explains each problem)."
            raise CommandError(text) from err
        except snorky.ConfigurationError as err:
            raise CommandError(f"Snorky configuration error: {err}. Fix settings.SNORKY.") from err
        server.on_started = lambda handle: self._banner(server, handle)
        try:
            server.run()
        except SnorkyError as err:
            raise CommandError(f"Snorky could not start: {err}.{_bind_hint(str(err))}") from err
        self.stdout.write("Snorky stopped.")

    def _relay_only(self, backend_address: str | None) -> None:
        """Relays the outbox to a server running elsewhere until SIGINT or SIGTERM."""
        conf = snorky_settings
        if not conf.API_KEY:
            raise CommandError('SNORKY["API_KEY"] is not set. Fix settings.SNORKY.')
        if conf.DELIVERY == "direct":
            # A warning, not a refusal: draining what an earlier outbox delivery left in the table
            # (after switching to "direct") is a legitimate use of a relay-only process.
            self._warn(
                [
                    f'SNORKY["DELIVERY"] is "{conf.DELIVERY}": Django publishes deltas on commit and writes '
                    "nothing to the outbox, so this relay only sends what an earlier outbox delivery left there. "
                    'Set SNORKY["DELIVERY"] = "outbox" (in the web processes too) for the relay to have work.'
                ]
            )
        url = conf.BACKEND_URL
        if backend_address is not None:
            host, port = split_address(backend_address)
            url = f"http://{connect_host(host)}:{port}/backend"
        try:
            relay = new_relay(SnorkyBackend(url, conf.API_KEY, timeout=float(conf.BACKEND_TIMEOUT)))
        except ImproperlyConfigured as err:
            raise CommandError(str(err)) from err
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        relay.start()
        source = "the replication slot" if conf.DELIVERY == "logical" else "the outbox"
        self.stdout.write(f"Relaying {source} to {url}. Quit with CONTROL-C.")
        self.stdout.flush()
        try:
            while not stop.wait(0.2) and relay.running:
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            relay.stop()
        self.stdout.write("Relay stopped.")

    def _warn(self, warnings: list[str]) -> None:
        for warning in warnings:
            self.stderr.write(f"Warning: {warning}", style_func=self.style.WARNING)

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
        if delivery in ("outbox", "logical"):
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


_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def _same_host(listening: str, connecting: str | None) -> bool:
    """Whether a client connecting to ``connecting`` reaches a listener bound to ``listening``."""
    if listening in _WILDCARD_HOSTS:
        return True
    listening, connecting = listening.strip("[]").lower(), (connecting or "").strip("[]").lower()
    return listening == connecting or (listening in _LOOPBACK_HOSTS and connecting in _LOOPBACK_HOSTS)


def address_warnings(
    frontend_address: str | None, backend_address: str | None, *, relay_only: bool = False, broker: str | None = None
) -> list[str]:
    """What goes wrong when ``--frontend-address``/``--backend-address`` (valid ``HOST:PORT``, or
    ``None`` when not given) differ from the addresses Django uses: the flags move only this
    process, while the web processes read ``settings.SNORKY``."""
    conf = snorky_settings
    warnings: list[str] = []
    elsewhere = " (Nothing to do if that is another node sharing this one's broker.)" if broker else ""
    if frontend_address is not None:
        _, port = split_address(frontend_address)
        public_url = conf.PUBLIC_URL
        if conf.is_set("PUBLIC_URL"):
            # Absolute with a port of its own: a path, or the default port, is a proxy's business.
            public_port = None
            if conf.public_url_is_absolute():
                with contextlib.suppress(ValueError):  # snorky.E009
                    public_port = urlsplit(public_url).port
            if public_port is not None and public_port != port:
                warnings.append(
                    f'pages are told to connect to {public_url} (SNORKY["PUBLIC_URL"]), but this server listens on '
                    f"{frontend_address} (--frontend-address): unless a proxy forwards port {public_port} to "
                    f'{port}, set SNORKY["PUBLIC_URL"] to match.{elsewhere}'
                )
        else:
            try:
                _, django_port = split_address(conf.FRONTEND_ADDRESS)
            except ValueError:
                django_port = None  # snorky.E004
            if django_port is not None and django_port != port:
                warnings.append(
                    f"pages are told to connect to ws://<host>:{django_port}/ws (from "
                    f'SNORKY["FRONTEND_ADDRESS"] = "{conf.FRONTEND_ADDRESS}"), but this server listens on '
                    f"{frontend_address} (--frontend-address). The flag moves only this process: set "
                    f'SNORKY["FRONTEND_ADDRESS"] = "{frontend_address}" instead.{elsewhere}'
                )
    if backend_address is not None:
        host, port = split_address(backend_address)
        url = conf.BACKEND_URL
        parts = urlsplit(url) if valid_backend_url(url) else None  # else snorky.E002
        django_port = (parts.port or (443 if parts.scheme == "https" else 80)) if parts else None
        if parts and (django_port != port or not _same_host(host, parts.hostname)):
            if conf.is_set("BACKEND_URL"):
                source = 'SNORKY["BACKEND_URL"]'
                fix = f'SNORKY["BACKEND_URL"] = "http://{connect_host(host)}:{port}/backend"'
            else:
                source = f'derived from SNORKY["BACKEND_ADDRESS"] = "{conf.BACKEND_ADDRESS}"'
                fix = f'SNORKY["BACKEND_ADDRESS"] = "{backend_address}"'
            if relay_only:
                warnings.append(
                    f"Django posts to {url} ({source}), but this relay posts to {backend_address} "
                    "(--backend-address): views authorize subscriptions at the first, the relay sends deltas to "
                    "the second, so unless they are one server (or nodes sharing a broker) the deltas reach no "
                    f"subscriber. Set {fix} instead of the flag."
                )
            else:
                warnings.append(
                    f"Django posts to {url} ({source}), but this server's backend listens on {backend_address} "
                    "(--backend-address): views answering X-Snorky: Subscribe will fail with 503 and deltas "
                    f"published on commit will not reach this server. The flag moves only this process: set {fix} "
                    f"instead.{elsewhere}"
                )
    return warnings


def _bind_hint(error: str) -> str:
    """A hint for a server that could not start, by the error's cause."""
    if f"(os error {errno.EADDRINUSE})" in error or "Address already in use" in error:
        return (
            " Is another server using the port? Change it with SNORKY['FRONTEND_ADDRESS'/'BACKEND_ADDRESS'] "
            "(or --frontend-address/--backend-address)."
        )
    if f"(os error {errno.EADDRNOTAVAIL})" in error:
        return (
            " The host is not an address of this machine: listen on 0.0.0.0 (every interface) "
            "or 127.0.0.1 (this machine only)."
        )
    if "failed to lookup address information" in error:
        return " The host does not resolve: give an address (0.0.0.0, 127.0.0.1) or a name of this machine."
    return ""


def _redacted(url: str) -> str:
    """``url`` without its password, for the banner."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
