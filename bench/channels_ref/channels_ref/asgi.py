"""The ASGI application daphne serves: Django views over HTTP, the PubSub consumer on /ws."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_ref.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .consumers import PubSubConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([path("ws", PubSubConsumer.as_asgi())]),
    }
)
