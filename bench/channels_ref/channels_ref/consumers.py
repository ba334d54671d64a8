"""A WebSocket consumer speaking Snorky's PubSub protocol on /ws."""

import json

from channels.generic.websocket import AsyncWebsocketConsumer

from . import protocol


class PubSubConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.subscriptions: set[str] = set()
        await self.accept()

    async def disconnect(self, code):
        for group in self.subscriptions:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.subscriptions.clear()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return
        try:
            envelope = json.loads(text_data)
        except ValueError:
            return
        if not isinstance(envelope, dict) or envelope.get("service") != protocol.FRONTEND:
            return
        message = envelope.get("message")
        if not isinstance(message, dict):
            return
        has_call_id = "callId" in message
        call_id = message.get("callId")
        if "command" not in message or "params" not in message:
            if has_call_id:
                await self.send(text_data=protocol.reply(protocol.FRONTEND, call_id, True, "Invalid message"))
            return
        error = await self.handle(message["command"], message["params"])
        await self.send(text_data=protocol.reply(protocol.FRONTEND, call_id, has_call_id, error))

    async def handle(self, command, params) -> str | None:
        if not isinstance(params, dict):
            return "Invalid params"
        if command in ("subscribe", "unsubscribe"):
            if set(params) != {"channel"}:
                return "Invalid params"
            group = protocol.group_name(params["channel"])
            if command == "subscribe":
                if group in self.subscriptions:
                    return "Already subscribed"
                await self.channel_layer.group_add(group, self.channel_name)
                self.subscriptions.add(group)
            else:
                if group not in self.subscriptions:
                    return "Not subscribed"
                await self.channel_layer.group_discard(group, self.channel_name)
                self.subscriptions.discard(group)
            return None
        if command == "publish":
            if set(params) != {"channel", "message"}:
                return "Invalid params"
            frame = protocol.delivery(params["channel"], params["message"])
            await self.channel_layer.group_send(
                protocol.group_name(params["channel"]), {"type": "pubsub.deliver", "frame": frame}
            )
            return None
        return "Unknown command"

    async def pubsub_deliver(self, event):
        await self.send(text_data=event["frame"])
