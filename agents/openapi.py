"""OpenAPI entries for the agent's plain async views, which drf-spectacular cannot see.

Enums and limits come from agents.transcription, the module the view validates with, so the
documentation follows the behaviour.
"""

from __future__ import annotations

from typing import Any

from agents.transcription import (
    CONTENT_TYPES,
    MODELS,
    RESPONSE_FORMATS,
    SSE_CONTENT_TYPE,
    STREAM_FORMATS,
)

ERROR_REF = {"$ref": "#/components/schemas/Error"}
TAG = "agent"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(descriptions: dict[int, str]) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": ERROR_REF}},
        }
        for status, description in descriptions.items()
    }


DURATION_USAGE = {
    "type": "object",
    "description": "OpenAI's usage of duration-billed models: the input audio in whole "
    "seconds, rounded up.",
    "properties": {
        "type": {"type": "string", "enum": ["duration"]},
        "seconds": {"type": "integer"},
    },
    "required": ["type", "seconds"],
}
TOKEN_USAGE = {
    "type": "object",
    "description": "Counted as speech's usage is: one audio token per started 20 ms of input, "
    "one text token per word or punctuation mark of the prompt (input) and the text (output).",
    "properties": {
        "type": {"type": "string", "enum": ["tokens"]},
        "input_tokens": {"type": "integer"},
        "input_token_details": {
            "type": "object",
            "properties": {
                "audio_tokens": {"type": "integer"},
                "text_tokens": {"type": "integer"},
            },
        },
        "output_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
    "required": ["type", "input_tokens", "output_tokens", "total_tokens"],
}
SCHEMAS: dict[str, Any] = {
    "TranscriptionRequest": {
        "type": "object",
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "The audio: any file ffmpeg decodes (wav, mp3, m4a/mp4, aac, "
                "ogg/opus, webm, flac), at most PARLEY_STT_MAX_BYTES (25 MB by default); at "
                "least 0.1 s of audio.",
            },
            "model": {
                "type": "string",
                "enum": list(MODELS),
                "description": "whisper-1, gpt-4o-transcribe and gpt-4o-mini-transcribe use "
                "the default engine (PARLEY_STT_ENGINE); whisper or openai pick one.",
            },
            "language": {
                "type": "string",
                "description": "ISO-639-1 code of the spoken language (a region suffix is "
                "ignored). The default Whisper model, tiny.en, is English only.",
            },
            "prompt": {"type": "string", "description": "Words and spellings to expect."},
            "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
            "temperature": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "Accepted for compatibility; it has no effect.",
            },
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": ["segment", "word"]},
                "description": "segment (the default of verbose_json, srt and vtt); word is "
                "refused (400): no engine gives word times.",
            },
            "stream": {
                "type": "boolean",
                "default": False,
                "description": "Server-Sent Events; with response_format "
                + " or ".join(STREAM_FORMATS)
                + " only.",
            },
        },
        "required": ["file", "model"],
    },
    "Transcription": {
        "type": "object",
        "properties": {"text": {"type": "string"}, "usage": DURATION_USAGE},
        "required": ["text"],
    },
    "TranscriptionSegment": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "start": {"type": "number", "description": "seconds from the start of the audio"},
            "end": {"type": "number"},
            "text": {"type": "string"},
        },
        "required": ["id", "start", "end", "text"],
    },
    "TranscriptionVerbose": {
        "type": "object",
        "properties": {
            "task": {"type": "string", "enum": ["transcribe"]},
            "language": {"type": "string", "description": "a name, as OpenAI's: english"},
            "duration": {"type": "number", "description": "seconds of audio"},
            "text": {"type": "string"},
            "segments": {"type": "array", "items": _ref("TranscriptionSegment")},
            "usage": DURATION_USAGE,
        },
        "required": ["task", "language", "duration", "text", "segments"],
    },
    "TranscriptionStreamEvent": {
        "type": "object",
        "description": "One `data:` line of the stream: transcript.text.delta (`delta`: the "
        "next word, with the space before it) or, last, transcript.text.done (`text`, "
        "`usage`).",
        "properties": {
            "type": {
                "type": "string",
                "enum": ["transcript.text.delta", "transcript.text.done"],
            },
            "delta": {"type": "string"},
            "text": {"type": "string"},
            "usage": TOKEN_USAGE,
        },
        "required": ["type"],
    },
}
TEXT = {"type": "string"}
TRANSCRIPTIONS = {
    "post": {
        "operationId": "audio_transcriptions",
        "summary": "Speech to text, OpenAI-compatible",
        "description": "Transcribes an audio file with the agent's STT engine. The answer "
        "depends on response_format: json (the default) and verbose_json as JSON, text as "
        "plain text, srt and vtt as subtitles from the segments. With stream=true, "
        "Server-Sent Events: a transcript.text.delta per word, then transcript.text.done. "
        "The engines are not streaming: the events start once the whole file is "
        "transcribed. Errors are always JSON.",
        "tags": [TAG],
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": _ref("TranscriptionRequest")}},
        },
        "responses": {
            "200": {
                "description": "The transcript in response_format, or events with stream=true",
                "content": {
                    CONTENT_TYPES["json"]: {
                        "schema": {"oneOf": [_ref("Transcription"), _ref("TranscriptionVerbose")]}
                    },
                    CONTENT_TYPES["text"].split(";")[0]: {"schema": TEXT},
                    CONTENT_TYPES["srt"].split(";")[0]: {"schema": TEXT},
                    CONTENT_TYPES["vtt"].split(";")[0]: {"schema": TEXT},
                    SSE_CONTENT_TYPE: {
                        "schema": {
                            "type": "object",
                            "description": "One event: `data` is a TranscriptionStreamEvent "
                            "as JSON",
                            "properties": {"data": {"type": "string"}},
                            "required": ["data"],
                        }
                    },
                },
            },
            **_errors(
                {
                    400: "a bad field (`field` names it): missing, empty or undecodable file, "
                    "audio under 0.1 s, unknown model, unsupported language, word "
                    "timestamps, stream with srt/vtt/verbose_json, malformed multipart",
                    401: "an API key is required (PARLEY_REQUIRE_AUTH) or invalid",
                    405: "not POST",
                    413: "the file is larger than PARLEY_STT_MAX_BYTES",
                    415: "the body is not multipart/form-data",
                    502: "the engine failed (e.g. a remote server's error)",
                    503: "the engine the model names cannot run here",
                }
            ),
        },
    }
}


def agent_paths() -> dict[str, Any]:
    return {"/v1/audio/transcriptions": TRANSCRIPTIONS}


def add_agent_endpoints(result: dict, generator: Any, request: Any, public: bool) -> dict:
    from config.schema import ERROR

    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", ERROR)
    for name, schema in SCHEMAS.items():
        schemas.setdefault(name, schema)
    result.setdefault("paths", {}).update(agent_paths())
    return result
