"""The node's output contract, and the helper a GPT-SoVITS node downstream uses to read it.

Importable without MLX (only numpy and pyarrow). The contract is written once, here; the tables of
docs/contract.md are checked against these by tests/test_manifest.py.

    from dora_reference_mel.contract import decode_mel_event
    ref = decode_mel_event(event)          # event["id"] == "mel"
    refer = ref.spectrogram                 # [1, n_bins, n_frames] (sv: [1, n_frames, 80]), zero-copy from Arrow
    prompt = ref.codes                      # int64 [1, 1, N], or None when the voice has no codes
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pyarrow as pa

from ..errors import ReferenceMelError
from ..limits import (  # noqa: F401  (the wire format's bounds, read here by consumers)
    BINS_FRAMES,
    DTYPES,
    FRAMES_BINS,
    LAYOUTS,
    MAX_CHANNELS,
    MAX_PATH_BYTES,
    MAX_PROMPT_TEXT_BYTES,
    MAX_SAMPLE_RATE,
    MAX_VOICE_NAME_BYTES,
    MIN_SAMPLE_RATE,
)

# Every input and output id of the node, defined once (the node, the CLI, the demo nodes and the tests import these).
INPUT_AUDIO, INPUT_VOICE, INPUT_TEXT = "reference_audio", "voice", "text"
MEL_OUTPUT, ERROR_OUTPUT, TEXT_OUTPUT, LOG_OUTPUT, WARMUP_OUTPUT = "mel", "error", "text", "log", "warmup"
INPUTS = {
    INPUT_AUDIO: "PCM samples: Arrow float32, float64, int16 or int32, interleaved when multichannel",
    INPUT_VOICE: "Arrow string array with one voice name (key, display name or alias in voices.json)",
    INPUT_TEXT: "primespeech text: VOICE:<name>|<text>, VOICE:CUSTOM|<wav>|<prompt text>|<lang>|<text>, "
                "VOICE:TRAINED|<gpt>|<sovits>|<wav>|<prompt text>|<lang>|<text>, "
                'JSON {"prompt": ...}, or plain text; forwarded unchanged on `text`',
}
OUTPUTS = {
    MEL_OUTPUT: "flat C-order float32 (or float16, MEL_DTYPE) data of the metadata's shape; layout and recipe in metadata",
    ERROR_OUTPUT: 'one JSON string {"error": code, "message": what to do, "voice": name, "preset": name}',
    TEXT_OUTPUT: "every `text` input, forwarded unchanged and in order, after the mel of its voice switch",
    LOG_OUTPUT: 'MoFA log line: one JSON string {"level", "message", "timestamp", "node"} per error and warning',
    WARMUP_OUTPUT: "optional, left unconnected: when declared, one message the size of the largest answer, sent at "
                   "start so dora 1.1 maps the shared memory of the first large output before the first request",
}
# The metadata key every forwarded `text` carries once a reference was sent: the reference_id of the `mel`
# events that text is to be spoken with (a TTS node holds the text until they have arrived). Texts that
# share one request_id (one answer split into sentences) may switch to different voices, so texts name
# the reference_id, which is unique to each answer, not the request_id.
REFERENCE_KEY = "reference_request_id"
# The Arrow type of each element type a `mel` event may carry (limits.DTYPES).
ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
# key -> (type, required, meaning) of every `mel` event's metadata.
MEL_METADATA = {
    "shape": ("list[int]", True, "[1, n_bins, n_frames], or [1, n_frames, n_bins] when layout is frames_bins"),
    "layout": ("str", True, '"bins_frames" (v2, v3, v4) or "frames_bins" (sv: frames first, as the speaker model takes it)'),
    "dtype": ("str", True, '"float32", or "float16" with MEL_DTYPE=float16'),
    "preset": ("str", True, '"v2" (linear spectrogram), "v3" or "v4" (prompt log-mel), "sv" (v2Pro speaker fbank)'),
    "sample_rate": ("int", True, "rate of the recipe (32000, 24000 or 16000), not of the input"),
    "n_fft": ("int", True, "FFT size of the recipe"),
    "hop_length": ("int", True, "hop of the recipe: one frame per hop_length samples"),
    "fingerprint": ("str", True, "hash of every recipe parameter"),
    "source": ("str", True, '"cache", "precomputed" or "computed"'),
    "elapsed_ms": ("float", True, "time the node spent on this event"),
    "request_id": ("str", True, "the input's request_id, or one the node generated"),
    "reference_id": ("str", True, "unique to this answer (its request_id, ':' and 8 hex digits): what a text's "
                     "reference_request_id names"),
    "n_mels": ("int", False, "v3/v4: mel bands (100); sv: 80"),
    "voice": ("str", False, 'the voice\'s key in voices.json, when the input named one ("CUSTOM" or "TRAINED" for a '
              'clip named by path)'),
    "ref_text": ("str", False, "the voice's prompt text (voices.json ref_text, or the CUSTOM or TRAINED message's)"),
    "speed_factor": ("float", False, "the voice's speed_factor in voices.json"),
    "prompt_lang": ("str", False, "language of the prompt text (CUSTOM or TRAINED message, as sent, or voices.json "
                    "prompt_lang)"),
    "sovits_weights": ("str", False, "TRAINED only: the message's SoVITS weights path, as sent (the codes are "
                       "computed with those weights, as upstream extracts them)"),
    "text_lang": ("str", False, "voices.json text_lang, when the voice has it"),
    "language": ("str", False, "voices.json language, when the voice has it"),
    "lang": ("str", False, "voices.json lang, when the voice has it"),
    "codes": ("list[int]", False, "the reference's semantic prompt codes, when it has them"),
    "codes_status": ("str", False, 'where `codes` came from: "stored" (a codes file), "computed" (from the clip, '
                     'with HUBERT_WEIGHTS and SOVITS_WEIGHTS), "cache" (computed before), or "missing" (none: no '
                     'codes file and no weights, or a clip outside 3 to 10 s, which `warnings` names)'),
    "write_back": ("str", False, '"written", "failed", "off" or "skipped" (the stored file is one the library cannot '
                   'recompute, or a voice voices.json does not list once the codes directory holds 256 of them): what '
                   'happened to a computed spectrogram'),
    "warnings": ("list[str]", False, "legal but suspicious input (duration outside 3 to 10 s, peak > 2); on every "
                 "serving of that reference, and on the log output"),
    "request_id_generated": ("bool", False, "true when the input had no request_id"),
    "startup": ("bool", False, "true on the mel sent at start: the startup voice's (VOICE_CHARACTER / VOICE_NAME), "
                "or, in a node dora restarted, the voice its texts were last switched to"),
}
ERROR_METADATA = {
    "error": ("str", True, "the stable error code"),
    "request_id": ("str", True, "the input's request_id, or one the node generated"),
    "preset": ("str", False, "the preset that failed, when only one did"),
}
SOURCES = ("cache", "precomputed", "computed")
# How many trailing frames upstream keeps of the v3/v4 prompt mel (docs/recipe.md, "The prompt mel").
PROMPT_MEL_FRAMES = {"v3": 468, "v4": 500}
_PY_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


class ContractError(ValueError):
    """An event that breaks the contract; the message names what and how."""


@dataclasses.dataclass(frozen=True)
class ReferenceMel:
    """A decoded `mel` event: the model-ready tensors and typed metadata."""

    spectrogram: np.ndarray  # [1, n_bins, n_frames] (or [1, n_frames, n_bins]: see layout), read-only, zero-copy
    codes: np.ndarray | None  # int64 [1, 1, N]
    preset: str
    layout: str
    voice: str | None
    source: str
    request_id: str
    reference_id: str  # what a forwarded text's REFERENCE_KEY names
    warnings: tuple[str, ...]
    metadata: dict

    def prompt_mel(self) -> np.ndarray:
        """v3/v4: the prompt mel as upstream feeds it, the last 468 (v3) or 500 (v4) frames."""
        if self.preset not in PROMPT_MEL_FRAMES:
            raise ContractError(f"preset={self.preset!r} has no prompt mel; only v3 and v4 do")
        return self.spectrogram[:, :, -PROMPT_MEL_FRAMES[self.preset]:]


def _check_type(key: str, value, type_name: str) -> None:
    if type_name.startswith("list["):
        inner = _PY_TYPES[type_name[5:-1]]
        ok = isinstance(value, list) and all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
    elif type_name == "bool":
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, _PY_TYPES[type_name]) and not isinstance(value, bool)
    if not ok:
        raise ContractError(f"metadata {key}={value!r} must be {type_name}")


def validate_metadata(metadata: dict, table: dict) -> None:
    for key, (type_name, required, _) in table.items():
        if key not in metadata:
            if required:
                raise ContractError(f"metadata {key} is missing; the contract requires it")
            continue
        _check_type(key, metadata[key], type_name)


def decode_mel_event(event: dict) -> ReferenceMel:
    """Turn a `mel` event (a dora event dict) into model-ready tensors, or raise ContractError.

    The event's id is the receiving input's name (`mel`, `reference`, ...): it is not checked.
    """
    metadata = dict(event.get("metadata") or {})
    validate_metadata(metadata, MEL_METADATA)
    shape = metadata["shape"]
    if len(shape) != 3 or shape[0] != 1 or min(shape) < 1:
        raise ContractError(f"shape={shape} must be [1, n_bins, n_frames] or [1, n_frames, n_bins] with positive sizes")
    if metadata["dtype"] not in DTYPES or metadata["source"] not in SOURCES or metadata["layout"] not in LAYOUTS:
        raise ContractError(f"dtype={metadata['dtype']!r} / source={metadata['source']!r} / "
                            f"layout={metadata['layout']!r} break the contract")
    value = event.get("value")
    if not isinstance(value, pa.Array) or value.type != ARROW_DTYPES[metadata["dtype"]] or value.null_count:
        got = getattr(value, "type", value)
        raise ContractError(f"mel value must be a dense Arrow {metadata['dtype']} array, got {got}")
    if len(value) != shape[0] * shape[1] * shape[2]:
        raise ContractError(f"mel holds {len(value)} values, shape {shape} needs {shape[0] * shape[1] * shape[2]}")
    spectrogram = value.to_numpy(zero_copy_only=True).reshape(shape)
    if not np.isfinite(spectrogram).all():
        raise ContractError("mel contains NaN or Inf")
    codes = metadata.get("codes")
    return ReferenceMel(
        spectrogram=spectrogram,
        codes=None if codes is None else np.asarray(codes, dtype=np.int64).reshape(1, 1, -1),
        preset=metadata["preset"], layout=metadata["layout"], voice=metadata.get("voice"), source=metadata["source"],
        request_id=metadata["request_id"], reference_id=metadata["reference_id"],
        warnings=tuple(metadata.get("warnings", ())), metadata=metadata,
    )


def decode_error_event(event: dict) -> dict:
    """An `error` event's JSON body {"error", "message", "voice", ...}, with request_id added."""
    metadata = dict(event.get("metadata") or {})
    validate_metadata(metadata, ERROR_METADATA)
    value = event.get("value")
    if not isinstance(value, pa.Array) or len(value) != 1:
        raise ContractError("an error event must hold one JSON string")
    body = json.loads(value[0].as_py())
    body["request_id"] = metadata["request_id"]
    return body


