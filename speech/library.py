"""Voice library reads that synthesis needs: a name or alias to its stored voice, and the
default voice. Synchronous (database): call them on a database thread (runtime.run_db).

Kept apart from speech.operator so speech.services can use them without an import cycle.
"""

from __future__ import annotations

from django.db.models import Q

from speech.models import SpeechSettings, Voice

SETTINGS_PK = 1


def settings_row() -> SpeechSettings:
    """The shared operator settings row, created on first use."""
    row, _ = SpeechSettings.objects.get_or_create(pk=SETTINGS_PK)
    return row


def stored_voice_named(name: str) -> Voice | None:
    """The stored voice called `name`, or whose alias `name` is; None if neither."""
    return (
        Voice.objects.filter(Q(name=name) | Q(aliases__alias=name))
        .order_by("pk")  # a name and an alias cannot collide (speech.voices), but be exact
        .first()
    )


def default_voice_name() -> str | None:
    """The voice a request that names none is spoken with, or None (the engine's default)."""
    row = SpeechSettings.objects.select_related("default_voice").filter(pk=SETTINGS_PK).first()
    if row is None:
        return None
    if row.default_voice is not None:
        return row.default_voice.name
    return row.default_builtin or None
