"""The chat exchanges in the Django admin: listed, searchable, with an audio player."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from chat.models import AudioStatus, ChatExchange


@pytest.mark.django_db
def test_exchanges_are_listed_and_shown_with_their_audio(client):
    User.objects.create_superuser("root", "root@example.com", "pw")
    client.login(username="root", password="pw")
    exchange = ChatExchange.objects.create(
        request_id="ab" * 16,
        user="ada",
        text="Hello Jarvis",
        response="Hello, ada!",
        provider_used="builtin",
        processing_time=0.01,
        use_tts=True,
        audio_status=AudioStatus.READY,
        audio_wav=b"RIFF",
    )
    listing = client.get("/admin/chat/chatexchange/?q=Jarvis&audio_status__exact=ready")
    assert listing.status_code == 200 and b"Hello Jarvis" in listing.content
    page = client.get(f"/admin/chat/chatexchange/{exchange.pk}/change/")
    assert page.status_code == 200
    assert f'src="/audio/{exchange.request_id}.wav"'.encode() in page.content
