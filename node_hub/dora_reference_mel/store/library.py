"""voices.json, the primespeech voice library, as the MLX line reads it: entries checked field by field,
names resolved as primespeech resolves them, and mel paths recorded in place (every other byte kept)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
from pathlib import Path

from ..errors import ReferenceMelError
from ..limits import MAX_PROMPT_TEXT_BYTES
from .files import FileStamp, StoreFileError, atomic_write, open_regular, read_regular
from .names import check_voice_name, path_problem, shown

log = logging.getLogger(__name__)

MAX_VOICES_JSON_BYTES = 16 * 1024 * 1024
MAX_RESOLVED_PER_ENTRY = 4  # spellings of one voice remembered (key, display name, aliases)


@dataclasses.dataclass(frozen=True)
class Voice:
    """A voice resolved from voices.json (or known only by its files in the codes directory)."""

    name: str  # the key in voices.json, or the name as sent
    ref_audio: Path | None = None
    codes_path: Path | None = None
    mel_paths: tuple[tuple[str, Path], ...] = ()  # (voices.json key, path)
    in_library: bool = False
    info: tuple[tuple[str, object], ...] = ()  # ref_text, speed_factor, language keys: for the metadata

    def stored_path(self, kind) -> Path | None:
        """The file voices.json names for this kind of artifact (kinds.ArtifactKind), if any."""
        return dict(self.mel_paths).get(kind.voice_path_key())


# Entry keys passed on in `mel` metadata when present, with the type they must have.
VOICE_INFO_KEYS = {"ref_text": str, "speed_factor": (int, float), "text_lang": str, "prompt_lang": str,
                   "language": str, "lang": str}
PATH_KEYS = ("ref_audio", "codes_path")


def resolve_path(value: str, base: Path) -> Path:
    """A path of voices.json as the MLX node resolves it (config.rs::resolve_path), the one rule for the
    node and every command: `/` and `~` paths as they are (`~` expanded), any other joined to `base`."""
    expanded = os.path.expanduser(value)  # os.path's: Path.expanduser raises on ~nosuchuser
    return Path(expanded) if os.path.isabs(expanded) else base / expanded


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
    # The names' index, built once per file: a switch looks its name up, whatever the library's size.
    by_key, by_alias = {}, {}
    for key, entry in data["voices"].items():
        if isinstance(key, str):
            by_key.setdefault(key.lower(), []).append(key)
        aliases = entry.get("aliases") if isinstance(entry, dict) else None
        for alias in aliases if isinstance(aliases, list) else ():
            if isinstance(alias, str) and key not in by_alias.setdefault(alias.lower(), []):
                by_alias[alias.lower()].append(key)
    return {"data": data, "problems": problems, "by_key": by_key, "by_alias": by_alias,
            "resolved": {}}  # resolved: lowercased name -> Voice


class VoiceLibrary:
    """voices.json as the MLX primespeech line reads it; re-read when the file changes on disk.

    Lookup: the lowercased name as a key, then among aliases compared lowercased (the MLX node's
    order), then as a key compared lowercased, then lowercased with spaces removed (the Python node's
    display names: "Luo Xiang" is "luoxiang"). Relative paths join `models_base_path`, which defaults
    to the models root (PRIMESPEECH_MODEL_DIR): see resolve_path."""

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
        base = self._parsed["data"].get("models_base_path") if self._parsed else None
        if base and not os.path.isabs(os.path.expanduser(base)):  # where the files are depends on the process
            log.warning("%s: models_base_path %r is relative, so it is taken from the working folder: %s here (dora "
                        "starts a node in its dataflow's folder; run reference-mel from that folder too, or make "
                        "models_base_path absolute)", self.path, base, self.base_path(self._parsed["data"]))
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
        """`models_base_path`, or the models root when absent. A relative value is taken from the working
        directory, as the MLX node opens "<models_base_path>/<path>": under dora, the dataflow's folder."""
        data = self.data() if data is None else data
        base = (data or {}).get("models_base_path")
        return Path(os.path.abspath(resolve_path(base, Path(os.getcwd())))) if base else self.model_dir

    def resolve(self, name: str) -> Voice | None:
        """The voice called `name` (key, display name or alias), or None; `ambiguous_voice` when two match."""
        parsed = self.parsed()
        if parsed is None:
            return None
        voices, lower = parsed["data"]["voices"], name.lower()
        found = parsed["resolved"].get(lower)  # this file's earlier answer to the same name
        if found is not None:
            return found
        # The MLX node's order first (config.rs::find_voice: the key equal to the lowercased name, then
        # aliases compared lowercased), then this node's additions: keys of any case, then without spaces.
        how, keys = "keys", [lower] if lower in voices else None
        if not keys:
            how, keys = "aliases", parsed["by_alias"].get(lower)
        if not keys:
            how, keys = "keys", parsed["by_key"].get(lower) or parsed["by_key"].get(lower.replace(" ", ""))
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

    def collisions(self) -> list[str]:
        """What `resolve` answers, as `ambiguous_voice`, for each name that matches two or more voices (keys
        equal but for case, an alias shared by several entries): found when the file loads, not when a
        switch first sends the name. Raises `bad_voices_config` as `parsed` does."""
        parsed = self.parsed()
        if parsed is None:
            return []
        shared = [name for index in (parsed["by_key"], parsed["by_alias"]) for name, keys in index.items()
                  if len(keys) > 1]
        messages = []
        for name in dict.fromkeys(shared):
            try:
                found = self.resolve(name)
            except ReferenceMelError as err:
                if err.code == "ambiguous_voice":
                    messages.append(err.message)
                continue
            keys = parsed["by_key"].get(name, ())
            if len(keys) > 1:  # keys equal but for case: the exact one answers, the others are out of reach by it
                messages.append(f"voice {name!r} matches {len(keys)} voices of {self.path} by keys that differ only "
                                f"in case ({', '.join(map(repr, keys))}); a switch to it gets {found.name!r}: make "
                                "keys unique")
        return messages

    def voices(self) -> list[Voice | ReferenceMelError]:
        """Every entry: a Voice, or the error that keeps it from being one."""
        parsed = self.parsed() or {"data": {"voices": {}}, "problems": {}}
        base = self.base_path(parsed["data"])
        return [parsed["problems"].get(k) or self._voice(k, e, base) for k, e in parsed["data"]["voices"].items()]

    @staticmethod
    def _voice(key: str, entry: dict, base: Path) -> Voice:
        def path(field: str) -> Path | None:
            value = entry.get(field)
            return resolve_path(value, base) if value else None

        mel_keys = [k for k in entry if k.startswith("mel_") and k.endswith("path")]
        info = tuple((k, entry[k]) for k in VOICE_INFO_KEYS if k in entry)
        return Voice(name=key, ref_audio=path("ref_audio"), codes_path=path("codes_path"),
                     mel_paths=tuple((k, p) for k in mel_keys if (p := path(k)) is not None), in_library=True,
                     info=info)

    def set_voice_fields(self, updates: dict[str, dict[str, str]]) -> None:
        """Set fields of voices ({voice key: {field: value}}) in voices.json, under an exclusive lock on
        the file, so concurrent writers never lose each other's updates, and replace it atomically.
        Only those values change: every other byte (formatting, number spellings, key order) stays as
        the owner wrote it. Entries removed meanwhile are left out. A linked voices.json stays a link:
        the file it leads to is replaced, beside itself, with its mode and owner. Raises OSError when
        the file cannot be written, ValueError when its text no longer holds a "voices" object."""
        with self._lock, _locked(self.path) as (blob, real, st):
            encoding = json.detect_encoding(blob)
            text = blob.decode(encoding)
            atomic_write(real, edit_json_fields(text, updates).encode(encoding), like=st)
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
    rest of the text is untouched. One scan of the entries and one join of the pieces, whatever the
    library's size. Raises ValueError if the text is not a voices.json or the result would not parse to
    the intended data."""
    def last(members, key):
        found = [m for m in members if m[0] == key]  # json.loads keeps the last of duplicate keys
        return found[-1] if found else None

    intended = json.loads(text)
    if not isinstance(intended, dict) or not isinstance(intended.get("voices"), dict):
        raise ValueError('voices.json no longer holds a "voices" object')
    top_start = len(text) - len(text.lstrip(_JSON_SPACE))
    voices = last(_json_members(text, top_start)[0], "voices")
    entries = {member[0]: member for member in _json_members(text, voices[2])[0]}  # the last of duplicates
    edits = []  # (start, end, replacement), never overlapping
    for key, fields in updates.items():
        entry = entries.get(key)
        if entry is None or text[entry[2]] != "{":
            continue
        members, close = _json_members(text, entry[2])
        added = []
        for field, value in fields.items():
            member = last(members, field)
            if member is None:
                added.append(f"{json.dumps(field)}: {json.dumps(value, ensure_ascii=False)}")
            else:
                edits.append((member[2], member[3], json.dumps(value, ensure_ascii=False)))
        if added and members:
            _, key_start, _, value_end = members[-1]
            separator = text[text.rindex(",", 0, key_start) + 1 if members[:-1] else entry[2] + 1:key_start]
            separator = separator or (" " if not members[:-1] else "")  # {"ref_audio": ...} on one line
            edits.append((value_end, value_end, "".join(f",{separator}{item}" for item in added)))
        elif added:
            edits.append((entry[2] + 1, close, ", ".join(added)))
        intended["voices"][key].update(fields)
    pieces, done = [], 0
    for start, end, replacement in sorted(edits):
        pieces += [text[done:start], replacement]
        done = end
    result = "".join(pieces) + text[done:]
    if json.dumps(json.loads(result), sort_keys=True) != json.dumps(intended, sort_keys=True):  # NaN-safe
        raise ValueError("editing voices.json in place gave other data; nothing was written")
    return result


@contextlib.contextmanager
def _locked(path: Path):
    """The bytes of the file `path` leads to, read while holding flock on it, with that file's resolved
    path and stat. A writer replaces the file by rename, so after the lock is granted the path must
    still lead to the locked file; otherwise lock the new one."""
    while True:
        real = Path(os.path.realpath(path))
        with open_regular(real, None, MAX_VOICES_JSON_BYTES) as (f, _):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            st = os.fstat(f.fileno())
            if FileStamp.of(path) != FileStamp.of_stat(st):
                continue  # replaced while we waited: lock the file that is there now
            yield f.read(), real, st
            return
