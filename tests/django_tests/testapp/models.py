"""Models of the test app: tasks owned by users, in teams, in every flavour of serialization."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from snorky_django import subscribable


class Team(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)


class Sponsor(models.Model):
    """Not subscribable; deleting one sets its tasks' sponsor through a callable (SET(...))."""

    name = models.CharField(max_length=100)


def no_sponsor():
    return None


@subscribable
class Task(models.Model):
    """Serialized by the serializer of the views subscribing to it (TaskSerializer)."""

    title = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    done = models.BooleanField(default=False)
    priority = models.IntegerField(default=0)
    estimate = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    due = models.DateField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    labels = models.ManyToManyField("Label", blank=True, related_name="tasks")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        default=None,
        on_delete=models.SET_DEFAULT,
        related_name="reviews",
    )
    sponsor = models.ForeignKey(Sponsor, null=True, blank=True, on_delete=models.SET(no_sponsor), related_name="tasks")

    class Meta:
        ordering = ("id",)


@subscribable
class Note(models.Model):
    """Serialized by its own jsonify(), as in Snorky 0.1."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="notes")
    text = models.TextField()
    written = models.DateTimeField(default=timezone.now)

    def jsonify(self):
        return {"id": self.pk, "task": self.task_id, "text": self.text, "written": self.written}


@subscribable(name="Tag", fields=["id", "name", "color", "tasks"])
class Label(models.Model):
    """A UUID primary key, a custom delta name; its deltas list its tasks (the many-to-many's
    reverse side)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=50, unique=True)
    color = models.CharField(max_length=20, default="grey")


class ArchivedTask(Task):
    """A proxy: its saves publish as Task."""

    class Meta:
        proxy = True


@subscribable(serializer="django_tests.testapp.serializers.AccountSerializer")
class Account(models.Model):
    """Secrets among its fields; its serializer takes "__all__", which names none of them."""

    username = models.CharField(max_length=50)
    password = models.CharField(max_length=128)
    api_token = models.CharField(max_length=64, blank=True)
    nickname = models.CharField(max_length=50, blank=True)
    profile = models.JSONField(default=dict)  # nested data: {"bio": ..., "recovery_secret": ...}
