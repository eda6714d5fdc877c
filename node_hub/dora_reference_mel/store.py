"""Storage: voices.json, semantic codes, precomputed spectrograms and their sidecars.

Layout (gpt-sovits-recipe.md, section 7), in the codes directory:
  <voice>_codes.bin | <voice>_codes.npy   semantic codes, int32 LE (npy: dtype honoured)
  <voice>_mel.bin, <voice>_mel.json       v2 spectrogram, float32 LE C-order [n_bins, n_frames] + sidecar
  <voice>_mel_v3.bin / _mel_v4.bin (.json) the v3 / v4 prompt mels
Every write is atomic (temporary file in the same folder, fsync, rename): a reader sees the old
file or the new one, never half of one. A sidecar records how the array was made and a CRC of its
bytes, so a .bin and a sidecar from two different writers never pass as one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import unicodedata
import zlib
from pathlib import Path

import numpy as np

from .errors import ReferenceMelError
from .recipe import V2_DEFAULT_BINS, Preset

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
MAX_VOICE_NAME = 200
CODE_RANGE = (0, 1023)  # SoVITS quantizer codebook (recipe section 3)


class CorruptFile(Exception):
    """A stored file that must not be served; the message says why. Callers recompute and replace."""


def mel_file_stem(voice: str, preset: Preset) -> str:
    return f"{voice}_mel" if preset.name == "v2" else f"{voice}_mel_{preset.name}"


def mel_path_key(preset: Preset) -> str:
    """The voices.json key naming a voice's file for this preset (`mel_path` for v2)."""
    return "mel_path" if preset.name == "v2" else f"mel_{preset.name}_path"


def samples_digest(samples: np.ndarray, sample_rate: int) -> str:
    """SHA-256 of float32 [n, channels] PCM with its rate and channel count: the source identity."""
    digest = hashlib.sha256(f"{int(sample_rate)}:{samples.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(samples, dtype=np.float32).data)
    return digest.hexdigest()


def check_voice_name(name) -> str:
    """A voice name safe to use as a file-name prefix in the codes directory, or `bad_voice`."""
    if not isinstance(name, str):
        raise ReferenceMelError("bad_voice", f"voice={name!r} must be a string (the voice's name in voices.json)")
    shown = repr(name[:60] + ("..." if len(name) > 60 else ""))
    if not name.strip():
        raise ReferenceMelError("bad_voice", "voice='' is empty; send a voice name from voices.json")
    if len(name) > MAX_VOICE_NAME:
        raise ReferenceMelError(
            "bad_voice", f"voice={shown} is {len(name)} characters; names are at most {MAX_VOICE_NAME}")
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise ReferenceMelError("bad_voice", f"voice={shown} contains control characters; send a plain name")
    if "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ReferenceMelError(
            "bad_voice", f"voice={shown} is not a plain name (path separators, a leading dot or "
            "surrounding spaces); send the voice's name as voices.json has it")
    return name


@dataclasses.dataclass(frozen=True)
class Voice:
    """A voice resolved from voices.json (or known only by its files in the codes directory)."""

    name: str  # the key in voices.json, or the name as sent
    ref_audio: Path | None = None
    codes_path: Path | None = None
    mel_paths: tuple[tuple[str, Path], ...] = ()  # (voices.json key, path)
    in_library: bool = False

    def mel_path(self, preset: Preset) -> Path | None:
        return dict(self.mel_paths).get(mel_path_key(preset))


_UNLOADED = ("unloaded",)  # matches no real stamp, so the next access reads the file


