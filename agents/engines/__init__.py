"""The voice agent's speech engines: pure Python, no Django.

``vad`` finds speech in a live PCM stream (Silero v6 over onnxruntime) and turns frame
probabilities into turn events; ``stt`` turns an utterance's PCM into text (faster-whisper
locally, or any OpenAI-compatible transcription server). Heavy imports (onnxruntime,
faster-whisper) happen when an engine is first used, not when this package is imported.
"""
