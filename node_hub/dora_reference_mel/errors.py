"""The one error family of the package: a stable code (listed in ERROR_CODES, with what it means) and a message."""

from __future__ import annotations

# Every code an `error` event (or a configuration error) can carry, with what it means.
ERROR_CODES = {
    "empty_audio": "reference_audio has no samples",
    "too_short": "the clip gives no spectrogram frame at the preset's rate",
    "too_long": "the clip (or a voice's ref_audio) is longer than MAX_REF_SECONDS",
    "non_finite_audio": "NaN or Inf among the samples, or samples so large the spectrogram overflows float32 "
                        "(float16 with MEL_DTYPE=float16)",
    "null_samples": "nulls inside the Arrow array",
    "bad_dtype": "the Arrow array is not float32, float64, int16 or int32 PCM (strings, booleans, structs, ...)",
    "bad_shape": "samples that are not [n] or [n, channels]",
    "bad_sample_rate": "sample_rate missing, not an integer, below 4000, above 384000, or of no small ratio to 32 kHz",
    "bad_channels": "channels not an integer, below 1, above 64, or not dividing the sample count",
    "bad_voice": "voice not a string, empty, over 200 UTF-8 bytes, or not a plain name (separators, leading dot, controls)",
    "bad_text": "a text event that is not one string, a VOICE: line without its '|' parts, or a CUSTOM or TRAINED "
                "prompt text, language or SoVITS weights path that is not valid Unicode or over its bound (16 KiB, "
                "4096 bytes for the path)",
    "unknown_voice": "a voice name neither in voices.json nor in the codes directory",
    "ambiguous_voice": "a voice name that matches two voices of voices.json",
    "no_ref_audio": "a voice with neither a ref_audio nor a usable precomputed spectrogram",
    "bad_ref_audio": "the voice's (or a CUSTOM or TRAINED) ref_audio is missing, not readable audio, decodes to more "
                     "samples than MAX_REF_SECONDS allows, or (CUSTOM and TRAINED only) outside REF_AUDIO_ROOTS",
    "bad_codes": "the voice's codes file is truncated, of a non-integer dtype, or has values outside 0..1023",
    "bad_ref_duration": "semantic codes need 3 to 10 s of reference (GPT-SoVITS's bounds); the mel is still served, "
                        "with codes_status \"missing\"",
    "bad_weights": "HUBERT_WEIGHTS or SOVITS_WEIGHTS, or a TRAINED voice's sovits_weights, is not a readable GPT-SoVITS "
                   "safetensors file of the MLX line (for TRAINED: the mel is still served, with codes_status \"missing\")",
    "bad_voices_config": "voices.json (or one entry of it) is unreadable, not JSON, or of the wrong shape",
    "unknown_input": "an event on an input the node does not have",
    "bad_config": "an environment variable or command-line option has a value the node cannot use",
    "bad_preset": "a preset name that is not v2, v3, v4 or sv",
    "internal": "a bug in the node; it logged a traceback and keeps serving",
}


class ReferenceMelError(ValueError):
    """Input or configuration the node cannot serve. `code` is stable; `message` says what to do."""

    def __init__(self, code: str, message: str, *, voice: str | None = None):
        if code not in ERROR_CODES:  # a new code must be documented before it can be raised
            raise KeyError(f"error code {code!r} is not in ERROR_CODES; document it there first")
        super().__init__(message)
        self.code = code
        self.message = message
        self.voice = voice
