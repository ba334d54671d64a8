"""The page and the API. ``GET /api/todos/`` with ``X-Snorky: Subscribe`` (what
``Snorky.fetchWithSubscription`` sends) also answers a subscription token for exactly what it
returns: the user's own todos and the team's."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from snorky_django.rest_framework import ListSubscribeModelMixin
from todos.models import Todo
from todos.serializers import TodoSerializer

#: The team list, as a filter expression of the TodoFilter dealer.
SHARED = ["==", "shared", True]


@never_cache
@login_required
def index(request: HttpRequest) -> HttpResponse:
    users = get_user_model().objects.order_by("username").values("id", "username")
    page = {"me": request.user.pk, "users": list(users), "csrfToken": get_token(request)}
    return render(request, "todos/index.html", {"page": page, "sockjs_client_url": settings.SOCKJS_CLIENT_URL})


class TodoViewSet(ListSubscribeModelMixin, viewsets.ModelViewSet):
    """The todos the user may see: their own, and every shared one. Anyone who sees a todo may
    edit, tick or delete it; only its owner may share, unshare or give it away."""

    serializer_class = TodoSerializer

    def get_queryset(self):
        return Todo.objects.filter(Q(owner=self.request.user) | Q(shared=True)).select_related("owner")

    def get_subscription_items(self):
        # The same two sets as get_queryset(), as dealer items: whatever enters or leaves them
        # reaches this subscription as an insert or a delete.
        return [
            {"dealer": "TodosByOwner", "query": self.request.user.pk},
            {"dealer": "TodoFilter", "query": SHARED},
        ]

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)

    def perform_update(self, serializer):
        with transaction.atomic():
            # The row as it is now, locked until the save: the instance get_object() read may be
            # stale, and saving it would write back what someone changed meanwhile (a todo its
            # owner just unshared would be shared again by another user's edit of its title).
            todo = Todo.objects.select_for_update().select_related("owner").get(pk=serializer.instance.pk)
            user = self.request.user
            if todo.owner != user and not todo.shared:
                raise PermissionDenied("this todo is no longer shared")
            data = serializer.validated_data
            moves = ("shared" in data and data["shared"] != todo.shared) or (
                "owner" in data and data["owner"] != todo.owner
            )
            if moves and todo.owner != user:
                raise PermissionDenied(f"only {todo.owner} may share, unshare or give away this todo")
            serializer.instance = todo
            serializer.save()

    @action(detail=False, methods=["post"], url_path="clear-completed")
    def clear_completed(self, request):
        """Deletes the done todos of one list: ``{"list": "mine"}`` or ``{"list": "team"}``."""
        if request.data.get("list") == "team":
            todos = Todo.objects.filter(shared=True, done=True)
        else:
            todos = Todo.objects.filter(owner=request.user, shared=False, done=True)
        deleted, _ = todos.delete()  # one delta per row, through Django's delete signals
        return Response({"deleted": deleted})
