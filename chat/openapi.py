"""OpenAPI entries of chat's async views (drf-spectacular cannot introspect them)."""

from __future__ import annotations

from typing import Any

from speech.params import SOME_TEXT_PATTERN
from streams.services import SPEAKER_RE, STREAM_ID_RE

ERROR_REF = {"$ref": "#/components/schemas/Error"}
# The seed's own error shape, used by its 404 and 503 to the letter.
SEED_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "example": "Audio stream not found or expired"},
        "code": {"type": "string", "example": "HTTP_404"},
    },
    "required": ["error", "code"],
}
# DRF's CharField, as chat's serializers use it: trimmed, so it needs a character that is not
# whitespace; no NUL; no lone surrogate (StrictCharField).
SOME_TEXT = {"type": "string", "pattern": SOME_TEXT_PATTERN}
TEXT = {**SOME_TEXT, "minLength": 1, "maxLength": 4096}
VOICE = {
    **SOME_TEXT,
    "minLength": 1,
    "maxLength": 128,
    "nullable": True,
    "description": "engine, OpenAI or stored voice",
}
SPEED = {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0}

CHAT_REQUEST = {
    "type": "object",
    "properties": {
        "text": TEXT,
        "use_tts": {"type": "boolean", "default": False, "description": "speak the answer"},
        "stream_audio": {
            "type": "boolean",
            "default": False,
            "description": "with use_tts: a stream_url instead of a saved file's audio_url",
        },
        "user": {**SOME_TEXT, "minLength": 1, "maxLength": 128, "nullable": True},
    },
    "required": ["text"],
    "additionalProperties": False,
}
CHAT_RESPONSE = {
    "type": "object",
    "properties": {
        "response": {"type": "string"},
        "provider_used": {"type": "string", "example": "builtin"},
        "processing_time": {"type": "number", "description": "seconds"},
        "audio_url": {"type": "string", "nullable": True, "example": "/audio/<id>.wav"},
        "stream_url": {"type": "string", "nullable": True, "example": "/audio/stream/<id>"},
        "request_id": {"type": "string"},
        "current_user": {"type": "string"},
    },
    "required": [
        "response",
        "provider_used",
        "processing_time",
        "audio_url",
        "stream_url",
        "request_id",
        "current_user",
    ],
}
STREAM_REQUEST = {
    "type": "object",
    "properties": {
        "text": TEXT,
        "chunk_size": {"type": "integer", "minimum": 256, "maximum": 1048576, "default": 4096},
        "format": {
            "type": "string",
            "enum": ["wav", "pcm", "mp3", "opus", "aac", "flac"],
            "default": "wav",
        },
        "quality": {
            "type": "string",
            "enum": ["low", "medium", "high"],
            "default": "medium",
            "description": "low 16 kHz, medium 22.05 kHz, high 24 kHz; bitrate or flac "
            "compression grows with it (docs/chat.md)",
        },
        "voice": VOICE,
        "speed": SPEED,
    },
    "required": ["text"],
    "additionalProperties": False,
}
SAY_REQUEST = {
    "type": "object",
    "properties": {
        "speaker": {
            "type": "string",
            "pattern": SPEAKER_RE.pattern,
            "nullable": True,
            "default": "agent",
            "description": "the API key's",
        },
        "text": TEXT,
        "voice": VOICE,
        "speed": SPEED,
        "stream_id": {
            "type": "string",
            "pattern": STREAM_ID_RE.pattern,
            "maxLength": 128,
            "nullable": True,
            "description": "default say-<uuid>",
        },
        "chunk_ms": {"type": "integer", "minimum": 20, "maximum": 2000, "default": 200},
    },
    "required": ["text"],
    "additionalProperties": False,
}
SAY_RESPONSE = {
    "type": "object",
    "properties": {
        "stream_id": {"type": "string"},
        "room": {"type": "string"},
        "speaker": {"type": "string"},
        "turn": {"type": "object", "description": "the turn, as POST .../floor answers it"},
        "status": {"type": "string", "example": "playing"},
        "duration_ms": {"type": "integer"},
        "playback_ends_at": {"type": "string", "format": "date-time"},
        "chunks": {"type": "integer"},
        "bytes": {"type": "integer"},
        "sample_rate_hz": {"type": "integer"},
        "text": {"type": "string"},
        "engine": {"type": "string"},
        "voice": {"type": "string", "nullable": True},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, seed: tuple[int, ...] = ()) -> dict[str, Any]:
    """Error answers; `seed` codes have the seed's shape, or ours when the path itself matched
    no route (a malformed id) or the failure came from below the view (a database outage)."""
    either = {"anyOf": [SEED_ERROR, ERROR_REF]}
    return {
        str(code): {"description": "error", **_json(either if code in seed else ERROR_REF)}
        for code in codes
    }


def _audio(description: str, *types: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"description": description, "content": {t: binary for t in types}}


def _in_path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def chat_paths() -> dict[str, Any]:
    request_id, room = _in_path("request_id"), _in_path("room")
    return {
        "/chat": {
            "post": {
                "operationId": "chat",
                "summary": "Answer a text, optionally spoken (seed 004)",
                "tags": ["chat"],
                "requestBody": {"required": True, **_json(CHAT_REQUEST)},
                "responses": {
                    "200": {"description": "the answer", **_json(CHAT_RESPONSE)},
                    **_errors(400, 401, 403, 415, 502, 503, seed=(503,)),
                },
            }
        },
        "/audio/stream/{request_id}": {
            "get": {
                "operationId": "chat_audio_stream",
                "summary": "A chat answer's WAV (22050 Hz), in 4 KB pieces as it is synthesized",
                "tags": ["chat"],
                "parameters": [request_id],
                "responses": {
                    "200": _audio("streamed WAV (0xFFFFFFFF sizes)", "audio/wav"),
                    **_errors(404, 503, seed=(404, 503)),
                },
            }
        },
        "/audio/{request_id}.wav": {
            "get": {
                "operationId": "chat_audio_file",
                "summary": "A chat answer's saved WAV (stream_audio false)",
                "tags": ["chat"],
                "parameters": [request_id],
                "responses": {"200": _audio("WAV", "audio/wav"), **_errors(404, seed=(404,))},
            }
        },
        "/audio/stream": {
            "post": {
                "operationId": "audio_stream",
                "summary": "Any text straight to streamed audio, in a format and quality",
                "tags": ["chat"],
                "requestBody": {"required": True, **_json(STREAM_REQUEST)},
                "responses": {
                    "200": _audio(
                        "audio as it is synthesized, in chunk_size pieces",
                        "audio/wav",
                        "audio/pcm",
                        "audio/mpeg",
                        "audio/ogg; codecs=opus",
                        "audio/aac",
                        "audio/flac",
                    ),
                    **_errors(400, 401, 415, 503, seed=(503,)),
                },
            }
        },
        "/api/rooms/{room}/say": {
            "post": {
                "operationId": "room_say",
                "summary": "Speak text into the room as the speaker's turn",
                "tags": ["api"],
                "parameters": [room],
                "requestBody": {"required": True, **_json(SAY_REQUEST)},
                "responses": {
                    "200": {
                        "description": "synthesized and sent; playback ends at playback_ends_at",
                        **_json(SAY_RESPONSE),
                    },
                    **_errors(400, 401, 403, 409, 415, 503),
                },
            }
        },
    }
