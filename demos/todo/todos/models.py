"""The one model of the demo: a todo, private to its owner or shared with the team."""

from django.conf import settings
from django.db import models

from snorky_django import subscribable


@subscribable(serializer="todos.serializers.TodoSerializer")
class Todo(models.Model):
    """Every committed change becomes a ``Todo`` delta, carrying what the API answers (the
    serializer of ``views.TodoViewSet``), so the page handles both alike.

    Who sees a todo: its owner while it is private; everyone once it is shared. The dealers in
    ``snorky.py`` route the deltas the same way, so a todo that is unshared or given to someone else
    leaves the pages that may no longer see it.
    """

    title = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    shared = models.BooleanField(default=False, help_text="on the team list, visible to everyone")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="todos")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.title
