"""The node's output contract, and the helper a GPT-SoVITS node downstream uses to read it.

Importable without MLX (only numpy and pyarrow). The contract is written once, here; README's
"Output contract" section is checked against these tables by tests/test_contract.py.

    from dora_reference_mel.contract import decode_mel_event
    ref = decode_mel_event(event)          # event["id"] == "mel"
    refer = ref.spectrogram                 # float32 [1, n_bins, n_frames], zero-copy from Arrow
    prompt = ref.codes                      # int64 [1, 1, N], or None when the voice has no codes
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa

MEL_OUTPUT = "mel"
ERROR_OUTPUT = "error"
INPUTS = {
    "reference_audio": "PCM samples: Arrow float32, float64, int16 or int32, interleaved when multichannel",
    "voice": "Arrow string array with one voice name (name or alias in voices.json)",
}
INPUT_METADATA = {
    "sample_rate": ("int", "reference_audio: samples per second (required)"),
    "channels": ("int", "reference_audio: interleaved channels (default 1)"),
    "voice": ("str", "reference_audio: the voice the samples belong to (optional; enables the store)"),
    "request_id": ("str", "any input: echoed on the answer; generated when absent"),
}
# key -> (type, required, meaning) of every `mel` event's metadata.
MEL_METADATA = {
    "shape": ("list[int]", True, "[1, n_bins, n_frames]"),
    "dtype": ("str", True, '"float32"'),
    "preset": ("str", True, '"v2" (linear spectrogram), "v3" or "v4" (prompt log-mel)'),
    "sample_rate": ("int", True, "rate of the recipe (32000 or 24000), not of the input"),
    "n_fft": ("int", True, "FFT size of the recipe"),
    "hop_length": ("int", True, "hop of the recipe: one frame per hop_length samples"),
    "fingerprint": ("str", True, "hash of every recipe parameter"),
    "source": ("str", True, '"cache", "precomputed" or "computed"'),
    "elapsed_ms": ("float", True, "time the node spent on this event"),
    "request_id": ("str", True, "the input's request_id, or one the node generated"),
    "n_mels": ("int", False, "v3/v4: mel bands (100)"),
    "voice": ("str", False, "the voice's name in voices.json, when the input named one"),
    "codes": ("list[int]", False, "the voice's semantic prompt codes, when it has them"),
    "codes_status": ("str", False, '"missing" when a named voice has no codes file'),
    "write_back": ("str", False, '"written", "failed" or "off": what happened to a computed spectrogram'),
    "warnings": ("list[str]", False, "legal but suspicious input (duration outside 3 to 10 s, peak > 2)"),
    "request_id_generated": ("bool", False, "true when the input had no request_id"),
}
ERROR_METADATA = {
    "error": ("str", True, "the stable error code"),
    "request_id": ("str", True, "the input's request_id, or one the node generated"),
    "preset": ("str", False, "the preset that failed, when only one did"),
}
SOURCES = ("cache", "precomputed", "computed")
# How many trailing frames upstream keeps of the v3/v4 prompt mel (recipe section 2).
PROMPT_MEL_FRAMES = {"v3": 468, "v4": 500}
_PY_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


class ContractError(ValueError):
    """An event that breaks the contract; the message names what and how."""


@dataclasses.dataclass(frozen=True)
class ReferenceMel:
    """A decoded `mel` event: the model-ready tensors and typed metadata."""

    spectrogram: np.ndarray  # float32 [1, n_bins, n_frames], read-only (zero-copy from Arrow)
    codes: np.ndarray | None  # int64 [1, 1, N]
    preset: str
    voice: str | None
    source: str
    request_id: str
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
        raise ContractError(f"shape={shape} must be [1, n_bins, n_frames] with positive sizes")
    if metadata["dtype"] != "float32" or metadata["source"] not in SOURCES:
        raise ContractError(f"dtype={metadata['dtype']!r} / source={metadata['source']!r} break the contract")
    value = event.get("value")
    if not isinstance(value, pa.Array) or value.type != pa.float32() or value.null_count:
        raise ContractError(f"mel value must be a dense Arrow float32 array, got {getattr(value, 'type', value)}")
    if len(value) != shape[0] * shape[1] * shape[2]:
        raise ContractError(f"mel holds {len(value)} values, shape {shape} needs {shape[0] * shape[1] * shape[2]}")
    spectrogram = value.to_numpy(zero_copy_only=True).reshape(shape)
    if not np.isfinite(spectrogram).all():
        raise ContractError("mel contains NaN or Inf")
    codes = metadata.get("codes")
    return ReferenceMel(
        spectrogram=spectrogram,
        codes=None if codes is None else np.asarray(codes, dtype=np.int64).reshape(1, 1, -1),
        preset=metadata["preset"], voice=metadata.get("voice"), source=metadata["source"],
        request_id=metadata["request_id"], warnings=tuple(metadata.get("warnings", ())), metadata=metadata,
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