# ---------------------------------------------------------------------------------------------
# primespeech's text protocol (what the TTS nodes accept on `text`)
# ---------------------------------------------------------------------------------------------

VOICE_PREFIX, CUSTOM_VOICE, TRAINED_VOICE = "VOICE:", "CUSTOM", "TRAINED"
# The '|' fields after VOICE:CUSTOM| and VOICE:TRAINED|, in the order MoFA's and Moxin-Voice's TTS nodes split
# them (docs/contract.md, "The text protocol"); the text to speak is last and may hold '|'.
PATH_VOICE_FIELDS = {
    CUSTOM_VOICE: ("ref_audio", "prompt_text", "lang", "text"),
    TRAINED_VOICE: ("gpt_weights", "sovits_weights", "ref_audio", "prompt_text", "lang", "text"),
}
# The fields that reach `mel` metadata: what each is, its bound in UTF-8 bytes, and what to send instead.
_METADATA_FIELDS = {
    "prompt_text": ("prompt text", MAX_PROMPT_TEXT_BYTES, "send the prompt text of a 3 to 10 s clip"),
    "lang": ("language", MAX_PROMPT_TEXT_BYTES, "send a language code such as zh or en"),
    "sovits_weights": ("SoVITS weights path", MAX_PATH_BYTES, "send the path of the weights file"),
}


