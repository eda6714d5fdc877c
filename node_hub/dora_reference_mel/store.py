"""Storage: voices.json, semantic codes, precomputed spectrograms and their sidecars.

Layout of the codes directory (docs/recipe.md, "Where files live"):
  <voice>_codes.bin | <voice>_codes.npy     semantic codes, int32 LE (npy: dtype honoured)
  <voice>_mel.bin,  <voice>_mel.json         v2 spectrogram, float32 LE C-order [n_bins, n_frames] + sidecar
  <voice>_mel_<preset>.bin / .json           the other presets (v3, v4; sv frames first: [n_frames, 80])

Every decision "may this stored file serve this request?" is `ReferenceStore.lookup`: the node, the
operator and every `reference-mel` command call it and nothing else. It returns a `Stored` value
(fresh, stale, corrupt or absent, with the reason). The rules it enforces:
- it opens only regular files (never a FIFO, a device or a directory), without blocking, after
  resolving links; each file is bounded in size by what its preset and MAX_REF_SECONDS allow, and
  read once per lookup. Where a file may lie depends on who named it: voices.json and the codes
  directory are the owner's configuration, so their paths are read wherever they lead (as the MLX
  primespeech node reads them); a path that arrives inside an event (VOICE:CUSTOM) is read only
  inside `event_roots()` (REF_AUDIO_ROOTS, the models root and the library's models_base_path);
- a pair is checked whole (sidecar, size, data digest, finite values) once per unchanged file: later
  lookups compare the stat stamps of both files (the data's from the descriptor they read) and read
  the data without checking it again; any change to either file, or a stamp too recent to tell, means
  a full check;
- it writes only `<voice>_mel*.bin|json` in the codes directory, by temporary file + rename (never
  through an existing path, link or not), sidecar first: a crash between the two leaves a sidecar
  whose content hash does not match the old `.bin` (refused, recomputed), never a lone `.bin`;
- a sidecar records the audio it was made from twice: the xxh3-128 digest of its samples and the
  file's stat stamp (size, mtime, ctime, inode, device). ctime cannot be set back by `touch` or by
  unpacking an archive, so a replaced clip with the same size and mtime still differs; when the stamp
  differs, the audio is read and its digest decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import stat
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xxhash

from .cache import ByteLRU
from .contract import (
    FRAMES_BINS,
    MAX_CHANNELS,
    MAX_PATH_BYTES,
    MAX_PROMPT_TEXT_BYTES,
    MAX_SAMPLE_RATE,
    MAX_VOICE_NAME_BYTES,
    MIN_SAMPLE_RATE,
)
from .errors import ReferenceMelError
from .recipe import PRESET_NAMES, V2_DEFAULT_BINS, Preset

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 2  # 2: xxh3-128 digests and full stat stamps (format 1 files are stale, then rewritten)
CODE_RANGE = (0, 1023)  # SoVITS quantizer codebook
MAX_SIDECAR_BYTES = 64 * 1024
MAX_VOICES_JSON_BYTES = 16 * 1024 * 1024
MAX_RESOLVED_PER_ENTRY = 4  # spellings of one voice remembered (key, display name, aliases)
TEMP_PREFIX = ".rmel-"  # every temporary file this package writes; older ones are crash leftovers
LEFTOVER_AGE_S = 600  # a writer finishes in well under this; older temporaries belong to no one

SETTLED_NS = 2_000_000_000  # coarser than any file system's timestamp tick (FAT: 2 s)
MAX_VERIFIED_FILES = 4096

FRESH, STALE, CORRUPT, ABSENT = "fresh", "stale", "corrupt", "absent"


class StoreFileError(Exception):
    """A file the store may not or cannot read; `missing` when it simply is not there."""

    def __init__(self, path, reason: str, *, missing: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.missing = path, reason, missing


# ---------------------------------------------------------------------------------------------
# Names and digests
# ---------------------------------------------------------------------------------------------


def check_voice_name(name, *, entry: str | None = None) -> str:
    """A name safe as a file-name prefix in the codes directory, or `bad_voice` (or, for a voices.json
    key or alias, `bad_voices_config` naming the entry). Lengths count UTF-8 bytes, as file systems do."""
    code, what = ("bad_voices_config", f"voices.json entry {entry!r}: name") if entry else ("bad_voice", "voice")
    if not isinstance(name, str):
        raise ReferenceMelError(code, f"{what}={name!r} must be a string (a voice name in voices.json)")
    shown = ascii(name[:60] + ("..." if len(name) > 60 else ""))
    if not name.strip():
        raise ReferenceMelError(code, f"{what}={shown} is empty; use a voice name from voices.json")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ReferenceMelError(code, f"{what}={shown} is not valid Unicode (a lone surrogate, as an "
                                "undecodable file name gives); rename it") from None
    if size > MAX_VOICE_NAME_BYTES:
        raise ReferenceMelError(
            code, f"{what}={shown} is {size} bytes in UTF-8; names are at most {MAX_VOICE_NAME_BYTES} bytes "
            "(file names hold 255); use a shorter name or an alias")
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise ReferenceMelError(code, f"{what}={shown} contains control characters; use a plain name")
    if "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ReferenceMelError(
            code, f"{what}={shown} is not a plain name (path separators, a leading dot or surrounding "
            "spaces); use the voice's name as voices.json has it")
    return name


def path_problem(text) -> str | None:
    """Why `text` cannot name a file (empty, not valid Unicode, a NUL, longer than PATH_MAX), or None.
    Checked before any path is resolved: resolution of a long path costs time quadratic in its length."""
    if not isinstance(text, str) or not text.strip():
        return "is empty"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long; a path holds at most {MAX_PATH_BYTES}"
    if "\0" in text:
        return "contains a NUL character"
    return None


def shown(text, limit: int = 160) -> str:
    """A value as it may appear in a message: printable ASCII, cut to about `limit` characters."""
    text = ascii(text)[1:-1] if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else f"{text[:limit - 40]}...{text[-30:]} ({len(text)} characters)"


def samples_digest(samples: np.ndarray, sample_rate: int) -> str:
    """xxh3-128 of float32 [n, channels] PCM with its rate and channel count: the source identity.

    A non-cryptographic hash is enough here: an accidental collision among 2^128 values does not
    happen, and a crafted one needs someone who can already send this node any audio it likes."""
    digest = xxhash.xxh3_128(f"{int(sample_rate)}:{samples.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(samples, dtype=np.float32).data)
    return digest.hexdigest()


def data_digest(blob) -> str:
    return xxhash.xxh3_128_hexdigest(blob)


# ---------------------------------------------------------------------------------------------
# Reading files: regular, confined, bounded, non-blocking
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileStamp:
    """What fstat says of a file; equal stamps mean the same, unchanged file."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    @classmethod
    def of(cls, path: Path | None) -> FileStamp | None:
        try:
            return cls.of_stat(os.stat(path)) if path is not None else None
        except (OSError, ValueError):
            return None

    @classmethod
    def from_json(cls, value) -> FileStamp | None:
        if value is None:
            return None
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(value, dict) or sorted(value) != sorted(fields) or not all(_is_int(v) for v in value.values()):
            raise ValueError(f"source_audio={str(value)[:80]} is not a stamp of {fields}")
        return cls(**value)


