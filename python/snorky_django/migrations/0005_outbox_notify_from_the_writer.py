"""The outbox's ``NOTIFY`` moves from the table's trigger to the writing transaction itself
(:mod:`snorky_django.outbox_writes`): the trigger's plpgsql function cost every new connection a
compilation (about a millisecond) before its first outbox write, and each write a call."""

import importlib

from django.db import migrations

# The trigger's own migration knows how to drop it and how to create it again (to migrate back).
notify_trigger = importlib.import_module("snorky_django.migrations.0002_outbox_notify")


class Migration(migrations.Migration):
    dependencies = [("snorky_django", "0004_outbox_batch_plain_index")]

    operations = [
        migrations.RunPython(notify_trigger.drop_trigger, notify_trigger.create_trigger, elidable=False),
    ]
