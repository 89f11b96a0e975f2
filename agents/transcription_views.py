"""POST /v1/audio/transcriptions (placeholder until the endpoint lands)."""

from django.http import HttpRequest, JsonResponse


async def transcriptions_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": "not_implemented", "detail": "coming"}, status=501)
