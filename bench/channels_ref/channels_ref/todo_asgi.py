"""The ASGI application uvicorn serves for the django scenario: the todo consumer on /todos,
behind Channels' session authentication."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_ref.todo_settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .todo_consumers import TodoConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter([path("todos", TodoConsumer.as_asgi())])),
    }
)
