"""``LightTodo``: the todo demo's ``Todo`` with its deltas built by a ``jsonify()`` returning the
fields as a dict, instead of the demo's DRF serializer. Beside ``Todo`` in the micro-benchmark, it
separates what ``@subscribable`` itself adds to a ``save()`` from what the serializer costs. (Its
own app: the reference sites import ``benchtodos`` without snorky_django installed.)"""

from typing import Any

from django.conf import settings
from django.db import models

from snorky_django import subscribable


@subscribable
class LightTodo(models.Model):
    title = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    shared = models.BooleanField(default=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="light_todos")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)

    def jsonify(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "title": self.title,
            "done": self.done,
            "shared": self.shared,
            "owner": self.owner_id,  # type: ignore[attr-defined]
            "created": self.created,
        }