class VoiceLibrary:
    """voices.json in primespeech's schema; re-read when the file changes on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: tuple | None = _UNLOADED  # (mtime, size, inode) of what is loaded; None: no file
        self._data: dict | None = None
        self._error: ReferenceMelError | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp, self._data, self._error = stamp, None, None
        if stamp is None:
            return
        try:
            self._data = parse_voices_json(self.path.read_bytes(), self.path)
        except ReferenceMelError as err:
            self._error = err
            log.warning("%s", err.message)

    def data(self) -> dict | None:
        """The parsed file; None when it does not exist; raises `bad_voices_config` when unreadable."""
        with self._lock:
            self._load()
            if self._error is not None:
                raise self._error
            return self._data

    def base_path(self, data: dict) -> Path:
        base = os.path.expanduser(str(data.get("models_base_path") or self.path.parent))
        return Path(base) if os.path.isabs(base) else self.path.parent / base

    def resolve(self, name: str) -> Voice | None:
        """The voice whose key or alias is `name` (case-insensitive), or None."""
        data = self.data()
        if data is None:
            return None
        wanted = name.casefold()
        for key, entry in data["voices"].items():
            aliases = entry.get("aliases") if isinstance(entry.get("aliases"), list) else []
            if key.casefold() == wanted or any(isinstance(a, str) and a.casefold() == wanted for a in aliases):
                return self._voice(key, entry, self.base_path(data))
        return None

    def voices(self) -> list[Voice]:
        data = self.data() or {"voices": {}}
        return [self._voice(k, e, self.base_path(data)) for k, e in data["voices"].items()]

    @staticmethod
    def _voice(key: str, entry: dict, base: Path) -> Voice:
        def path(field: str) -> Path | None:
            value = entry.get(field)
            if not isinstance(value, str) or not value:
                return None
            value = os.path.expanduser(value)
            return Path(value) if os.path.isabs(value) else base / value

        mel_keys = [k for k in entry if k.startswith("mel_") and k.endswith("path")]
        return Voice(name=key, ref_audio=path("ref_audio"), codes_path=path("codes_path"),
                     mel_paths=tuple((k, p) for k in mel_keys if (p := path(k)) is not None), in_library=True)

    def set_voice_fields(self, updates: dict[str, dict[str, str]]) -> None:
        """Set fields of voices ({voice key: {field: value}}) and rewrite voices.json atomically.

        Every other key, and the order of keys, is kept as it was.
        """
        with self._lock:
            raw = json.loads(self.path.read_bytes())
            for key, fields in updates.items():
                raw["voices"][key].update(fields)
            atomic_write(self.path, (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode())
            self._stamp = _UNLOADED


def parse_voices_json(blob: bytes, path: Path) -> dict:
    try:
        data = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReferenceMelError("bad_voices_config", f"{path} is not valid JSON ({err}); fix or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("voices"), dict):
        raise ReferenceMelError(
            "bad_voices_config", f'{path} must be an object with a "voices" object (primespeech schema)')
    bad = [k for k, v in data["voices"].items() if not isinstance(v, dict)]
    if bad:
        raise ReferenceMelError("bad_voices_config", f"{path}: voices {bad[:5]} must be objects")
    base = data.get("models_base_path")
    if base is not None and not isinstance(base, str):
        raise ReferenceMelError("bad_voices_config", f"{path}: models_base_path={base!r} must be a string")
    return data


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink itself, never writes through it
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclasses.dataclass(frozen=True)
class StoredMel:
    data: np.ndarray  # float32 [n_bins, n_frames], read-only
    sidecar: dict | None  # None for a legacy .bin
    path: Path


@dataclasses.dataclass(frozen=True)
class AudioStamp:
    """What `stat` says of a reference audio file; equal stamps mean an unchanged file."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path | None) -> AudioStamp | None:
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            return None
        return cls(stat.st_size, stat.st_mtime_ns) if stat else None


class ReferenceStore:
    """The codes directory and the voice library, with the path rules that keep I/O inside it."""

    def __init__(self, codes_dir: Path, library: VoiceLibrary):
        self.codes_dir = Path(codes_dir)
        self.library = library

    # -- voices ---------------------------------------------------------------------------------

    def voice(self, name: str) -> Voice:
        """The voice called `name`: from voices.json when listed there, else by name alone."""
        name = check_voice_name(name)
        voice = self.library.resolve(name)
        return voice if voice is not None else Voice(name=name)

    def _inside(self, path: Path) -> Path:
        """`path` (a name-derived file in the codes directory) unless a symlink leads outside it."""
        real = os.path.realpath(path)
        if os.path.commonpath([real, os.path.realpath(self.codes_dir)]) != os.path.realpath(self.codes_dir):
            raise CorruptFile(f"{path} leads outside the codes directory (symlink to {real}); not read")
        return path

    def mel_file(self, voice: Voice, preset: Preset) -> Path:
        return voice.mel_path(preset) or self.codes_dir / f"{mel_file_stem(voice.name, preset)}.bin"

    # -- codes ----------------------------------------------------------------------------------

    def load_codes(self, voice: Voice) -> np.ndarray | None:
        """The voice's semantic codes as int64 [N], None when it has none; `bad_codes` when corrupt."""
        candidates = [voice.codes_path] if voice.codes_path else [
            self.codes_dir / f"{voice.name}_codes.bin", self.codes_dir / f"{voice.name}_codes.npy"]
        for path in candidates:
            if not path.is_file():
                continue
            try:
                if voice.codes_path is None:
                    self._inside(path)
                codes = read_codes(path)
            except (CorruptFile, OSError, ValueError) as err:
                raise ReferenceMelError(
                    "bad_codes", f"codes file {path} of voice {voice.name!r} is unusable ({err}); "
                    "re-extract the codes for this voice", voice=voice.name) from None
            return codes
        return None

    # -- spectrograms ---------------------------------------------------------------------------

    def load_mel(self, voice: Voice, preset: Preset) -> StoredMel | None:
        """The stored spectrogram for (voice, preset), None if there is none; CorruptFile if bad."""
        path = self.mel_file(voice, preset)
        if voice.mel_path(preset) is None:
            if not path.exists() and not path.is_symlink():
                return None
            self._inside(path)
        blob = _read_or_none(path)
        if blob is None:
            return None
        sidecar = read_sidecar(path.with_suffix(".json"))
        if sidecar is None:
            return StoredMel(_legacy_array(blob, path, preset), None, path)
        shape = sidecar.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n > 0 for n in shape)):
            raise CorruptFile(f"{path.with_suffix('.json')} has no valid shape")
        if len(blob) != shape[0] * shape[1] * 4:
            raise CorruptFile(f"{path} holds {len(blob)} bytes, its sidecar says shape {shape} ({shape[0] * shape[1] * 4})")
        if zlib.crc32(blob) != sidecar.get("data_crc32"):
            raise CorruptFile(f"{path} does not match the CRC in its sidecar (half-replaced or damaged)")
        data = np.frombuffer(blob, dtype="<f4").reshape(shape)
        if not np.isfinite(data).all():
            raise CorruptFile(f"{path} contains NaN or Inf")
        return StoredMel(data, sidecar, path)

    def save_mel(self, voice: Voice, preset: Preset, data: np.ndarray, *, source_sha256: str,
                 source_sample_rate: int, audio: AudioStamp | None = None) -> Path:
        """Write [n_bins, n_frames] float32 and its sidecar atomically; returns the .bin path."""
        path = self.mel_file(voice, preset)
        blob = np.ascontiguousarray(data, dtype="<f4").tobytes()
        sidecar = {
            "format": SIDECAR_FORMAT, "voice": voice.name, "preset": preset.name, "shape": list(data.shape),
            "dtype": "float32", "layout": "C-order [n_bins, n_frames], little-endian",
            "fingerprint": preset.fingerprint, "recipe": preset.recipe(),
            "source_sha256": source_sha256, "source_sample_rate": int(source_sample_rate),
            "source_audio": dataclasses.asdict(audio) if audio else None, "data_crc32": zlib.crc32(blob),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, blob)
        atomic_write(path.with_suffix(".json"), (json.dumps(sidecar, indent=1) + "\n").encode())
        return path


