"""The product's URLs plus POST /bench/bare: the yardstick for POST /audio's throughput.

The bare view runs on the same daphne, through the same handler and middleware, and gets the
same body as POST /audio; /bench-stock/bare is the same view behind Django's default
middleware stack, as a stock project would serve it. It only parses the JSON and answers:
the difference to POST /audio is the cost of validation, the transaction and the broadcast.
"""

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from config.urls import urlpatterns as product_urlpatterns


@csrf_exempt
async def bare_view(request: HttpRequest) -> JsonResponse:
    values = json.loads(request.body)
    return JsonResponse({"stream_id": values.get("stream_id"), "seq": values.get("seq")})


urlpatterns = [
    # Under an API prefix: served like POST /audio (config/handlers.py).
    path("bench/bare", bare_view, name="bench-bare"),
    # Outside them: Django's default middleware stack, as in a stock project.
    path("bench-stock/bare", bare_view, name="bench-stock-bare"),
    *product_urlpatterns,
]
