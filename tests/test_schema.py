"""The OpenAPI schema covers every endpoint and the docs pages load their assets locally."""

import pytest


@pytest.mark.django_db
def test_schema_lists_every_core_endpoint(client):
    schema = client.get("/openapi.json?format=json").json()
    paths = set(schema["paths"])
    assert {
        "/audio",
        "/api/rooms/{room}",
        "/api/rooms/{room}/floor",
        "/api/rooms/{room}/events",
        "/api/streams",
        "/api/streams/{stream_id}",
        "/api/streams/{stream_id}/audio.wav",
    } <= paths
    assert "requestBody" in schema["paths"]["/audio"]["post"]


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_local_assets(client, page):
    html = client.get(page).content.decode()
    assert "cdn" not in html.lower()
    assert "/static/drf_spectacular_sidecar/" in html


@pytest.mark.django_db(transaction=True)
async def test_static_assets_are_served_through_the_asgi_app():
    import httpx

    from config.asgi import application

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        css = await client.get("/static/admin/css/base.css")
        missing = await client.get("/static/admin/css/nope.css")
    assert css.status_code == 200 and b"body" in css.content
    assert missing.status_code == 404


def test_every_middleware_is_async_capable():
    """A sync-only middleware would hop every async request through asgiref's shared thread."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    for path in settings.MIDDLEWARE:
        assert getattr(import_string(path), "async_capable", False), path
