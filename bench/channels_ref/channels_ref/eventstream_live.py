"""Live todos the django-eventstream way: the same ``post_save`` / ``post_delete`` receivers as the
Channels set-up (``todo_live``), whose ``send`` is django-eventstream's ``send_event`` to the
owner's channel and to the channel of everyone, once the transaction commits.

The writers run in other processes than the server: with ``EVENTSTREAM_REDIS`` set,
``send_event`` publishes each event on Redis, and every server process's listener hands it to
its own streams. The event's data is the frame ``todo_live`` builds (Snorky's DataSync frame),
sent as it is (``json_encode=False``), so the load generator reads all three set-ups alike.
"""

from django.apps import AppConfig
from django_eventstream import send_event
from django_eventstream.channelmanager import ChannelManagerBase

from .todo_live import EVERYONE, connect_receivers, disconnect_receivers, owner_group

__all__ = ["EVERYONE", "TodoChannels", "connect", "disconnect_receivers", "owner_group"]


def send(owner_pk, text: str) -> None:
    send_event(owner_group(owner_pk), "message", text, json_encode=False)
    send_event(EVERYONE, "message", text, json_encode=False)


def connect() -> None:
    connect_receivers(send)


class TodoChannels(ChannelManagerBase):
    """Which channel a stream reads (``?list=all``: everyone's, else the user's own) and who may:
    a logged-in user (session cookie) reads their own channel and everyone's. Events are not
    stored (no ``EVENTSTREAM_STORAGE_CLASS``), as the Channels set-up keeps none either."""

    def get_channels_for_request(self, request, view_kwargs) -> set[str]:
        if request.GET.get("list") == "all":
            return {EVERYONE}
        user = request.user
        return {owner_group(user.pk) if user.is_authenticated else "todos.owner.anonymous"}

    def can_read_channel(self, user, channel: str) -> bool:
        return user is not None and channel in (EVERYONE, owner_group(user.pk))

    def is_channel_reliable(self, channel: str) -> bool:
        return False


class EventstreamLiveConfig(AppConfig):
    name = "channels_ref.eventstream_live"
    label = "eventstream_live"

    def ready(self) -> None:
        connect()
