"""PostgreSQL: every statement that adds outbox rows sends a NOTIFY on ``OUTBOX_CHANNEL``.

A trigger rather than a ``pg_notify`` call in the code: it covers every writer of the outbox
(events, dead letters, re-publishes, a row written by hand), and cannot be forgotten by a new one.
PostgreSQL delivers the notification only when the transaction commits (never after a rollback)
and folds identical ones of a transaction into one.
"""

from django.db import migrations

from events.models import OUTBOX_CHANNEL

FUNCTION = "outbox_notify_rows_added"


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("events", "OutboxEvent")._meta.db_table
    schema_editor.execute(
        f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', ''); RETURN NULL; END $$"
    )
    schema_editor.execute(
        f"CREATE TRIGGER {FUNCTION} AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("events", "OutboxEvent")._meta.db_table
    schema_editor.execute(f"DROP TRIGGER {FUNCTION} ON {table}")
    schema_editor.execute(f"DROP FUNCTION {FUNCTION}()")


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0006_outboxevent_kafka_position"),
    ]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
