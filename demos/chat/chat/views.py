"""The chat page and the notes (read and save). Fresh connection tokens come from snorky_django's
view (see urls.py)."""

import json

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

import snorky_django

from .models import Room

#: Longest notes accepted, in characters.
MAX_NOTES = 20_000


def display_name(user) -> str:
    return user.get_full_name() or user.get_username()


@never_cache
@login_required
def index(request: HttpRequest) -> HttpResponse:
    rooms = list(Room.objects.all())
    # Chat and Cursors identify people by their connection token's identity, str(user.pk): the
    # page gets the names to show for them (the token's public info only reaches the server).
    users = {
        str(user.pk): {"username": user.get_username(), "name": display_name(user)}
        for user in get_user_model().objects.all()
    }
    demo = {
        "me": str(request.user.pk),
        "users": users,
        "rooms": [
            {"slug": room.slug, "title": room.title, "notes": room.notes, "version": room.notes_version}
            for room in rooms
        ],
        "notesUrl": reverse("notes", args=["ROOM"]),
        "csrfToken": get_token(request),
    }
    context = {"rooms": rooms, "demo": demo, "name": display_name(request.user)}
    return render(request, "chat/index.html", {**context, "sockjs_client_url": settings.SOCKJS_CLIENT_URL})


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def notes(request: HttpRequest, slug: str) -> HttpResponse:
    """A room's notes: GET the latest version; POST saves a new one and publishes it.

    POST body: ``{"text": "...", "client": "<the page's id>"}``. The whole text is saved (the last
    writer wins); the page that saved recognises its own version by ``client`` when it comes back
    through PubSub. Both answer with the version: ``{"text", "version", "by", "client"}``.
    """
    if request.method == "GET":
        room = get_object_or_404(Room, slug=slug)
        by = str(room.notes_by_id) if room.notes_by_id is not None else None
        return JsonResponse({"text": room.notes, "version": room.notes_version, "by": by, "client": None})
    try:
        body = json.loads(request.body)
        text, client = body["text"], body.get("client")
    except (ValueError, KeyError, TypeError):
        return HttpResponseBadRequest("expected {text, client}")
    if not isinstance(text, str) or len(text) > MAX_NOTES or not isinstance(client, str | None):
        return HttpResponseBadRequest(f"text must be a string of at most {MAX_NOTES} characters")
    with transaction.atomic():
        room = get_object_or_404(Room.objects.select_for_update(), slug=slug)
        room.notes = text
        room.notes_version += 1
        room.notes_by = request.user
        room.save()
        version = {"text": text, "version": room.notes_version, "by": str(request.user.pk), "client": client}
        # Published once the save is committed, so that no browser sees a version rolled back.
        transaction.on_commit(lambda: snorky_django.publish(room.notes_channel, version, fail_silently=True))
    return JsonResponse(version)