@dataclasses.dataclass(frozen=True)
class VoiceSwitch:
    """The voice switch at the head of a primespeech text, if any.

    `VOICE:<name>|<text>` switches to a named voice; `VOICE:CUSTOM|<wav>|<prompt text>|<lang>|<text>` to a
    reference clip given by path; `VOICE:TRAINED|<gpt>|<sovits>|<wav>|<prompt text>|<lang>|<text>` to a
    clip given by path, spoken with trained weights. The value may also be JSON {"prompt": "<one of these>"}."""

    name: str  # the voice name, CUSTOM_VOICE or TRAINED_VOICE
    text: str  # what is left to speak
    ref_audio: str | None = None  # CUSTOM and TRAINED only
    ref_text: str | None = None
    lang: str | None = None
    sovits_weights: str | None = None  # TRAINED only, as sent: the TTS node resolves it


def parse_voice_switch(value: str) -> VoiceSwitch | None:
    """The switch a text starts with, None for plain text, ContractError for a broken VOICE: line."""
    text = value
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("prompt"), str):
            text = parsed["prompt"]
    if not text.startswith(VOICE_PREFIX):
        return None
    head = text[len(VOICE_PREFIX):]
    for kind, fields in PATH_VOICE_FIELDS.items():
        if head.startswith(kind + "|"):
            return _path_voice_switch(text, kind, head[len(kind) + 1:].split("|", len(fields) - 1))
    name, sep, rest = head.partition("|")
    if not sep or not name.strip():
        raise ContractError(f"text {text[:80]!r} starts with VOICE: but is not VOICE:<name>|<text>")
    return VoiceSwitch(name.strip(), rest)


