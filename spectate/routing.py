from django.urls import path

from agents.consumers import AgentConsumer
from ingest.consumers import IngestConsumer
from recordings.consumers import StreamingConsumer
from spectate.consumers import SpectatorConsumer
from speech.consumers import JobProgressConsumer
from speechws.consumers import SpeechSocketConsumer

websocket_urlpatterns = [
    path("spectate/ws", SpectatorConsumer.as_asgi()),
    # Speech job progress: every job, or one job (speech/consumers.py).
    path("v1/status/progress/ws", JobProgressConsumer.as_asgi()),
    path("v1/status/progress/<str:job_id>/ws", JobProgressConsumer.as_asgi()),
    # Text in increments, speech out sentence by sentence (speechws/, docs/speech.md).
    path("v1/audio/speech/ws", SpeechSocketConsumer.as_asgi()),
    # POST /audio's chunks over one socket, each acknowledged once committed (ingest/).
    path("ws/audio", IngestConsumer.as_asgi()),
    path("ws/streaming", StreamingConsumer.as_asgi()),
    # The voice agent (seed 003): agents/consumers.py, docs/agent.md.
    path("ws/agent", AgentConsumer.as_asgi()),
]
