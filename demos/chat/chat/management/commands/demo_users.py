"""``manage.py demo_users``: the demo's users (their passwords reset to the ones printed) and rooms."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from chat.models import Room

#: Usernames, passwords and first names of the demo users; printed by run.py. Fine on 127.0.0.1 only.
DEMO_USERS = {"alice": ("wonderland", "Alice"), "bob": ("builder", "Bob"), "carol": ("christmas", "Carol")}

ROOMS = [
    ("general", "General", "Friday demo\n- show the chat: presence, read receipts\n- these notes: everyone's cursor\n"),
    ("random", "Random", ""),
    ("snorky", "Snorky dev", "Ideas\n- "),
]


class Command(BaseCommand):
    help = "Creates the demo users (alice, bob, carol) and the rooms, when they do not exist yet."

    @transaction.atomic
    def handle(self, *args, **options):
        for username, (password, first_name) in DEMO_USERS.items():
            user, _ = get_user_model().objects.get_or_create(username=username)
            user.first_name = first_name
            user.set_password(password)
            user.save()
        for slug, title, notes in ROOMS:
            Room.objects.get_or_create(slug=slug, defaults={"title": title, "notes": notes})
        for username, (password, _) in DEMO_USERS.items():
            self.stdout.write(f"{username} / {password}")
