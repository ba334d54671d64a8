"""Models of the test app: tasks owned by users, in teams, in every flavour of serialization."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from snorky_django import subscribable


class Team(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)


@subscribable
class Task(models.Model):
    """Serialized by DRF's ModelSerializer (DRF is installed)."""

    title = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    done = models.BooleanField(default=False)
    priority = models.IntegerField(default=0)
    estimate = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    due = models.DateField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

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


@subscribable(name="Tag")
class Label(models.Model):
    """A UUID primary key, a custom delta name."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=50, unique=True)
    color = models.CharField(max_length=20, default="grey")


class ArchivedTask(Task):
    """A proxy: its saves publish as Task."""

    class Meta:
        proxy = True