def _path_voice_switch(text: str, kind: str, parts: list[str]) -> VoiceSwitch:
    """A VOICE:CUSTOM or VOICE:TRAINED switch from its '|' fields, or ContractError naming the format."""
    fields = PATH_VOICE_FIELDS[kind]
    if len(parts) != len(fields) or not parts[fields.index("ref_audio")].strip():
        layout = "|".join(f"<{field}>" for field in fields)
        raise ContractError(f"text {text[:80]!r} is not VOICE:{kind}|{layout} ({len(fields)} fields, ref_audio not "
                            f"empty)")
    values = dict(zip(fields, parts, strict=True))
    for field, (what, limit, fix) in _METADATA_FIELDS.items():
        if field not in values:
            continue
        try:
            size = len(values[field].encode("utf-8"))
        except UnicodeEncodeError:
            raise ContractError(f"the VOICE:{kind} {what} {ascii(values[field][:60])} is not valid Unicode (a lone "
                                "surrogate, as a JSON \\ud800 escape gives); send UTF-8 text") from None
        if size > limit:
            raise ContractError(f"the VOICE:{kind} {what} is {size} bytes, over {limit}; {fix}")
    return VoiceSwitch(kind, values["text"], ref_audio=values["ref_audio"].strip(), ref_text=values["prompt_text"],
                       lang=values["lang"], sovits_weights=values.get("sovits_weights") or None)


