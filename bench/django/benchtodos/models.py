"""``PlainTodo``: the todo demo's ``Todo`` (demos/todo/todos/models.py) field for field, with no
``@subscribable``. ``driver.py`` checks at start that the two declare the same fields."""

from django.conf import settings
from django.db import models


class PlainTodo(models.Model):
    title = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    shared = models.BooleanField(default=False, help_text="on the team list, visible to everyone")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="plain_todos")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.title
