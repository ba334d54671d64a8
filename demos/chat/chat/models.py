from django.conf import settings
from django.db import models


class Room(models.Model):
    """A chat room, and the notes its members write together.

    Chat messages are not stored: the Chat service delivers them to whoever is in the room. The
    notes are: a view saves them and publishes each new version to the room's PubSub channel.
    """

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=60)
    notes = models.TextField(blank=True)
    #: Bumped by every save; browsers ignore versions older than the one they show.
    notes_version = models.PositiveIntegerField(default=0)
    notes_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ("pk",)

    def __str__(self) -> str:
        return self.title

    @property
    def notes_channel(self) -> dict[str, str]:
        """The PubSub channel of the notes' versions (any JSON value can name a channel)."""
        return {"notes": self.slug}
