"""Chunk.room: the stream's room on every chunk row (docs/scaling.md: every room-scoped table
carries the room, so the largest can be partitioned or distributed by it)."""

import django.db.models.deletion
from django.db import migrations, models

BACKFILL = (
    "UPDATE streams_chunk SET room_id ="
    " (SELECT s.room_id FROM streams_stream s WHERE s.id = streams_chunk.stream_id)"
    " WHERE room_id IS NULL"
)


class Migration(migrations.Migration):
    dependencies = [("streams", "0003_stream_script")]

    operations = [
        migrations.AddField(
            model_name="chunk",
            name="room",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="streams.room",
            ),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="chunk",
            name="room",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="streams.room",
            ),
        ),
    ]
