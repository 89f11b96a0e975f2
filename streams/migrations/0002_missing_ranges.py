"""Missing seqs kept as ranges and a count instead of a list of every seq (issue 8 §1)."""

from django.db import migrations, models

MAX_LISTED = 100  # streams.gaps.MAX_LISTED when this was written


def seqs_to_ranges(apps, schema_editor):
    Stream = apps.get_model("streams", "Stream")
    for stream in Stream.objects.only("pk", "missing_seqs").iterator(chunk_size=100):
        if not stream.missing_seqs:
            continue
        ranges: list[list[int]] = []
        count = 0
        for seq in sorted(set(stream.missing_seqs or [])):
            count += 1
            if ranges and ranges[-1][1] + 1 == seq:
                ranges[-1][1] = seq
            elif len(ranges) < MAX_LISTED:
                ranges.append([seq, seq])
        Stream.objects.filter(pk=stream.pk).update(missing_ranges=ranges, missing_count=count)


def ranges_to_seqs(apps, schema_editor):
    Stream = apps.get_model("streams", "Stream")
    for stream in Stream.objects.exclude(missing_count=0).iterator(chunk_size=100):
        seqs = [s for first, last in stream.missing_ranges for s in range(first, last + 1)]
        Stream.objects.filter(pk=stream.pk).update(missing_seqs=seqs)


class Migration(migrations.Migration):
    dependencies = [("streams", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="stream",
            name="missing_count",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="stream",
            name="missing_ranges",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.RunPython(seqs_to_ranges, ranges_to_seqs),
        migrations.RemoveField(model_name="stream", name="missing_seqs"),
    ]