# ---------------------------------------------------------------------------------------------
# The wire format the node writes and reads: Arrow values and dora metadata (decode_* read it back)
# ---------------------------------------------------------------------------------------------

# Arrow types a reference_audio event may carry, with the numpy type each arrives as.
ARROW_PCM = {pa.float32(): np.float32, pa.float64(): np.float64, pa.int16(): np.int16, pa.int32(): np.int32}


def int_metadata(metadata: dict, key: str, *, required: bool = False, default: int | None = None) -> int:
    """An integer metadata value of reference_audio (sample_rate, channels), or its error."""
    code = {"sample_rate": "bad_sample_rate", "channels": "bad_channels"}[key]
    value = metadata.get(key)
    if value is None:
        if required:
            raise ReferenceMelError(code, f"metadata {key} is missing; send it as an int with every reference_audio event")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReferenceMelError(code, f"metadata {key}={str(value)[:60]!r} must be an integer")
    return value


def pcm_from_arrow(value) -> np.ndarray:
    """A flat PCM array from an Arrow array (zero-copy where Arrow allows), or a clear error."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array):
        raise ReferenceMelError("bad_dtype", f"reference_audio must be an Arrow array, got {type(value).__name__}")
    if value.type not in ARROW_PCM:
        raise ReferenceMelError(
            "bad_dtype", f"reference_audio of Arrow type {value.type} is not PCM; send float32, float64, int16 "
            "or int32 samples, interleaved when multichannel")
    if value.null_count:
        raise ReferenceMelError(
            "null_samples", f"reference_audio has {value.null_count} null samples; send a dense array")
    return value.to_numpy(zero_copy_only=True)


def one_string(value, what: str) -> str:
    """The one string of a `voice` or `text` event."""
    code = "bad_voice" if what == "voice" else "bad_text"
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array) or not (pa.types.is_string(value.type) or pa.types.is_large_string(value.type)):
        raise ReferenceMelError(
            code, f"a {what} event must be an Arrow string array with one string, got {getattr(value, 'type', value)}")
    if len(value) != 1 or value.null_count:
        raise ReferenceMelError(code, f"a {what} event must hold exactly one non-null string, got {len(value)} values")
    return value[0].as_py()


def mel_metadata(passthrough: dict, recipe: dict, *, reference_id: str, shape, dtype: str, source: str, about=(),
                 codes=None,
                 codes_status: str | None = None, write_back: str | None = None, warnings=(),
                 elapsed_ms: float) -> dict:
    """A `mel` event's metadata (MEL_METADATA): the input's keys, then the recipe's (preset, layout,
    sample_rate, n_fft, hop_length, fingerprint, n_mels), the voice's (`about`: voice, ref_text, ...) and
    what this answer was. Every value is a type dora carries (int, float, str, lists of them)."""
    metadata = dict(passthrough, reference_id=reference_id)
    metadata.update(recipe, shape=list(shape), dtype=dtype, source=source)
    metadata.update(about)
    if write_back:
        metadata["write_back"] = write_back
    if codes is not None:
        metadata["codes"] = codes.tolist()
    if codes_status:
        metadata["codes_status"] = codes_status
    if warnings:
        metadata["warnings"] = list(warnings)
    metadata["elapsed_ms"] = float(elapsed_ms)
    return metadata


def error_value(code: str, message: str, voice: str | None, preset: str | None = None) -> pa.Array:
    """An `error` event's value: one JSON string {"error", "message", "voice"[, "preset"]}."""
    body = {"error": code, "message": message, "voice": voice}
    if preset is not None:
        body["preset"] = preset
    return pa.array([json.dumps(body)])


def log_value(level: str, message: str, node: str) -> pa.Array:
    """A line for MoFA's system log (dora-common's send_log): {"level", "message", "timestamp", "node"}."""
    return pa.array([json.dumps({"level": level, "message": message, "timestamp": time.time(), "node": node})])
