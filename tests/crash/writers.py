"""Writers committing changes to the demo's todos continuously, through the ORM, until SIGTERM.

``python -m crash.writers --writers N --rate R --users ID,ID,...`` (with ``crash.settings``): N
threads, each committing about R transactions a second, each transaction one to three changes to
its own todos: create, retitle, tick, share or unshare, give to another user, delete. Sharing,
unsharing and giving away move a todo in and out of other users' views, so subscriptions receive
the inserts and deletes DataSync translates such updates into.

Every change writes the todo's next *version* into its title (``w2-17 v31``: the 31st state of
todo 17 of writer 2), read from the row itself under its lock, so the versions of a todo count its
committed changes one by one; the clients check that the deltas of a todo reach them one version
after the other (nothing lost, nothing twice, nothing out of order).

The database may go away at any moment (the tests stop it): a failed transaction is counted,
the thread reconnects, reloads its todos (a commit whose answer was lost may or may not have
happened) and goes on. On SIGTERM each thread finishes its transaction; the last line printed is
the counts, as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
from typing import Any

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import DatabaseError, close_old_connections, connection, transaction  # noqa: E402
from todos.models import Todo  # noqa: E402

#: The most todos one writer keeps, and the fewest it deletes down to.
MAX_ROWS, MIN_ROWS = 12, 3


class Writer(threading.Thread):
    def __init__(self, index: int, users: list[int], rate: float, stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.prefix = f"w{index}-"
        self.users = users
        self.pause = 1.0 / rate
        self.stop = stop
        self.random = random.Random(seed)
        self.serial = 0
        self.commits = 0
        self.changes = 0
        self.failures = 0
        self.ids: list[int] = []

    def reload(self) -> None:
        """This writer's todos, and a serial number above every one it gave."""
        rows = list(Todo.objects.filter(title__startswith=self.prefix).values_list("id", "title"))
        self.ids = [row_id for row_id, _ in rows]
        for _, title in rows:
            self.serial = max(self.serial, int(title[len(self.prefix) :].split(" v")[0]))

    def change(self) -> None:
        """One change to one of this writer's todos, inside the caller's transaction."""
        choice = self.random.random()
        if len(self.ids) < MIN_ROWS or (choice < 0.15 and len(self.ids) < MAX_ROWS):
            self.serial += 1
            todo = Todo.objects.create(
                title=f"{self.prefix}{self.serial} v1",
                owner_id=self.random.choice(self.users),
                shared=self.random.random() < 0.5,
            )
            self.ids.append(todo.pk)
            return
        row_id = self.random.choice(self.ids)
        if choice < 0.25 and len(self.ids) > MIN_ROWS:
            Todo.objects.filter(pk=row_id).delete()
            self.ids.remove(row_id)
            return
        todo = Todo.objects.select_for_update().get(pk=row_id)
        serial, version = todo.title[len(self.prefix) :].split(" v")
        todo.title = f"{self.prefix}{serial} v{int(version) + 1}"
        if choice < 0.45:
            todo.done = not todo.done
        elif choice < 0.65:
            todo.shared = not todo.shared
        elif choice < 0.75:
            todo.owner_id = self.random.choice(self.users)
        todo.save()

    def run(self) -> None:
        failing = False
        while not self.stop.is_set():
            try:
                if failing:
                    close_old_connections()
                    self.reload()
                    failing = False
                changes = self.random.choice((1, 1, 1, 2, 3))
                with transaction.atomic():
                    for _ in range(changes):
                        self.change()
                self.commits += 1
                self.changes += changes
            except (DatabaseError, Todo.DoesNotExist):
                self.failures += 1
                failing = True
                connection.close()
                self.stop.wait(0.2)
                continue
            self.stop.wait(self.pause * self.random.uniform(0.5, 1.5))
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=5.0, help="transactions per second and writer")
    parser.add_argument("--users", required=True, help="the ids of the users todos are given to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    users = [int(user) for user in args.users.split(",")]
    assert get_user_model().objects.filter(pk__in=users).count() == len(users), "unknown users"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    writers = [Writer(index, users, args.rate, stop, args.seed * 1000 + index) for index in range(args.writers)]
    for writer in writers:
        writer.reload()
    connection.close()
    for writer in writers:
        writer.start()
    print("writing", flush=True)
    while not stop.wait(0.2):
        pass
    for writer in writers:
        writer.join(30)
    counts: dict[str, Any] = {
        key: sum(getattr(writer, key) for writer in writers) for key in ("commits", "changes", "failures")
    }
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
