"""Live todos the Channels way: ``post_save`` / ``post_delete`` receivers that, once the transaction
commits, ``group_send`` the change to the owner's group and to the group of everyone.

The frame is the one Snorky's DataSync sends (``{"service": "datasync", "message": {"type":
"delta", "delta": ...}}``, the todo serialized by the demo's serializer), built once per change,
so the load generator reads both alike.
"""

import json
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete, post_save

#: The group of every todo (the Broadcast list); a user's own todos go to ``owner_group(pk)``.
EVERYONE = "todos.all"


def owner_group(pk) -> str:
    return f"todos.owner.{pk}"


def frame(delta: dict) -> str:
    """The text every client of a change receives (the frame of Snorky's DataSync)."""
    return json.dumps({"service": "datasync", "message": {"type": "delta", "delta": delta}}, separators=(",", ":"))


def group_send(owner_pk, text: str) -> None:
    """Channels' way: the frame to the owner's group and to everyone's, through the layer."""
    event = {"type": "todo.delta", "frame": text}
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(owner_group(owner_pk), event)
    async_to_sync(layer.group_send)(EVERYONE, event)


def receivers(send: Callable[[object, str], None]) -> tuple[Callable[..., None], Callable[..., None]]:
    """``post_save`` and ``post_delete`` receivers that ``send(owner_pk, frame)`` each change of a
    todo once its transaction commits."""
    from benchtodos.serializers import PlainTodoSerializer

    def saved(sender, instance, created, raw, **kwargs) -> None:
        if raw:
            return
        data = dict(PlainTodoSerializer(instance).data)
        if created:
            delta = {"type": "insert", "model": "Todo", "data": data}
        else:
            delta = {"type": "update", "model": "Todo", "newData": data}
        owner_pk = instance.owner_id
        transaction.on_commit(lambda: send(owner_pk, frame(delta)))

    def deleted(sender, instance, **kwargs) -> None:
        data = dict(PlainTodoSerializer(instance).data)
        owner_pk = instance.owner_id
        transaction.on_commit(lambda: send(owner_pk, frame({"type": "delete", "model": "Todo", "data": data})))

    return saved, deleted


def connect_receivers(send: Callable[[object, str], None] = group_send) -> None:
    from benchtodos.models import PlainTodo

    saved, deleted = receivers(send)
    # Closures: held strongly, or the signal would drop them.
    post_save.connect(saved, sender=PlainTodo, weak=False, dispatch_uid="todo_live.saved")
    post_delete.connect(deleted, sender=PlainTodo, weak=False, dispatch_uid="todo_live.deleted")


def disconnect_receivers() -> None:
    """For the baseline of the save() timings."""
    from benchtodos.models import PlainTodo

    post_save.disconnect(sender=PlainTodo, dispatch_uid="todo_live.saved")
    post_delete.disconnect(sender=PlainTodo, dispatch_uid="todo_live.deleted")


class TodoLiveConfig(AppConfig):
    name = "channels_ref.todo_live"
    label = "todo_live"

    def ready(self) -> None:
        connect_receivers()