def settled(stamp: FileStamp) -> bool:
    """Whether a file's stamp is old enough to identify its content. A write within the file system's
    timestamp granularity of the last stat can leave size, mtime and ctime as they were (git's "racy
    timestamp" problem), so a stamp younger than SETTLED_NS is not trusted to say "unchanged"."""
    return time.time_ns() - max(stamp.mtime_ns, stamp.ctime_ns) > SETTLED_NS


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real_inside(real: str, roots: Iterable[Path]) -> bool:
    return any(os.path.commonpath([real, root]) == root for root in map(os.path.realpath, roots))


@contextlib.contextmanager
def open_regular(path: Path, roots: Sequence[Path] | None, max_bytes: int):
    """An open binary file object for `path` and its FileStamp, or StoreFileError.

    Links are resolved first and the target must lie inside one of `roots` (None: anywhere). Opened
    with O_NONBLOCK, so a FIFO cannot block; then fstat must say regular file and at most max_bytes."""
    path = Path(path)
    real = os.path.realpath(path)  # resolved once: the folder check and the open see the same target
    if roots is not None and not _real_inside(real, roots):
        raise StoreFileError(path, f"leads outside the allowed folders (to {real}); not read")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise StoreFileError(path, "does not exist", missing=True) from None
    except (OSError, ValueError) as err:
        raise StoreFileError(path, f"cannot be opened ({err})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreFileError(path, "is not a regular file (a FIFO, device or folder); not read")
        raise StoreFileError(path, f"holds {st.st_size} bytes, more than the {max_bytes} this file may hold")
    with os.fdopen(fd, "rb") as f:
        yield f, FileStamp.of_stat(st)


def read_regular(path: Path, roots: Sequence[Path] | None, max_bytes: int) -> tuple[bytes, FileStamp]:
    with open_regular(path, roots, max_bytes) as (f, stamp):
        try:  # the size fstat gave, plus one byte to see growth: asking for max_bytes would allocate it all
            blob = f.read(stamp.size + 1)
        except OSError as err:
            raise StoreFileError(path, f"cannot be read ({err})") from None
    if len(blob) != stamp.size:
        raise StoreFileError(path, f"changed while being read ({len(blob)} of {stamp.size} bytes)")
    return blob, stamp


def read_audio(path: Path, roots: Sequence[Path] | None, max_seconds: float, *,
               fix: str = "fix the path") -> tuple[np.ndarray, int, FileStamp]:
    """A reference audio file as float32 [n, channels], its rate and stamp; `bad_ref_audio` (or
    `too_long`) when it cannot serve, the message ending with `fix`. The header is checked before any
    sample is decoded: rate, channels and length bound what decoding may allocate."""
    import soundfile

    def refuse(why: str, code: str = "bad_ref_audio"):
        return ReferenceMelError(code, f"ref_audio {shown(str(path))} {why}; {fix}")

    try:
        with open_regular(path, roots, max_bytes=1 << 40) as (f, stamp):
            try:
                info = soundfile.info(f)
                f.seek(0)
            except (RuntimeError, OSError, ValueError, TypeError) as err:  # LibsndfileError is a RuntimeError
                raise refuse(f"is not readable audio ({str(err)[:200]}); use WAV, FLAC or OGG") from None
            if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
                raise refuse(f"declares {info.samplerate} Hz, outside {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz; "
                             "resample it to a standard rate such as 16000, 24000, 32000 or 48000 Hz", "bad_sample_rate")
            if info.frames <= 0 or not 0 < info.channels <= MAX_CHANNELS:
                raise refuse(f"declares {info.frames} frames of {info.channels} channels (at most {MAX_CHANNELS}); "
                             "use 3 to 10 s of mono or stereo speech")
            if info.frames > max_seconds * info.samplerate:
                raise refuse(f"is {info.frames / info.samplerate:.1f} s, over MAX_REF_SECONDS={max_seconds:g} "
                             "(use 3 to 10 s of speech, or raise MAX_REF_SECONDS)", "too_long")
            try:
                samples, sample_rate = soundfile.read(f, dtype="float32", always_2d=True)
            except (RuntimeError, OSError, ValueError, TypeError, MemoryError) as err:
                raise refuse(f"is not readable audio ({str(err)[:200]}); use WAV, FLAC or OGG") from None
    except StoreFileError as err:
        raise refuse(err.reason) from None
    if samples.shape[0] == 0:
        raise refuse("holds no samples")
    return samples, int(sample_rate), stamp


# ---------------------------------------------------------------------------------------------
# voices.json
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Voice:
    """A voice resolved from voices.json (or known only by its files in the codes directory)."""

    name: str  # the key in voices.json, or the name as sent
    ref_audio: Path | None = None
    codes_path: Path | None = None
    mel_paths: tuple[tuple[str, Path], ...] = ()  # (voices.json key, path)
    in_library: bool = False
    info: tuple[tuple[str, object], ...] = ()  # ref_text, speed_factor, language keys: for the metadata

    def mel_path(self, preset: Preset) -> Path | None:
        return dict(self.mel_paths).get(mel_path_key(preset))


# Entry keys passed on in `mel` metadata when present, with the type they must have.
VOICE_INFO_KEYS = {"ref_text": str, "speed_factor": (int, float), "text_lang": str, "prompt_lang": str,
                   "language": str, "lang": str}
PATH_KEYS = ("ref_audio", "codes_path")


def mel_file_stem(voice: str, preset: Preset) -> str:
    return f"{voice}_mel" if preset.name == "v2" else f"{voice}_mel_{preset.name}"


def mel_path_key(preset: Preset) -> str:
    """The voices.json key naming a voice's file for this preset (`mel_path` for v2)."""
    return "mel_path" if preset.name == "v2" else f"mel_{preset.name}_path"


MAX_SPEED_FACTOR = 100.0  # far above any real speed_factor (primespeech's are 0.5 to 2); keeps it a float


def _check_entry(key, entry) -> None:
    """Raise `bad_voices_config` naming the entry and the field to repair when it cannot be used as a voice."""
    check_voice_name(key, entry=str(key))
    if not isinstance(entry, dict):
        raise ReferenceMelError("bad_voices_config", f"voices.json entry {key!r} must be an object")

    def refuse(field: str, why: str):
        return ReferenceMelError("bad_voices_config", f"voices.json entry {shown(key)}: {field} {why}; fix it in "
                                 "voices.json (VOICES_CONFIG)")

    for field, value in entry.items():
        if field in PATH_KEYS or field.startswith("mel_") and field.endswith("path"):
            problem = "must be a path string" if not isinstance(value, str) else path_problem(value)
            if problem and value != "":
                raise refuse(field, f"= {shown(value, 60)} {problem}")
        wanted = VOICE_INFO_KEYS.get(field)
        if wanted and (not isinstance(value, wanted) or isinstance(value, bool)):
            raise refuse(field, f"= {shown(value, 60)} must be {'text' if wanted is str else 'a number'}")
        if field == "speed_factor" and not 0 < value <= MAX_SPEED_FACTOR:  # int or float: compared exactly
            raise refuse(field, f"= {shown(value, 60)} must be a number above 0 and at most {MAX_SPEED_FACTOR:g}")
        if isinstance(value, str):
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise refuse(field, "is not valid Unicode (a lone surrogate)") from None
            if size > MAX_PROMPT_TEXT_BYTES:
                raise refuse(field, f"is {size} bytes long, over {MAX_PROMPT_TEXT_BYTES}")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list):
        raise refuse("aliases", "must be a list of names")
    for alias in aliases:
        check_voice_name(alias, entry=f"{key}' alias '{alias}" if isinstance(alias, str) else str(key))


