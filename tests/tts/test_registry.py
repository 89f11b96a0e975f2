import pytest

from speech.tts.base import EngineUnavailable
from speech.tts.espeak import EspeakEngine
from speech.tts.openai_compat import OPENAI_VOICES, OpenAICompatEngine
from speech.tts.piper import PiperEngine
from speech.tts.registry import (
    OPENAI_MODELS,
    OPENAI_VOICE_TO_ESPEAK,
    EngineRegistry,
    ModelNotFound,
    build_engine,
)


def test_default_registry_is_espeak_for_every_openai_model():
    registry = EngineRegistry()
    assert registry.names() == ["espeak"]
    for model in (*OPENAI_MODELS, None):
        resolved = registry.resolve(model, "alloy")
        assert isinstance(resolved.engine, EspeakEngine)
        assert resolved.voice == "en-us"
    assert registry.engine() is registry.engine("espeak")  # built once, then cached


def test_every_openai_voice_maps_to_a_distinct_working_espeak_voice():
    assert set(OPENAI_VOICE_TO_ESPEAK) == set(OPENAI_VOICES)
    assert len(set(OPENAI_VOICE_TO_ESPEAK.values())) == len(OPENAI_VOICES)
    registry = EngineRegistry()
    for openai_voice in OPENAI_VOICES:
        resolved = registry.resolve("tts-1", openai_voice)
        resolved.engine.check_request(voice=resolved.voice)
        pcm = b"".join(
            chunk.pcm for chunk in resolved.engine.synthesize("Hi.", voice=resolved.voice)
        )
        assert len(pcm) > 0.2 * 2 * resolved.engine.sample_rate
    # names the table does not know pass straight through to the engine
    assert registry.resolve("tts-1", "en-us+f2").voice == "en-us+f2"


def test_configured_engines_models_and_voice_maps():
    registry = EngineRegistry(
        {
            "default": "espeak",
            "engines": {
                "espeak": {"default_voice": "en-gb-x-rp", "voice_map": {"alloy": "en-us+m2"}},
                "joe": {"kind": "piper"},
                "remote": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            },
            "models": {"tts-1-hd": "joe", "gpt-4o-mini-tts": "remote"},
        }
    )
    assert registry.resolve("tts-1", "alloy").voice == "en-us+m2"
    assert registry.resolve("tts-1", "echo").voice == "en-us+m1"
    assert registry.engine("espeak").default_voice == "en-gb-x-rp"
    hd = registry.resolve("tts-1-hd", "nova")
    assert isinstance(hd.engine, PiperEngine) and hd.voice is None  # one voice: the model's
    remote = registry.resolve("gpt-4o-mini-tts", "nova")
    assert isinstance(remote.engine, OpenAICompatEngine) and remote.voice == "nova"
    assert registry.resolve("joe").engine_name == "joe"  # engine names work as models too
    with pytest.raises(ModelNotFound):
        registry.resolve("tts-2")
    registry.close()


def test_bad_configs_are_rejected_early():
    with pytest.raises(ValueError, match="default"):
        EngineRegistry({"default": "missing", "engines": {"espeak": {}}})
    with pytest.raises(ValueError, match="unconfigured"):
        EngineRegistry({"engines": {"espeak": {}}, "models": {"tts-1": "nope"}})
    with pytest.raises(ValueError, match="kind"):
        build_engine("festival")
    registry = EngineRegistry({"engines": {"joe": {"kind": "piper", "model_path": "/no.onnx"}}})
    with pytest.raises(EngineUnavailable):
        registry.engine("joe")


def test_every_voice_name_the_openai_sdk_lists_is_mapped():
    import typing

    from openai.types.audio.speech_create_params import Voice

    args = typing.get_args(Voice)
    literal = next(arg for arg in args if typing.get_origin(arg) is typing.Literal)
    sdk_names = set(typing.get_args(literal))
    assert {"marin", "cedar"} <= sdk_names
    assert sdk_names <= set(OPENAI_VOICE_TO_ESPEAK)
    assert sdk_names <= set(OPENAI_VOICES)
