"""``manage.py demo_users``: the demo's two users (their passwords reset to the ones printed) and,
on a first run, a few todos to start from."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from todos.models import Todo

#: Usernames and passwords of the demo users; printed by run.py. Fine on 127.0.0.1 only.
DEMO_USERS = {"alice": "wonderland", "bob": "builder"}

SAMPLES = [
    ("alice", "Open this page as bob in a private window", False, False),
    ("alice", "Tick me here, watch the other window", False, False),
    ("alice", "Water the plants", True, False),
    ("alice", "Write the release notes", False, True),
    ("bob", "Double-click a todo to edit it", False, True),
    ("bob", "Review alice's pull request", True, True),
    ("bob", "Order a new keyboard", False, False),
]


class Command(BaseCommand):
    help = "Creates the demo users (alice, bob) and, when there are no todos yet, a few samples."

    def add_arguments(self, parser):
        parser.add_argument("--no-samples", action="store_true", help="do not add sample todos")

    @transaction.atomic
    def handle(self, *args, **options):
        users = {}
        for username, password in DEMO_USERS.items():
            user, _ = get_user_model().objects.get_or_create(username=username)
            user.set_password(password)
            user.save()
            users[username] = user
        if not options["no_samples"] and not Todo.objects.exists():
            for owner, title, done, shared in SAMPLES:
                Todo.objects.create(owner=users[owner], title=title, done=done, shared=shared)
        for username, password in DEMO_USERS.items():
            self.stdout.write(f"{username} / {password}")