def parse_voices_json(blob: bytes, path: Path) -> dict:
    """The parsed file: {"data": raw dict, "problems": {key: error}}; `bad_voices_config` when unusable."""
    try:
        data = json.loads(blob)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, 5000-digit ints, deep nesting
        raise ReferenceMelError("bad_voices_config", f"{path} is not usable JSON ({str(err)[:120]}); fix or "
                                "remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("voices"), dict):
        raise ReferenceMelError(
            "bad_voices_config", f'{path} must be an object with a "voices" object (primespeech schema)')
    base = data.get("models_base_path")
    if base is not None and (not isinstance(base, str) or path_problem(base) and base != ""):
        why = "must be a string" if not isinstance(base, str) else path_problem(base)
        raise ReferenceMelError("bad_voices_config", f"{path}: models_base_path={shown(base, 60)} {why}; fix it")
    problems = {}
    for key, entry in data["voices"].items():
        try:
            _check_entry(key, entry)
        except ReferenceMelError as err:
            problems[key] = err
            log.warning("%s", err.message)
    return {"data": data, "problems": problems, "resolved": {}}  # resolved: lowercased name -> Voice


class VoiceLibrary:
    """voices.json as the MLX primespeech line reads it; re-read when the file changes on disk.

    Lookup: the name lowercased as a key, then lowercased with spaces removed (the Python node's
    display names: "Luo Xiang" is "luoxiang"), then among aliases, compared lowercased. Relative
    paths join `models_base_path`, which defaults to the models root (PRIMESPEECH_MODEL_DIR)."""

    def __init__(self, path: Path, model_dir: Path | None = None):
        self.path = Path(path)
        self.model_dir = Path(model_dir) if model_dir is not None else self.path.parent
        self._stamp: object = "unloaded"  # FileStamp of what is loaded; None: no file
        self._parsed: dict | None = None
        self._error: ReferenceMelError | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        stamp = FileStamp.of(self.path)
        if stamp == self._stamp and stamp is not None:
            return
        if stamp is None:
            self._stamp, self._parsed, self._error = None, None, None
            return
        try:
            blob, stamp = read_regular(self.path, None, MAX_VOICES_JSON_BYTES)
            self._parsed, self._error = parse_voices_json(blob, self.path), None
        except StoreFileError as err:
            self._parsed, self._error = None, ReferenceMelError(
                "bad_voices_config", f"voices.json {err.path} {err.reason}; fix it or point VOICES_CONFIG elsewhere")
        except ReferenceMelError as err:
            self._parsed, self._error = None, err
        if self._error is not None:
            log.warning("%s", self._error.message)
        self._stamp = stamp  # the error stays until the file changes: every event is told, not just one

    def parsed(self) -> dict | None:
        """{"data", "problems"}; None when the file does not exist; raises `bad_voices_config` when unusable."""
        with self._lock:
            self._load()
            if self._error is not None:
                raise self._error
            return self._parsed

    def data(self) -> dict | None:
        parsed = self.parsed()
        return None if parsed is None else parsed["data"]

    def base_path(self, data: dict | None = None) -> Path:
        """`models_base_path` (`~` expanded; a relative value is taken from the working directory, as
        the MLX node does), or the models root when absent."""
        data = self.data() if data is None else data
        base = (data or {}).get("models_base_path")
        return Path(os.path.abspath(os.path.expanduser(base))) if base else self.model_dir

    def resolve(self, name: str) -> Voice | None:
        """The voice called `name` (key, display name or alias), or None; `ambiguous_voice` when two match."""
        parsed = self.parsed()
        if parsed is None:
            return None
        voices, lower = parsed["data"]["voices"], name.lower()
        found = parsed["resolved"].get(lower)  # this file's earlier answer to the same name
        if found is not None:
            return found
        how = "keys"
        for wanted in dict.fromkeys((lower, lower.replace(" ", ""))):
            keys = [k for k in voices if isinstance(k, str) and k.lower() == wanted]
            if keys:
                break
        else:
            how, keys = "aliases", [k for k, e in voices.items() if isinstance(e, dict) and isinstance(
                e.get("aliases"), list) and any(isinstance(a, str) and a.lower() == lower for a in e["aliases"])]
        if not keys:
            return None
        found = self._pick(keys, name, parsed, how)
        if len(parsed["resolved"]) < MAX_RESOLVED_PER_ENTRY * (len(voices) + 1):  # bounded: names come from events
            parsed["resolved"][lower] = found
        return found

    def _pick(self, keys: list[str], name: str, parsed: dict, how: str) -> Voice:
        if len(keys) > 1:
            raise ReferenceMelError(
                "ambiguous_voice", f"voice {ascii(name)} matches {len(keys)} voices of {self.path} by {how} "
                f"({', '.join(map(ascii, keys[:5]))}); make names and aliases unique")
        key = keys[0]
        if key in parsed["problems"]:
            raise parsed["problems"][key]
        return self._voice(key, parsed["data"]["voices"][key], self.base_path(parsed["data"]))

    def voices(self) -> list[Voice | ReferenceMelError]:
        """Every entry: a Voice, or the error that keeps it from being one."""
        parsed = self.parsed() or {"data": {"voices": {}}, "problems": {}}
        base = self.base_path(parsed["data"])
        return [parsed["problems"].get(k) or self._voice(k, e, base) for k, e in parsed["data"]["voices"].items()]

    @staticmethod
    def _voice(key: str, entry: dict, base: Path) -> Voice:
        def path(field: str) -> Path | None:
            value = entry.get(field)
            if not value:
                return None
            value = os.path.expanduser(value)
            return Path(value) if os.path.isabs(value) else base / value

        mel_keys = [k for k in entry if k.startswith("mel_") and k.endswith("path")]
        info = tuple((k, entry[k]) for k in VOICE_INFO_KEYS if k in entry)
        return Voice(name=key, ref_audio=path("ref_audio"), codes_path=path("codes_path"),
                     mel_paths=tuple((k, p) for k in mel_keys if (p := path(k)) is not None), in_library=True,
                     info=info)

    def set_voice_fields(self, updates: dict[str, dict[str, str]]) -> None:
        """Set fields of voices ({voice key: {field: value}}) in voices.json, under an exclusive lock on
        the file, so concurrent writers never lose each other's updates, and replace it atomically.
        Only those values change: every other byte (formatting, number spellings, key order) stays as
        the owner wrote it. Entries removed meanwhile are left out."""
        with self._lock, _locked(self.path) as blob:
            encoding = json.detect_encoding(blob)
            text = blob.decode(encoding)
            atomic_write(self.path, edit_json_fields(text, updates).encode(encoding))
            self._stamp = "unloaded"


_JSON_SPACE = " \t\n\r"


def _json_members(text: str, start: int) -> tuple[list[tuple[str, int, int, int]], int]:
    """The members of the JSON object whose `{` is at `start`, as (key, key start, value start, value end),
    and the index of its closing `}`. The text is JSON that json.loads accepts."""
    def skip(i: int) -> int:
        while text[i] in _JSON_SPACE:
            i += 1
        return i

    decoder, members, i = json.JSONDecoder(), [], skip(start + 1)
    if text[i] == "}":
        return members, i
    while True:
        key, after_key = json.decoder.scanstring(text, i + 1)
        value_start = skip(skip(after_key) + 1)  # past the colon
        _, value_end = decoder.raw_decode(text, value_start)
        members.append((key, i, value_start, value_end))
        i = skip(value_end)
        if text[i] == "}":
            return members, i
        i = skip(i + 1)  # past the comma


def edit_json_fields(text: str, updates: dict[str, dict[str, str]]) -> str:
    """voices.json text with `updates` ({voice key: {field: value}}) applied in place: an existing field's
    value is replaced, a new field follows the entry's last member with that member's indentation. The
    rest of the text is untouched. Raises ValueError if the result would not parse to the intended data."""
    def last(members, key):
        found = [m for m in members if m[0] == key]  # json.loads keeps the last of duplicate keys
        return found[-1] if found else None

    def encoded(value) -> str:
        try:
            return json.dumps(value, ensure_ascii=False)
        except UnicodeEncodeError:
            return json.dumps(value)

    top_start = len(text) - len(text.lstrip(_JSON_SPACE))
    voices = last(_json_members(text, top_start)[0], "voices")
    entries = _json_members(text, voices[2])[0] if voices and text[voices[2]] == "{" else []
    edits = []  # (start, end, replacement), applied from the end
    for key, fields in updates.items():
        entry = last(entries, key)
        if entry is None or text[entry[2]] != "{":
            continue
        members, close = _json_members(text, entry[2])
        added = []
        for field, value in fields.items():
            member = last(members, field)
            if member is None:
                added.append(f"{json.dumps(field)}: {encoded(value)}")
            else:
                edits.append((member[2], member[3], encoded(value)))
        if added and members:
            _, key_start, _, value_end = members[-1]
            separator = text[text.rindex(",", 0, key_start) + 1 if members[:-1] else entry[2] + 1:key_start]
            separator = separator or (" " if not members[:-1] else "")  # {"ref_audio": ...} on one line
            edits.append((value_end, value_end, "".join(f",{separator}{item}" for item in added)))
        elif added:
            edits.append((entry[2] + 1, close, ", ".join(added)))
    result = text
    for start, end, replacement in sorted(edits, reverse=True):
        result = result[:start] + replacement + result[end:]
    intended = json.loads(text)
    for key, fields in updates.items():
        if isinstance(intended.get("voices"), dict) and isinstance(intended["voices"].get(key), dict):
            intended["voices"][key].update(fields)
    if json.dumps(json.loads(result), sort_keys=True) != json.dumps(intended, sort_keys=True):  # NaN-safe
        raise ValueError("editing voices.json in place gave other data; nothing was written")
    return result


@contextlib.contextmanager
def _locked(path: Path):
    """The bytes of `path`, read while holding flock on it. A writer replaces the file by rename, so
    after the lock is granted the path must still name the locked file; otherwise lock the new one."""
    while True:
        with open_regular(path, None, MAX_VOICES_JSON_BYTES) as (f, stamp):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if FileStamp.of(path) != FileStamp.of_stat(os.fstat(f.fileno())):
                continue  # replaced while we waited: lock the file that is there now
            yield f.read()
            return


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one. The
    rename replaces whatever `path` named (a link, a FIFO): it never writes through it."""
    path = Path(path)
    tmp = path.parent / f"{TEMP_PREFIX}{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# The lookup
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """How a stored spectrogram was made, validated field by field."""

    shape: tuple[int, int]
    fingerprint: str
    source_digest: str
    source_sample_rate: int
    source_audio: FileStamp | None
    data_digest: str
    raw: dict

    @classmethod
    def parse(cls, blob: bytes, preset: Preset, max_frames: int) -> Sidecar:
        """Raise ValueError with the reason when the sidecar is not one this package wrote."""
        try:
            raw = json.loads(blob)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"not usable JSON ({str(err)[:80]})") from None
        if not isinstance(raw, dict) or raw.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"not a sidecar of format {SIDECAR_FORMAT}")
        shape = raw.get("shape")
        frames = preset.frames_in(shape) if isinstance(shape, list) and all(_is_int(n) for n in shape) else None
        if frames is None or not 0 < frames <= max_frames:
            frames_bins = preset.layout == FRAMES_BINS
            wanted = f"[1..{max_frames}, {preset.n_bins}]" if frames_bins else f"[{preset.n_bins}, 1..{max_frames}]"
            raise ValueError(f"shape={str(shape)[:60]} is not {wanted}")
        texts = {k: raw.get(k) for k in ("fingerprint", "source_digest", "data_digest")}
        if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in texts.values()):
            raise ValueError("fingerprint, source_digest and data_digest must be short strings")
        if not _is_int(raw.get("source_sample_rate")):
            raise ValueError("source_sample_rate must be an integer")
        return cls((shape[0], shape[1]), texts["fingerprint"], texts["source_digest"], raw["source_sample_rate"],
                   FileStamp.from_json(raw.get("source_audio")), texts["data_digest"], raw)


@dataclasses.dataclass(frozen=True)
class Stored:
    """What the store holds for (voice, preset), judged against the audio in hand."""

    state: str  # FRESH, STALE, CORRUPT or ABSENT
    reason: str  # why it is not fresh ("" when it is)
    path: Path | None
    data: np.ndarray | None = None  # float32 in the preset's layout, read-only: a whole file (fresh or stale)
    sidecar: Sidecar | None = None

    @property
    def fresh(self) -> bool:
        return self.state == FRESH

    def against(self, digest: str) -> Stored:
        """The same file judged against audio whose samples_digest is `digest` (no re-read)."""
        if self.data is None or self.sidecar is None:
            return self
        if self.sidecar.source_digest == digest:
            return dataclasses.replace(self, state=FRESH, reason="")
        return dataclasses.replace(self, state=STALE, reason="made from other audio (the reference audio changed)")


class ReferenceStore:
    """The codes directory and the voice library, with every rule about which files may be used."""

    def __init__(self, codes_dir: Path, library: VoiceLibrary, *, max_ref_seconds: float = 60.0,
                 extra_roots: Sequence[Path] = ()):
        self.codes_dir = Path(codes_dir)
        self.library = library
        self.max_ref_seconds = max_ref_seconds
        self.extra_roots = tuple(Path(p) for p in extra_roots)
        self._codes_memo: dict[Path, tuple[FileStamp, np.ndarray]] = {}
        # (path, preset) -> (stamp, sidecar stamp, sidecar) of each pair verified whole: see _reread
        self._verified = ByteLRU(MAX_VERIFIED_FILES)

    def event_roots(self) -> tuple[Path, ...]:
        """Folders a path that arrives inside an event (VOICE:CUSTOM) may lead into, after links are
        resolved: REF_AUDIO_ROOTS, the models root, the library's models_base_path and the codes
        directory. Paths of the owner's configuration (voices.json, the codes directory) are not confined."""
        try:
            base = (self.library.base_path(),)
        except ReferenceMelError:
            base = ()
        return tuple(dict.fromkeys((*self.extra_roots, self.library.model_dir, *base, self.codes_dir)))

    # -- voices ---------------------------------------------------------------------------------

    def voice(self, name: str) -> Voice:
        """The voice called `name`: from voices.json when listed there, else by name alone."""
        name = check_voice_name(name)
        voice = self.library.resolve(name)
        return voice if voice is not None else Voice(name=name)

    def read_audio(self, path: Path, roots: Sequence[Path] | None = None,
                   fix: str = "fix the path") -> tuple[np.ndarray, int, FileStamp]:
        """roots: None for the owner's paths (voices.json); event_roots() for a path from an event."""
        return read_audio(path, roots, self.max_ref_seconds, fix=fix)

    # -- codes ----------------------------------------------------------------------------------

    def load_codes(self, voice: Voice) -> np.ndarray | None:
        """The voice's semantic codes as read-only int64 [N], None when it has none; `bad_codes` when
        unusable. Parsed once per unchanged file."""
        candidates = [voice.codes_path] if voice.codes_path else [
            self.codes_dir / f"{voice.name}_codes.bin", self.codes_dir / f"{voice.name}_codes.npy"]
        max_bytes = int(self.max_ref_seconds * 50 + 1) * 8 + 4096  # 50 codes a second, int64, npy header
        for path in candidates:
            try:
                stamp = FileStamp.of(path)
                memo = self._codes_memo.get(path)
                if memo is not None and memo[0] == stamp:
                    return memo[1]
                blob, stamp = read_regular(path, None, max_bytes)
                codes = parse_codes(blob, path.suffix)
            except StoreFileError as err:
                if err.missing:
                    continue
                reason = err.reason
            except ValueError as err:
                reason = str(err)
            else:
                self._codes_memo[path] = (stamp, codes)
                return codes
            raise ReferenceMelError(
                "bad_codes", f"codes file {path} of voice {voice.name!r} is unusable ({reason}); "
                "re-extract the codes for this voice", voice=voice.name)
        return None

    # -- spectrograms ---------------------------------------------------------------------------

    def mel_file(self, voice: Voice, preset: Preset) -> Path:
        """Where this package writes (voice, preset): always the codes directory, named after the voice."""
        return self.codes_dir / f"{mel_file_stem(voice.name, preset)}.bin"

    def max_frames(self, preset: Preset) -> int:
        return preset.n_frames(int(self.max_ref_seconds * preset.sample_rate) + preset.sample_rate) + 1

    def lookup(self, voice: Voice, preset: Preset, *, digest: str | None = None,
               audio: FileStamp | None = None) -> Stored:
        """May a stored file serve (voice, preset)? The one place that decides it.

        digest: samples_digest of the audio in hand (a reference_audio event, or the voice's file once
        read); audio: the stamp of the voice's ref_audio file when it has not been read. With neither
        (no audio to compare with), a whole file of the right recipe is fresh.
        The voice's `mel_<preset>_path` is tried first, then the file named after the voice."""
        first = None
        for path in dict.fromkeys(p for p in (voice.mel_path(preset), self.mel_file(voice, preset)) if p):
            found = self._judge(path, preset, digest, audio)
            if found.fresh:
                return found
            if first is None or first.state == ABSENT:
                first = found
        return first

    def _judge(self, path: Path, preset: Preset, digest: str | None, audio: FileStamp | None) -> Stored:
        whole = self._reread(path, preset) or self._verify(path, preset, has_audio=digest is not None or audio is not None)
        if not whole.fresh or whole.sidecar is None:  # unusable, or a legacy file judged already
            return whole
        sidecar = whole.sidecar
        if sidecar.fingerprint != preset.fingerprint:
            return dataclasses.replace(whole, state=STALE, reason=f"made by another recipe (fingerprint "
                                       f"{sidecar.fingerprint}, want {preset.fingerprint})")
        if digest is not None:
            return whole.against(digest)
        if audio is not None and sidecar.source_audio != audio:
            return dataclasses.replace(whole, state=STALE, reason="the audio file changed since (stat stamp differs)")
        return whole

    def _verify(self, path: Path, preset: Preset, *, has_audio: bool) -> Stored:
        """Read the pair and check all of it: sidecar fields, size, data digest, finite values. An intact
        pair comes back FRESH (whatever recipe or audio it was made from) and is remembered by its stamps."""
        max_frames = self.max_frames(preset)
        try:
            blob, stamp = read_regular(path, None, preset.n_bins * max_frames * 4)
            try:
                side_blob, side_stamp = read_regular(path.with_suffix(".json"), None, MAX_SIDECAR_BYTES)
            except StoreFileError as err:
                if not err.missing:
                    raise
                return self._legacy(path, blob, preset, has_audio=has_audio)
        except StoreFileError as err:
            return Stored(ABSENT if err.missing else CORRUPT, err.reason if err.missing else str(err), path)
        try:
            sidecar = Sidecar.parse(side_blob, preset, max_frames)
        except ValueError as err:
            if b'"format": 1' in side_blob[:64] or b'"format":1' in side_blob[:64]:
                return Stored(STALE, "written by an older version (sidecar format 1)", path)
            return Stored(CORRUPT, f"{path.with_suffix('.json')}: {err}", path)
        if len(blob) != sidecar.shape[0] * sidecar.shape[1] * 4:
            return Stored(CORRUPT, f"{path} holds {len(blob)} bytes, its sidecar says shape {list(sidecar.shape)}", path)
        if data_digest(blob) != sidecar.data_digest:
            return Stored(CORRUPT, f"{path} does not match the digest in its sidecar (half-replaced or damaged)", path)
        data = np.frombuffer(blob, dtype="<f4").reshape(sidecar.shape)
        if not np.isfinite(data).all():
            return Stored(CORRUPT, f"{path} contains NaN or Inf", path)
        if settled(stamp) and settled(side_stamp):
            self._verified.put((path, preset), (stamp, side_stamp, sidecar), 1)
        return Stored(FRESH, "", path, data, sidecar)

    def _reread(self, path: Path, preset: Preset) -> Stored | None:
        """The data of a pair verified before, when both files are still the ones verified (same stat
        stamps; the data's checked again on the descriptor it is read through, opened regular-only and
        non-blocking like any read): read again, not checked again. None otherwise."""
        memo = self._verified.get((path, preset))
        if memo is None:
            return None
        stamp, side_stamp, sidecar = memo
        if FileStamp.of(path.with_suffix(".json")) != side_stamp or FileStamp.of(path) != stamp:
            return None  # replaced, relinked or written since: verify again
        try:
            blob, now = read_regular(path, None, stamp.size)
        except StoreFileError:
            return None
        if now != stamp:  # swapped between the stat and the open
            return None
        return Stored(FRESH, "", path, np.frombuffer(blob, dtype="<f4").reshape(sidecar.shape), sidecar)

    @staticmethod
    def _legacy(path: Path, blob: bytes, preset: Preset, *, has_audio: bool) -> Stored:
        """A .bin without sidecar (the layout the Rust port planned): [704, n_frames] float32, v2 only.
        Nothing says which audio it came from, so it serves only a voice that has no audio to compute from."""
        if preset.name != "v2" or preset.n_bins != V2_DEFAULT_BINS:
            return Stored(CORRUPT, f"{path} has no sidecar; only 704-bin v2 files may lack one", path)
        if not blob or len(blob) % (V2_DEFAULT_BINS * 4):
            return Stored(CORRUPT, f"{path} has no sidecar and {len(blob)} bytes, not a multiple of 704 * 4", path)
        data = np.frombuffer(blob, dtype="<f4").reshape(V2_DEFAULT_BINS, -1)
        if not np.isfinite(data).all():
            return Stored(CORRUPT, f"{path} contains NaN or Inf", path)
        if has_audio:
            return Stored(STALE, "no sidecar, so nothing says which audio it was made from", path, data)
        return Stored(FRESH, "", path, data)

    def save_mel(self, voice: Voice, preset: Preset, data: np.ndarray, *, source_digest: str,
                 source_sample_rate: int, audio: FileStamp | None = None) -> Path:
        """Write the feature matrix (float32, in the preset's layout) and its sidecar to the voice's file in
        the codes directory.

        Sidecar first, then the data, each by rename: a crash in between leaves a sidecar whose
        data_digest does not match the old .bin, so the pair is refused and recomputed."""
        path = self.mel_file(voice, preset)
        blob = np.ascontiguousarray(data, dtype="<f4").tobytes()
        sidecar = {
            "format": SIDECAR_FORMAT, "voice": voice.name, "preset": preset.name, "shape": list(data.shape),
            "dtype": "float32", "layout": f"C-order {preset.layout}, little-endian",
            "fingerprint": preset.fingerprint, "recipe": preset.recipe(),
            "source_digest": source_digest, "source_sample_rate": int(source_sample_rate),
            "source_audio": dataclasses.asdict(audio) if audio else None, "data_digest": data_digest(blob),
        }
        self.codes_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path.with_suffix(".json"), (json.dumps(sidecar, indent=1) + "\n").encode())
        atomic_write(path, blob)
        return path

    def stored_voice_names(self) -> set[str]:
        """Names of the voices that have a spectrogram sidecar in the codes directory (one scan)."""
        names = set()
        try:
            entries = list(os.scandir(self.codes_dir))
        except OSError:
            return names
        for entry in entries:
            stem = entry.name[:-len(".json")] if entry.name.endswith(".json") else ""
            for suffix in ("_mel", *(f"_mel_{name}" for name in PRESET_NAMES if name != "v2")):
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    names.add(stem[:-len(suffix)])
        return names

    def clean_leftovers(self, folder: Path | None = None) -> int:
        """Remove temporary files that crashed writers left in `folder` (default: the codes directory;
        precompute also sweeps voices.json's folder, the one other place it writes): only ours, only
        regular files, only ones older than any live write. Returns how many."""
        folder = self.codes_dir if folder is None else folder
        removed, now = 0, time.time()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return 0
        for entry in entries:
            if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(".tmp")):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > LEFTOVER_AGE_S:
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            log.info("removed %d temporary files left by interrupted writes in %s", removed, folder)
        return removed


