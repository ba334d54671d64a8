"""POST /backend: the web application's publish endpoint, as a Django view."""

import hmac
import json

from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpResponse, JsonResponse

from . import protocol


def _error(status: int, text: str) -> JsonResponse:
    return JsonResponse({"error": text}, status=status)


async def backend(request):
    if request.method != "POST":
        return _error(405, "Method not allowed")
    key = request.headers.get("X-Backend-Key", "")
    if not hmac.compare_digest(key.encode(), settings.SNORKY_BENCH_KEY.encode()):
        return _error(401, "Missing or wrong X-Backend-Key")
    try:
        envelope = json.loads(request.body)
    except ValueError:
        return _error(400, "Invalid JSON")
    if not isinstance(envelope, dict) or envelope.get("service") != "pubsub_backend":
        return _error(400, "Unknown service")
    message = envelope.get("message")
    if not isinstance(message, dict) or "command" not in message or "params" not in message:
        return _error(400, "Invalid message")
    has_call_id = "callId" in message
    params = message["params"]
    error = None
    if message["command"] != "publish":
        error = "Unknown command"
    elif not isinstance(params, dict) or set(params) != {"channel", "message"}:
        error = "Invalid params"
    else:
        frame = protocol.delivery(params["channel"], params["message"])
        await get_channel_layer().group_send(
            protocol.group_name(params["channel"]), {"type": "pubsub.deliver", "frame": frame}
        )
    body = protocol.reply("pubsub_backend", message.get("callId"), has_call_id, error)
    return HttpResponse(body, content_type="application/json")
