from django.urls import path

from agents import pages, transcription_views

urlpatterns = [
    # OpenAI's speech-to-text API over the agent's STT engines (docs/agent.md).
    path(
        "v1/audio/transcriptions",
        transcription_views.transcriptions_view,
        name="audio-transcriptions",
    ),
    # Talk to the agent in a browser (agents/static/agents/).
    path("agent/", pages.agent_page_view, name="agent-page"),
    path("rooms/<str:room>/agent/", pages.agent_page_view, name="room-agent-page"),
]
