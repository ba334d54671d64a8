"""Setting up a database for logical delivery (``DELIVERY = "logical"``), and finding which to read.

:func:`prepare` checks the server (PostgreSQL 14+, ``wal_level = logical``, ``max_wal_senders``
above 0, psycopg 3), sets ``REPLICA IDENTITY FULL`` on each subscribable table (updates and
deletes then log the whole old row: the delta's ``oldData``), keeps the publication listing
exactly those tables, and creates the replication slot if it does not exist. Anything missing
raises ``ImproperlyConfigured`` saying what to set, so ``manage.py snorky`` fails at start rather
than delivering nothing.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, models, router

from snorky_django.conf import snorky_settings

__all__ = [
    "NAME_PATTERN",
    "Target",
    "check_server",
    "leftover_slots",
    "prepare",
    "recreate_slot",
    "relayed_databases",
    "slot_name",
    "subscribable_models",
]

logger = logging.getLogger("snorky_django.logical")

_MODE = 'SNORKY["DELIVERY"] = "logical"'

# The SQLSTATE of a refusal for lack of a privilege.
_INSUFFICIENT_PRIVILEGE = "42501"

# The SQLSTATE of a slot a session is reading (object_in_use), and how long a drop waits for it.
_OBJECT_IN_USE = "55006"
_SLOT_BUSY_WAIT = 5.0

#: What PostgreSQL accepts as a replication slot's name (the publication's is held to it too: it is
#: written into SQL).
NAME_PATTERN = re.compile(r"[a-z0-9_]{1,63}")


@dataclass
class Target:
    """What the relay reads from one database."""

    slot: str
    publication: str
    models: dict[tuple[str, str], type[models.Model]] = field(default_factory=dict)
    """The subscribable models by (schema, table)."""
    domains: dict[int, int] = field(default_factory=dict)
    """The base type of each domain type (by oid): a domain column's text loads as its base type's."""


def slot_name(using: str) -> str:
    """The replication slot of database ``using`` (``LOGICAL_SLOT``, with the alias unless it is
    ``default``: slots are named per PostgreSQL server)."""
    base = str(snorky_settings.LOGICAL_SLOT)
    if using == "default":
        return base
    suffix = "".join(c if c.isalnum() else "_" for c in using.lower())
    return f"{base}_{suffix}"[:63]


def subscribable_models(using: str) -> list[type[models.Model]]:
    """The subscribable models the routers put on database ``using``."""
    from snorky_django.changes import registered

    return [options.model for options in registered() if router.allow_migrate_model(using, options.model)]


def relayed_databases() -> list[str]:
    """The aliases the relay reads: those holding subscribable models, one per database (two aliases
    of one database, a reporting alias say, would otherwise each get a slot, and each delta twice)."""
    seen: set[tuple[Any, ...]] = set()
    aliases = []
    for alias in connections:
        if not subscribable_models(alias):
            continue
        settings_dict = connections[alias].settings_dict
        where = (settings_dict.get("HOST") or "", str(settings_dict.get("PORT") or ""), settings_dict.get("NAME"))
        if where in seen:
            continue
        seen.add(where)
        aliases.append(alias)
    return aliases


def prepare(using: str) -> Target:
    """Checks and sets up logical decoding of the subscribable tables of database ``using`` (see
    the module docs). A hot standby is left alone (no model to read: its primary has the slot)."""
    connection = connections[using]
    target = Target(slot_name(using), str(snorky_settings.LOGICAL_PUBLICATION))
    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            f'{_MODE} needs PostgreSQL; database {using!r} is {connection.vendor} (use "outbox" or "direct" there).'
        )
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        raise ImproperlyConfigured(f'{_MODE} needs psycopg 3 (pip install "psycopg[binary]").')
    found = subscribable_models(using)
    inherited = [model.__name__ for model in found if model._meta.parents]
    if inherited:
        raise ImproperlyConfigured(
            f"{_MODE} cannot rebuild rows of models that inherit a table: {', '.join(inherited)} "
            '(use "outbox" or "direct").'
        )
    if not found:
        return target
    try:
        with connection.cursor() as cursor:
            if not check_server(cursor, using):
                return target
            _set_up(cursor, connection, target, found)
    except DatabaseError as err:
        why = str(err).strip().rstrip(".")
        if getattr(err.__cause__, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            why += (
                ". The database user needs the REPLICATION attribute (or your provider's replication role) "
                "and must own the subscribable tables"
            )
        raise ImproperlyConfigured(f"Cannot set up logical delivery on database {using!r}: {why}.") from err
    return target


def check_server(cursor: Any, using: str) -> bool:
    """Raises ``ImproperlyConfigured`` saying what the server of ``cursor`` lacks for logical
    delivery; ``False`` for a hot standby."""
    cursor.execute(
        "SELECT current_setting('wal_level'), current_setting('server_version_num')::int, pg_is_in_recovery(), "
        "current_setting('max_wal_senders')::int"
    )
    level, version, standby, senders = cursor.fetchone()
    if version < 140000:
        raise ImproperlyConfigured(f"{_MODE} needs PostgreSQL 14 or later; database {using!r} runs {version}.")
    if standby:
        logger.info("Snorky: database %r is a standby; the relay reads its primary's slot, not this one", using)
        return False
    if level != "logical":
        raise ImproperlyConfigured(
            f"{_MODE} needs wal_level = logical on database {using!r} (it is {level}): run ALTER SYSTEM SET "
            "wal_level = logical and restart PostgreSQL (or set it in postgresql.conf, or your provider's "
            "parameter group)."
        )
    if senders < 1:
        raise ImproperlyConfigured(
            f"{_MODE} reads the slot over a replication connection, and database {using!r} allows none "
            "(max_wal_senders = 0): set max_wal_senders to at least 1 more than your replicas use, and restart "
            "PostgreSQL."
        )
    return True


def _set_up(cursor: Any, connection: Any, target: Target, found: list[type[models.Model]]) -> None:
    quote = connection.ops.quote_name
    names = [quote(model._meta.db_table) for model in found]
    cursor.execute(
        "SELECT t.name, c.oid::regclass::text, n.nspname, c.relname, c.relkind, c.relreplident "
        "FROM unnest(%s::text[]) AS t(name) LEFT JOIN pg_class c ON c.oid = to_regclass(t.name) "
        "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace",
        [names],
    )
    by_name = {model_name: model for model_name, model in zip(names, found, strict=True)}
    tables: list[str] = []
    for name, regclass, schema, table, kind, identity in cursor.fetchall():
        model = by_name[name]
        if regclass is None:
            raise ImproperlyConfigured(
                f"Table {name} of {model.__name__} does not exist in database {connection.alias!r}: run migrate."
            )
        if kind == "p":
            raise ImproperlyConfigured(
                f'{_MODE} does not read partitioned tables ({name} of {model.__name__}); use "outbox" or "direct".'
            )
        target.models[schema, table] = model
        tables.append(regclass)
        if identity != "f":
            cursor.execute(f"ALTER TABLE {regclass} REPLICA IDENTITY FULL")
            logger.info("Snorky: table %s now logs whole old rows (REPLICA IDENTITY FULL)", regclass)
    cursor.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [target.publication])
    published = set(cursor.fetchall())
    cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [target.publication])
    listed = ", ".join(sorted(tables))
    if cursor.fetchone() is None:
        cursor.execute(f"CREATE PUBLICATION {quote(target.publication)} FOR TABLE {listed}")
    elif published != set(target.models):
        cursor.execute(f"ALTER PUBLICATION {quote(target.publication)} SET TABLE {listed}")
    cursor.execute("SELECT oid, typbasetype FROM pg_type WHERE typtype = 'd'")
    domains = dict(cursor.fetchall())
    for oid in domains:
        base = domains[oid]
        while base in domains:  # a domain over a domain
            base = domains[base]
        target.domains[oid] = base
    _create_slot(cursor, target)


def _create_slot(cursor: Any, target: Target) -> None:
    cursor.execute(
        "SELECT plugin, database = current_database() FROM pg_replication_slots WHERE slot_name = %s",
        [target.slot],
    )
    row = cursor.fetchone()
    if row is not None:
        if row[0] != "pgoutput" or not row[1]:
            raise ImproperlyConfigured(
                f"Replication slot {target.slot!r} exists for another database or plugin: set "
                'SNORKY["LOGICAL_SLOT"] to a name of its own.'
            )
        return
    logger.info("Snorky: creating replication slot %r (it waits for the transactions running now)", target.slot)
    cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [target.slot])
    logger.warning(
        "Snorky: created replication slot %r: changes committed from now on are delivered. Drop it "
        "(SELECT pg_drop_replication_slot(%r)) if you stop using logical delivery: PostgreSQL keeps "
        "the WAL a slot has not read.",
        target.slot,
        target.slot,
    )


def recreate_slot(using: str, why: str) -> Target:
    """Drops the slot of ``using`` (it can no longer be read: ``why``) and sets up again, from now.
    What committed in between is lost for live clients, and the error says so."""
    slot = slot_name(using)
    deadline = time.monotonic() + _SLOT_BUSY_WAIT
    while True:
        try:
            with connections[using].cursor() as cursor:
                cursor.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [slot]
                )
            break
        except DatabaseError as err:
            # The relay's own stream, just closed, may hold the slot a moment longer.
            if getattr(err.__cause__, "sqlstate", None) != _OBJECT_IN_USE or time.monotonic() > deadline:
                raise
        time.sleep(0.05)
    target = prepare(using)
    logger.error("Snorky: replication slot %r %s: created it again (changes committed meanwhile are lost)", slot, why)
    return target


def leftover_slots() -> list[str]:
    """Warnings for the replication slots logical delivery left, when it is not the mode now: a slot
    nobody reads keeps all the WAL written since, and logical delivery, set again, would deliver
    everything committed meanwhile a second time."""
    if snorky_settings.DELIVERY == "logical":
        return []
    warnings = []
    for using in relayed_databases():
        connection = connections[using]
        if connection.vendor != "postgresql":
            continue
        slot = slot_name(using)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_size_pretty(pg_current_wal_lsn() - restart_lsn) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND database = current_database()",
                    [slot],
                )
                row = cursor.fetchone()
        except DatabaseError:
            continue
        if row is not None:
            warnings.append(
                f"the replication slot {slot!r} that logical delivery created on database {using!r} is still there, "
                f"keeping {row[0]} of WAL (and more as you write). Drop it when no logical relay runs any more: "
                f"SELECT pg_drop_replication_slot('{slot}'). (Setting DELIVERY back to \"logical\" with it in "
                "place would deliver again everything committed since.)"
            )
    return warnings
