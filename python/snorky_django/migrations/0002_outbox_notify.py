"""On PostgreSQL, a statement trigger on the outbox table sends ``NOTIFY snorky_outbox``: the
notification leaves with the writing transaction's commit (never for a rollback, once however many
rows it wrote), and wakes the relay at once (see :mod:`snorky_django.relay`). Other databases get
nothing: their relay polls."""

from typing import Any

from django.db import migrations

#: The channel the trigger notifies and the relay listens to.
CHANNEL = "snorky_outbox"
FUNCTION = "snorky_outbox_notify"


def create_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("snorky_django", "OutboxEntry")._meta.db_table)
    schema_editor.execute(
        f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{CHANNEL}', ''); RETURN NULL; END $$"
    )
    schema_editor.execute(
        f"CREATE TRIGGER {FUNCTION} AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def drop_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("snorky_django", "OutboxEntry")._meta.db_table)
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {FUNCTION} ON {table}")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")


class Migration(migrations.Migration):
    dependencies = [("snorky_django", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger, elidable=False)]
