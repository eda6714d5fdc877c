"""The one error family of the package: a stable code (documented in README) and a message."""

from __future__ import annotations


class ReferenceMelError(ValueError):
    """Input or configuration the node cannot serve. `code` is stable; `message` says what to do."""

    def __init__(self, code: str, message: str, *, voice: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.voice = voice

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "voice": self.voice}


# Every code an `error` event can carry, with what it means. README's table is checked against this.
ERROR_CODES = {
    "empty_audio": "reference_audio has no samples",
    "too_short": "the clip gives no spectrogram frame at the preset's rate",
    "too_long": "the clip is longer than MAX_REF_SECONDS",
    "non_finite_audio": "NaN or Inf among the samples",
    "null_samples": "nulls inside the Arrow array",
    "bad_dtype": "the Arrow array is not float32, float64, int16 or int32 PCM (strings, booleans, structs, ...)",
    "bad_shape": "samples that are not [n] or [n, channels]",
    "bad_sample_rate": "sample_rate missing, not an integer, zero, negative, above 384000, or of no small ratio to 32 kHz",
    "bad_channels": "channels not an integer, below 1, or not dividing the sample count",
    "bad_voice": "voice not a string, empty, over 200 characters, or not a plain name (separators, '..', controls)",
    "unknown_voice": "a voice event for a name neither in voices.json nor in the codes directory",
    "no_ref_audio": "a voice with neither a ref_audio nor a usable precomputed spectrogram",
    "bad_ref_audio": "the voice's ref_audio is missing or not readable audio",
    "bad_codes": "the voice's codes file is truncated, of a non-integer dtype, or has values outside 0..1023",
    "bad_voices_config": "voices.json is empty, not JSON, or of the wrong shape (voice events need it)",
    "corrupt_store": "a stored file is unusable and cannot be recomputed",
    "unknown_input": "an event on an input the node does not have",
    "internal": "a bug in the node; it logged a traceback and keeps serving",
}
