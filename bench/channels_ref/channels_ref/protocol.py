"""The slice of Snorky's wire protocol (docs/protocol.md, PubSub + RPC) the benchmark uses.

Frames are compact JSON with the fields in protocol order, byte for byte what Snorky sends.
"""

import hashlib
import json

FRONTEND = "pubsub"


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def group_name(channel) -> str:
    """A Channels group name for a PubSub channel (any JSON value, compared by value)."""
    key = json.dumps(channel, sort_keys=True, separators=(",", ":"))
    return "pubsub." + hashlib.sha1(key.encode()).hexdigest()


def reply(service: str, call_id, has_call_id: bool, error: str | None = None) -> str:
    message: dict = {"type": "error" if error else "response"}
    if has_call_id:
        message["callId"] = call_id
    if error:
        message["message"] = error
    else:
        message["data"] = None
    return dumps({"service": service, "message": message})


def delivery(channel, message) -> str:
    """Serialized once per publish; every subscriber gets the same text."""
    return dumps({"service": FRONTEND, "message": {"type": "message", "channel": channel, "message": message}})