def staleness(stored: StoredMel | None, preset: Preset, digest: str) -> str | None:
    """Why `stored` must not be served for audio with SHA-256 `digest` (None: it is up to date)."""
    if stored is None:
        return "missing"
    if stored.sidecar is None:
        return "no sidecar (legacy file)"
    if stored.sidecar.get("fingerprint") != preset.fingerprint:
        return f"made by another recipe (fingerprint {stored.sidecar.get('fingerprint')}, want {preset.fingerprint})"
    if stored.sidecar.get("source_sha256") != digest:
        return "made from other audio (the reference audio changed)"
    return None


def _read_or_none(path: Path) -> bytes | None:
    """The file's bytes; None when it does not exist; CorruptFile when it exists but cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CorruptFile(f"{path} cannot be read ({err})") from None


def read_sidecar(path: Path) -> dict | None:
    blob = _read_or_none(path)
    if blob is None:
        return None
    try:
        sidecar = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptFile(f"{path} is not valid JSON") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise CorruptFile(f"{path} is not a sidecar of format {SIDECAR_FORMAT}")
    return sidecar


def _legacy_array(blob: bytes, path: Path, preset: Preset) -> np.ndarray:
    """A .bin without sidecar (the Rust port's plan): [704, n_frames] float32, v2 only."""
    row_bytes = V2_DEFAULT_BINS * 4
    if preset.name != "v2" or preset.n_bins != V2_DEFAULT_BINS:
        raise CorruptFile(f"{path} has no sidecar; only 704-bin v2 files may lack one")
    if not blob or len(blob) % row_bytes:
        raise CorruptFile(f"{path} has no sidecar and {len(blob)} bytes, not a multiple of 704 * 4")
    data = np.frombuffer(blob, dtype="<f4").reshape(V2_DEFAULT_BINS, -1)
    if not np.isfinite(data).all():
        raise CorruptFile(f"{path} contains NaN or Inf")
    return data


def read_codes(path: Path) -> np.ndarray:
    """Codes as int64 [N] from a headerless int32 LE .bin or an integer .npy (any int dtype)."""
    if path.suffix == ".npy":
        codes = np.load(path, allow_pickle=False)
        if codes.dtype.kind not in "iu":
            raise ValueError(f"dtype {codes.dtype} is not an integer type")
        codes = codes.reshape(-1)
    else:
        blob = path.read_bytes()
        if len(blob) % 4:
            raise ValueError(f"{len(blob)} bytes is not a whole number of int32 codes (truncated?)")
        codes = np.frombuffer(blob, dtype="<i4")
    if codes.size == 0:
        raise ValueError("it holds no codes")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < CODE_RANGE[0] or hi > CODE_RANGE[1]:
        raise ValueError(f"values {lo}..{hi} are outside the codebook range {CODE_RANGE[0]}..{CODE_RANGE[1]}")
    return codes.astype(np.int64)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """A reference audio file as float32 [n, channels] and its rate; `bad_ref_audio` when unusable."""
    import soundfile

    if not Path(path).is_file():
        raise ReferenceMelError("bad_ref_audio", f"ref_audio {path} does not exist; fix the path in voices.json")
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as err:  # soundfile raises LibsndfileError(RuntimeError)
        raise ReferenceMelError(
            "bad_ref_audio", f"ref_audio {path} is not readable audio ({err}); use WAV, FLAC or OGG") from None
    return samples, int(sample_rate)
