"""Snorky: live data for Django, with a Rust core.

The server, its services and the backend client are implemented in Rust (``snorky._core``);
this package gives them a typed Python face.
"""

from snorky._core import (
    BackendError,
    Client,
    ConfigurationError,
    ServerError,
    SnorkyConnectionError,
    SnorkyError,
    __version__,
    connection_token,
)
from snorky.server import Server, ServerHandle, ServiceRegistry

__all__ = [
    "BackendError",
    "Client",
    "ConfigurationError",
    "Server",
    "ServerError",
    "ServerHandle",
    "ServiceRegistry",
    "SnorkyConnectionError",
    "SnorkyError",
    "__version__",
    "connection_token",
]