def parse_codes(blob: bytes, suffix: str) -> np.ndarray:
    """Codes as read-only int64 [N] from a headerless int32 LE .bin or an integer .npy (any int dtype)."""
    if suffix == ".npy":
        import io

        try:
            codes = np.load(io.BytesIO(blob), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"not a readable .npy ({str(err)[:80]})") from None
        if codes.dtype.kind not in "iu":
            raise ValueError(f"dtype {codes.dtype} is not an integer type")
        codes = codes.reshape(-1)
    else:
        if len(blob) % 4:
            raise ValueError(f"{len(blob)} bytes is not a whole number of int32 codes (truncated?)")
        codes = np.frombuffer(blob, dtype="<i4")
    if codes.size == 0:
        raise ValueError("it holds no codes")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < CODE_RANGE[0] or hi > CODE_RANGE[1]:
        raise ValueError(f"values {lo}..{hi} are outside the codebook range {CODE_RANGE[0]}..{CODE_RANGE[1]}")
    codes = codes.astype(np.int64)
    codes.setflags(write=False)
    return codes


def read_codes(path: Path) -> np.ndarray:
    """Codes of one file, anywhere (tests and tools): see parse_codes."""
    try:
        blob, _ = read_regular(path, None, 1 << 24)
    except StoreFileError as err:
        raise ValueError(err.reason) from None
    return parse_codes(blob, Path(path).suffix)

