"""The WebSocket of the Channels set-up: a logged-in user (session cookie) joins the group of their
own todos (``?list=mine``) or of every todo (``?list=all``) and receives each change as a frame."""

from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer

from .todo_live import EVERYONE, owner_group


class TodoConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        which = parse_qs(self.scope["query_string"].decode()).get("list", ["mine"])[0]
        self.group = EVERYONE if which == "all" else owner_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        group = getattr(self, "group", None)
        if group is not None:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def todo_delta(self, event):
        await self.send(text_data=event["frame"])
