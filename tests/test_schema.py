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


def _properties(schema: dict, ref: str) -> set[str]:
    return set(schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"])


@pytest.mark.django_db(transaction=True)
def test_real_answers_have_the_schemas_fields(client, post_chunk):
    schema = client.get("/openapi.json").json()
    post_chunk(seq=0, data=b"\0\0" * 100)
    paths = schema["paths"]

    def ref(path: str, method: str, code: str) -> str:
        content = paths[path][method]["responses"][code]["content"]["application/json"]
        return content["schema"]["$ref"]

    stream = client.get("/api/streams/s1").json()
    assert set(stream) == _properties(schema, ref("/api/streams/{stream_id}", "get", "200"))
    state = client.get("/api/rooms/r1").json()
    assert set(state) == _properties(schema, ref("/api/rooms/{room}", "get", "200"))
    held = client.post("/api/rooms/r1/floor", {"speaker": "bob"}, "application/json").json()
    assert set(held) == _properties(schema, ref("/api/rooms/{room}/floor", "post", "409"))
