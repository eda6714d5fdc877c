"""The node's configuration: every environment variable it reads, parsed once, typed.

README's table and dora-node.yml list the same variables; tests/test_manifest.py checks all three agree.
The `reference-mel` tool reads the same variables, its command-line options overriding them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ReferenceMelError
from .features.recipe import PRESET_NAMES, V2_DEFAULT_BINS, Preset, get_preset
from .limits import DEVICES, DTYPES

DEFAULT_MODEL_DIR = "~/.dora/models/primespeech"
# Where Moxin-Voice keeps the clips its VOICE:CUSTOM and VOICE:TRAINED texts name: recorded voices in
# custom_voices/<id>/ref.wav, trained voices' references in trained_models/<id>/ (docs/primespeech.md).
MOXIN_VOICE_FOLDERS = ("~/.dora/primespeech/custom_voices", "~/.dora/primespeech/trained_models")

# name -> (type, default, meaning). The one list of variables; `from_env` reads exactly these.
ENV_VARS: dict[str, tuple[str, str, str]] = {
    "PRIMESPEECH_MODEL_DIR": ("string", DEFAULT_MODEL_DIR, "models root of primespeech; empty or blank: the default"),
    "CODES_DIR": ("string", "$PRIMESPEECH_MODEL_DIR/gpt-sovits-mlx/codes",
                  "folder of <voice>_codes.bin and the precomputed <voice>_mel*.bin files; empty or blank: the default"),
    "VOICES_CONFIG": ("string", "$PRIMESPEECH_MODEL_DIR/voices.json",
                      "the primespeech voice library; empty or blank: the default"),
    "REF_AUDIO_ROOTS": ("string", ":".join(("$PRIMESPEECH_MODEL_DIR", *MOXIN_VOICE_FOLDERS)),
                        "folders (separated by ':') a VOICE:CUSTOM or VOICE:TRAINED path from a text event may lead "
                        "into (the models root, models_base_path and the codes folder always may); paths in "
                        "voices.json are read wherever they lead; blank entries are skipped, and none left means "
                        "the default"),
    "MEL_PRESET": ("string", "v2", "comma-separated presets to emit per input: v2, v3, v4, sv (v2Pro: v2,sv)"),
    "MEL_BINS": ("int", str(V2_DEFAULT_BINS), "v2 only: linear bins kept (704 for v2+ models, 1025 for v1)"),
    "MEL_RESAMPLER": ("string", "torchaudio", "torchaudio (GPT-SoVITS main) or soxr_hq (early-2025 releases' v2 "
                      "refer; v3, v4, sv stay torchaudio)"),
    "MEL_DEVICE": ("string", "auto", "auto (GPU when MLX has one), gpu or cpu"),
    "MEL_DTYPE": ("string", "float32", "element type of `mel` data: float32, or float16 (the float32 result rounded "
                  "once; half the bytes)"),
    "MEL_CACHE_MB": ("float", "256", "memory cache bound in MB; 0 turns the cache off"),
    "MEL_WRITE_BACK": ("bool", "true",
                       "true/1: write computed spectrograms of named voices to CODES_DIR; false/0: never write"),
    "HUBERT_WEIGHTS": ("string", "$PRIMESPEECH_MODEL_DIR/gpt-sovits-mlx/hubert.safetensors",
                       "chinese-hubert-base in the MLX line's safetensors (OminiX-MLX's scripts/setup_models.py writes "
                       "it): with SOVITS_WEIGHTS, the node computes semantic codes; empty or blank: the default"),
    "SOVITS_WEIGHTS": ("string", "$PRIMESPEECH_MODEL_DIR/gpt-sovits-mlx/doubao_mixed_sovits_new.safetensors",
                       "the SoVITS model whose ssl_proj and codebook give the codes (the file setup_models.py writes); "
                       "empty or blank: the default"),
    "MEL_CODES": ("string", "auto", "auto: compute semantic codes when both weights files exist; off: only read codes "
                  "files"),
    "MAX_REF_SECONDS": ("float", "60", "longest reference accepted, in seconds (upstream wants 3 to 10)"),
    "VOICE_CHARACTER": ("string", "", "a voice (voices.json name) whose mel is sent once at start, before any "
                        "event (the MLX TTS node's variable)"),
    "VOICE_NAME": ("string", "", "the same, by the Python TTS node's variable (display names such as \"Luo Xiang\" "
                   "work); VOICE_CHARACTER wins when both are set"),
    "LOG_LEVEL": ("string", "INFO", "logging level: DEBUG, INFO, WARNING, ERROR"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_CACHE_MB = 1024 * 1024  # 1 TiB: beyond any machine's memory, and still a whole number of bytes
MAX_MAX_REF_SECONDS = 3600.0  # an hour: upstream wants 3 to 10 s; longer bounds only waste memory per clip


@dataclasses.dataclass(frozen=True)
class Config:
    codes_dir: Path
    voices_config: Path
    presets: tuple[Preset, ...]
    model_dir: Path
    ref_audio_roots: tuple[Path, ...]
    startup_voice: str | None
    device: str  # MEL_DEVICE as given: features.backend.select decides the device from it
    mel_dtype: str
    cache_mb: float
    write_back: bool
    max_ref_seconds: float
    log_level: str
    hubert_weights: Path | None = None  # None: MEL_CODES=off
    sovits_weights: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env

        def get(name: str) -> str:  # blank (empty or spaces only) is the default, as if unset
            value = env.get(name, "").strip()
            return value if value else ENV_VARS[name][1]

        model_dir = _path(get("PRIMESPEECH_MODEL_DIR"))
        codes_dir = _path(env.get("CODES_DIR", "").strip() or str(model_dir / "gpt-sovits-mlx" / "codes"))
        voices = _path(env.get("VOICES_CONFIG", "").strip() or str(model_dir / "voices.json"))
        resampler = get("MEL_RESAMPLER")
        bins = _parse_int("MEL_BINS", get("MEL_BINS"))
        names = [p.strip() for p in get("MEL_PRESET").split(",") if p.strip()]
        if not names or len(set(names)) != len(names):
            raise ReferenceMelError(
                "bad_config", f"MEL_PRESET={get('MEL_PRESET')!r} must list distinct presets of "
                f"{', '.join(PRESET_NAMES)}, e.g. v2 or v2,v4")
        presets = tuple(get_preset(n, resampler=resampler, v2_bins=bins) for n in names)
        device = get("MEL_DEVICE").lower()
        if device not in DEVICES:
            raise ReferenceMelError("bad_config", f"MEL_DEVICE={device!r} must be auto, gpu or cpu")
        mel_dtype = get("MEL_DTYPE").lower()
        if mel_dtype not in DTYPES:
            raise ReferenceMelError("bad_config", f"MEL_DTYPE={get('MEL_DTYPE')!r} must be one of {', '.join(DTYPES)}")
        cache_mb = _parse_float("MEL_CACHE_MB", get("MEL_CACHE_MB"), minimum=0, maximum=MAX_CACHE_MB)
        max_seconds = _parse_float("MAX_REF_SECONDS", get("MAX_REF_SECONDS"), minimum=0.1, maximum=MAX_MAX_REF_SECONDS)
        write_back = get("MEL_WRITE_BACK").lower()
        if write_back not in ("0", "1", "true", "false", "yes", "no"):
            raise ReferenceMelError("bad_config", f"MEL_WRITE_BACK={write_back!r} must be 1 or 0")
        log_level = get("LOG_LEVEL").upper()
        if log_level not in LOG_LEVELS:
            raise ReferenceMelError("bad_config", f"LOG_LEVEL={get('LOG_LEVEL')!r} must be one of {', '.join(LOG_LEVELS)}")
        roots = [p.strip() for p in env.get("REF_AUDIO_ROOTS", "").split(os.pathsep)]
        ref_audio_roots = tuple(_path(p) for p in roots if p) or (model_dir, *map(_path, MOXIN_VOICE_FOLDERS))
        codes = get("MEL_CODES").lower()
        if codes not in ("auto", "off"):
            raise ReferenceMelError("bad_config", f"MEL_CODES={get('MEL_CODES')!r} must be auto or off")
        weights = model_dir / "gpt-sovits-mlx"
        hubert = _path(env.get("HUBERT_WEIGHTS", "").strip() or str(weights / "hubert.safetensors"))
        sovits = _path(env.get("SOVITS_WEIGHTS", "").strip() or str(weights / "doubao_mixed_sovits_new.safetensors"))
        startup = (env.get("VOICE_CHARACTER") or "").strip() or (env.get("VOICE_NAME") or "").strip() or None
        return cls(codes_dir=codes_dir, voices_config=voices, presets=presets, model_dir=model_dir,
                   ref_audio_roots=ref_audio_roots, startup_voice=startup, device=device, mel_dtype=mel_dtype,
                   cache_mb=cache_mb, write_back=write_back in ("1", "true", "yes"),
                   max_ref_seconds=max_seconds, log_level=log_level,
                   hubert_weights=hubert if codes == "auto" else None, sovits_weights=sovits if codes == "auto" else None)


def _path(text: str) -> Path:
    """A folder or file variable: `~` and `$VAR` expanded (MoFA's dataflows write $HOME/.dora/...)."""
    return Path(os.path.expanduser(os.path.expandvars(text)))


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ReferenceMelError("bad_config", f"{name}={text!r} must be an integer") from None


def _parse_float(name: str, text: str, *, minimum: float, maximum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:
        raise ReferenceMelError("bad_config", f"{name}={text[:60]!r} must be a number from {minimum:g} to {maximum:g}")
    return value
