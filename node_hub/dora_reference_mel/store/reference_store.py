"""The store: precomputed artifacts (one kind each: kinds.py), their sidecars (sidecars.py), and the one
lookup (voices.json is library.py, codes are codes.py, safe file access is files.py).

Layout of the codes directory (docs/store.md, "Store layout"):
  <voice>_codes.bin | <voice>_codes.npy     semantic codes, int32 LE (npy: dtype honoured)
  <voice>_mel.bin,  <voice>_mel.json         v2 spectrogram, float32 LE C-order [n_bins, n_frames] + sidecar
  <voice>_mel_<preset>.bin / .json           the other presets (v3, v4; sv frames first: [n_frames, 80])

Every decision "may this stored file serve this request?" is `ReferenceStore.lookup`: the node, the
operator and every `reference-mel` command call it and nothing else. It returns a `Stored` value
(fresh, stale, corrupt or absent, with the reason). The rules it enforces:
- it opens only regular files (never a FIFO, a device or a directory), without blocking, after
  resolving links; each file is bounded in size by what its kind and MAX_REF_SECONDS allow, and
  read once per lookup. Where a file may lie depends on who named it: voices.json and the codes
  directory are the owner's configuration, so their paths are read wherever they lead (as the MLX
  primespeech node reads them); a path that arrives inside an event (VOICE:CUSTOM) is read only
  inside `event_roots()` (REF_AUDIO_ROOTS, the models root, the library's models_base_path and the codes
  directory), judged again on the descriptor it is read through (files.open_regular);
- a pair is checked whole (sidecar, size, data digest, finite values) once per unchanged file: later
  lookups compare the stat stamps of both files (the data's from the descriptor they read) and read
  the data without checking it again; any change to either file, or a stamp too recent to tell, means
  a full check;
- it writes only `<voice><kind's suffix>.bin|json` (`<voice>_mel*`) in the codes directory, by temporary file + rename (never
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..cache import ByteLRU
from ..errors import ReferenceMelError
from ..features.recipe import Preset
from ..limits import CODES_PER_SECOND
from .codes import parse_codes
from .files import (
    OUTSIDE_ROOTS,
    FileStamp,
    StoreFileError,
    atomic_write,
    audio_formats,
    read_audio,
    read_regular,
    real_inside,
    remove_leftovers,
    resolved,
    settled,
)
from .kinds import MEL_SUFFIXES, ArtifactKind, kind_of
from .library import Voice, VoiceLibrary
from .names import check_voice_name, data_digest, path_problem, shown
from .sidecars import ABSENT, CORRUPT, FRESH, MAX_SIDECAR_BYTES, PRODUCER, SIDECAR_FORMAT, STALE, Sidecar, Stored

log = logging.getLogger(__name__)

MAX_VERIFIED_FILES = 4096
MAX_CODES_MEMO_BYTES = 32 * 2**20  # parsed codes kept: 10,000 voices of 10 s (500 codes each) take 48 MB
MAX_KNOWN_AUDIO = 4096  # audio files whose samples' digest is remembered (by the path asked with)
# Voices that voices.json does not list get files here (so a restart serves them) only while the codes
# directory holds files of fewer than this many of them: reference_audio events with ever new names must not
# fill the disk. Counted on disk under a lock on the folder, so it bounds the store, whichever process writes.
MAX_UNLISTED_VOICES = 256
MAX_MISSING_CODES_LOGGED = 4096  # codes_path files said missing once each (they come from voices.json)


class ReferenceStore:
    """The codes directory and the voice library, with every rule about which files may be used."""

    def __init__(self, codes_dir: Path, library: VoiceLibrary, *, max_ref_seconds: float = 60.0,
                 extra_roots: Sequence[Path] = ()):
        self.codes_dir = Path(codes_dir)
        self.library = library
        self.max_ref_seconds = max_ref_seconds
        self.extra_roots = tuple(Path(p) for p in extra_roots)
        self._codes_memo = ByteLRU(MAX_CODES_MEMO_BYTES)  # path -> (stamp, codes): parsed once per unchanged file
        # audio file -> (stamp, samples_digest): a repeated voice switch knows its samples after one stat
        self._audio_digests = ByteLRU(MAX_KNOWN_AUDIO)
        self._unlisted_full_logged = False
        self._missing_codes_logged: set[Path] = set()
        # (path, kind) -> (stamp, sidecar stamp, sidecar) of each pair verified whole: see _reread
        self._verified = ByteLRU(MAX_VERIFIED_FILES)
        self.codes_kind: ArtifactKind | None = None  # kinds.CodesKind, once its model is loaded (the weights are here)

    def event_path(self, given: str, field: str = "VOICE:CUSTOM ref_audio", code: str = "bad_ref_audio") -> Path:
        """The resolved path of a file named inside an event (a CUSTOM or TRAINED clip, TRAINED's weights), or
        `code` naming the fix: the path checked as text first, `~` expanded, a relative one taken from the
        working folder (as primespeech takes it), then it must lead into event_roots() and exist. Any path
        that does not lead there (missing, a link out, unresolvable) gets one answer, which never says
        where it leads. read_audio checks the file it opens again."""
        problem = path_problem(given)
        if problem:
            kind = f"an audio file ({audio_formats()})" if code == "bad_ref_audio" else "the file"
            raise ReferenceMelError(code, f"{field} {shown(given)} {problem}; send the path of {kind}")
        expanded = os.path.expanduser(given)  # os.path's: Path.expanduser raises on ~nosuchuser
        relative = "" if os.path.isabs(expanded) else (
            f" (a relative path is taken from the node's working folder {os.getcwd()})")
        roots = self.event_roots()
        try:
            real = resolved(os.path.abspath(expanded))
        except StoreFileError:
            real = None
        if real is None or not real_inside(real, roots):
            raise ReferenceMelError(
                code, f"{field} {shown(given)} {OUTSIDE_ROOTS} (REF_AUDIO_ROOTS: "
                f"{', '.join(map(str, roots))}){relative}; add its folder to REF_AUDIO_ROOTS on the reference-mel "
                "node, or move the file into one of them")
        if not os.path.lexists(real):
            raise ReferenceMelError(code, f"{field} {shown(given)} does not exist{relative}; send an absolute path")
        return Path(real)

    @classmethod
    def from_config(cls, config) -> ReferenceStore:
        """The store a configuration names: the node's, the operator's and every command's."""
        return cls(config.codes_dir, VoiceLibrary(config.voices_config, config.model_dir),
                   max_ref_seconds=config.max_ref_seconds, extra_roots=config.ref_audio_roots)

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

    def known_digest(self, path: Path | None, stamp: FileStamp | None) -> str | None:
        """The samples_digest of the audio file at `path`, when it was read (or proven by a sidecar) with
        this very stamp: an unchanged file is not read again."""
        known = self._audio_digests.get(path)
        return known[1] if known is not None and stamp is not None and known[0] == stamp else None

    def remember_digest(self, path: Path, stamp: FileStamp, digest: str) -> None:
        self._audio_digests.put(path, (stamp, digest), 1)

    # -- codes ----------------------------------------------------------------------------------

    def load_codes(self, voice: Voice) -> np.ndarray | None:
        """The voice's semantic codes as read-only int64 [N], None when it has none; `bad_codes` when
        unusable. Parsed once per unchanged file."""
        candidates = [voice.codes_path] if voice.codes_path else [
            self.codes_dir / f"{voice.name}_codes.bin", self.codes_dir / f"{voice.name}_codes.npy"]
        max_bytes = int(self.max_ref_seconds * CODES_PER_SECOND + 1) * 8 + 4096  # int64 .npy, and its header
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
                    if path == voice.codes_path:
                        self._say_codes_path_missing(voice)
                    continue
                reason = err.reason
            except ValueError as err:
                reason = str(err)
            else:
                self._codes_memo.put(path, (stamp, codes), codes.nbytes + 200)  # + the entry's own few objects
                return codes
            raise ReferenceMelError(
                "bad_codes", f"codes file {path} of voice {voice.name!r} is unusable ({reason}); "
                "re-extract the codes for this voice", voice=voice.name)
        return None

    def owner_codes(self, voice: Voice) -> np.ndarray | None:
        """The owner's codes of the voice, served as they are, never written: voices.json's codes_path, or a
        `<voice>_codes.bin` / `.npy` without sidecar (`<voice>_codes.json`: this package's, judged by lookup)."""
        if voice.codes_path is None and os.path.lexists(self.codes_dir / f"{voice.name}_codes.json"):
            return None
        return self.load_codes(voice)

    def _say_codes_path_missing(self, voice: Voice) -> None:
        """Once per file: a voice whose voices.json codes_path names no file is served without codes."""
        if voice.codes_path in self._missing_codes_logged or len(self._missing_codes_logged) >= MAX_MISSING_CODES_LOGGED:
            return
        self._missing_codes_logged.add(voice.codes_path)
        log.warning("voice %r: its codes_path %s does not exist (voices.json: a relative path joins models_base_path); "
                    "its mel goes out with codes_status missing: fix codes_path or models_base_path",
                    voice.name, voice.codes_path)

    def codes_report(self, voice: Voice) -> tuple[str, str]:
        """The voice's codes as the node judges them, in words for the tools: ("ok", how many), ("missing",
        where they were looked for), ("bad", why the node refuses them with `bad_codes`) or, with the codes kind
        (weights loaded), ("stale", why the node computes them again) for codes this package computed."""
        kind = self.codes_kind
        try:
            codes = self.load_codes(voice) if kind is None else self.owner_codes(voice)
        except ReferenceMelError as err:
            return "bad", err.message
        if codes is None and kind is not None and os.path.lexists(self.file_of(voice, kind)):
            found = self.lookup(voice, kind, audio=FileStamp.of(voice.ref_audio))
            if not found.fresh:
                return ("bad" if found.state == CORRUPT else found.state), found.reason
            codes = found.data
        if codes is None:
            where = voice.codes_path or self.codes_dir / f"{voice.name}_codes.bin (or .npy)"
            return "missing", f"no file {where}"
        return "ok", f"{codes.size} codes ({codes.size / CODES_PER_SECOND:.2f} s)"

    # -- spectrograms ---------------------------------------------------------------------------

    def has_stored(self, voice: Voice, kinds: Sequence[ArtifactKind | Preset]) -> bool:
        """Whether the codes directory has a file of this voice for any of the kinds (or presets)."""
        return any(self.file_of(voice, kind).exists() for kind in kinds)

    def knows(self, voice: Voice, presets: Sequence[ArtifactKind | Preset]) -> bool:
        """Whether a voice switch to `voice` can be served (else `unknown_voice`): voices.json lists it, or
        the codes directory has a spectrogram file of it (written back, or made without sidecar)."""
        return voice.in_library or self.has_stored(voice, presets)

    def file_of(self, voice: Voice, kind: ArtifactKind | Preset) -> Path:
        """Where this package writes (voice, kind): always the codes directory, named after the voice."""
        return self.codes_dir / f"{kind_of(kind).file_stem(voice.name)}.bin"

    def lookup(self, voice: Voice, kind: ArtifactKind | Preset, *, digest: str | None = None,
               audio: FileStamp | None = None) -> Stored:
        """May a stored file serve (voice, kind)? The one place that decides it (a preset means its spectrogram).

        digest: samples_digest of the audio in hand (a reference_audio event, or the voice's file once
        read); audio: the stamp of the voice's ref_audio file when it has not been read. With neither
        (no audio to compare with), a whole file of the right recipe is fresh.
        The voice's voices.json path for the kind (`mel_<preset>_path`) is tried first, then the file named
        after the voice."""
        kind, first = kind_of(kind), None
        for path in dict.fromkeys(p for p in (voice.stored_path(kind), self.file_of(voice, kind)) if p):
            found = self._judge(path, kind, digest, audio)
            if found.fresh:
                return found
            if first is None or first.state == ABSENT:
                first = found
        return first

    def _judge(self, path: Path, kind: ArtifactKind, digest: str | None, audio: FileStamp | None) -> Stored:
        whole = self._reread(path, kind) or self._verify(path, kind, has_audio=digest is not None or audio is not None)
        if not whole.fresh or whole.sidecar is None:  # unusable, or a legacy file judged already
            return whole
        sidecar = whole.sidecar
        if sidecar.fingerprint != kind.fingerprint:
            return dataclasses.replace(whole, state=STALE, reason=f"made by another recipe (fingerprint "
                                       f"{sidecar.fingerprint}, want {kind.fingerprint})")
        if digest is not None:
            return whole.against(digest, kind.fingerprint)
        if audio is not None and sidecar.source_audio != audio:
            return dataclasses.replace(whole, state=STALE, reason="the audio file changed since (stat stamp differs)")
        return whole

    def _verify(self, path: Path, kind: ArtifactKind, *, has_audio: bool) -> Stored:
        """Read the pair and check all of it: sidecar fields, size, data digest, finite values. An intact
        pair comes back FRESH (whatever recipe or audio it was made from) and is remembered by its stamps."""
        try:
            blob, stamp = read_regular(path, None, kind.max_bytes(self.max_ref_seconds))
            try:
                side_blob, side_stamp = read_regular(path.with_suffix(".json"), None, MAX_SIDECAR_BYTES)
            except StoreFileError as err:
                if not err.missing:
                    raise
                return self._legacy(path, blob, kind, has_audio=has_audio)
        except StoreFileError as err:
            return Stored(ABSENT if err.missing else CORRUPT, err.reason if err.missing else str(err), path)
        try:
            sidecar = Sidecar.parse(side_blob, kind, self.max_ref_seconds)
        except ValueError as err:
            if b'"format": 1' in side_blob[:64] or b'"format":1' in side_blob[:64]:
                return Stored(STALE, "written by an older version (sidecar format 1)", path)
            return Stored(CORRUPT, f"{path.with_suffix('.json')}: {err}", path)
        if len(blob) != int(np.prod(sidecar.shape)) * np.dtype(kind.dtype).itemsize:
            return Stored(CORRUPT, f"{path} holds {len(blob)} bytes, its sidecar says shape {list(sidecar.shape)}", path)
        if data_digest(blob) != sidecar.data_digest:
            return Stored(CORRUPT, f"{path} does not match the digest in its sidecar (half-replaced or damaged)", path)
        data = np.frombuffer(blob, dtype=kind.dtype).reshape(sidecar.shape)
        if problem := kind.problem(data):
            return Stored(CORRUPT, f"{path} {problem}", path)
        if settled(stamp) and settled(side_stamp):
            self._verified.put((path, kind), (stamp, side_stamp, sidecar), 1)
        return Stored(FRESH, "", path, data, sidecar)

    def _reread(self, path: Path, kind: ArtifactKind) -> Stored | None:
        """The data of a pair verified before, when both files are still the ones verified (same stat
        stamps; the data's checked again on the descriptor it is read through, opened regular-only and
        non-blocking like any read): read again, not checked again. None otherwise."""
        memo = self._verified.get((path, kind))
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
        return Stored(FRESH, "", path, np.frombuffer(blob, dtype=kind.dtype).reshape(sidecar.shape), sidecar)

    @staticmethod
    def _legacy(path: Path, blob: bytes, kind: ArtifactKind, *, has_audio: bool) -> Stored:
        """A data file without sidecar (kind.legacy says which may be one). Nothing says which audio it came
        from, so it serves only a voice that has no audio to compute from."""
        data = kind.legacy(blob)
        if isinstance(data, str):
            return Stored(CORRUPT, f"{path} {data}", path)
        if problem := kind.problem(data):
            return Stored(CORRUPT, f"{path} {problem}", path)
        if has_audio:
            return Stored(STALE, "no sidecar, so nothing says which audio it was made from", path, data)
        return Stored(FRESH, "", path, data)

    def save(self, voice: Voice, kind: ArtifactKind | Preset, data: np.ndarray, *, source_digest: str,
             source_sample_rate: int, audio: FileStamp | None = None, warnings: Sequence[str] = ()) -> Path | None:
        """Write the artifact (the kind's data; a preset means its spectrogram) and its sidecar to the voice's
        file in the codes directory; None when the voice is one voices.json does not list and may_store_unlisted
        refuses it (decided and written under the folder's lock). warnings: the source audio's (duration,
        peak), told again whenever it is served.

        Sidecar first, then the data, each by rename: a crash in between leaves a sidecar whose
        data_digest does not match the old .bin, so the pair is refused and recomputed."""
        kind = kind_of(kind)
        path = self.file_of(voice, kind)
        blob = np.ascontiguousarray(data, dtype=kind.dtype).tobytes()
        sidecar = {
            "format": SIDECAR_FORMAT, "voice": voice.name, "preset": kind.name, "shape": list(data.shape),
            "dtype": np.dtype(kind.dtype).name, "layout": f"C-order {kind.layout}, little-endian",
            "fingerprint": kind.fingerprint, "recipe": kind.recipe(),
            "source_digest": source_digest, "source_sample_rate": int(source_sample_rate),
            "source_audio": dataclasses.asdict(audio) if audio else None, "source_warnings": list(warnings),
            "data_digest": data_digest(blob),
            "producer": PRODUCER,
        }
        self.codes_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.nullcontext() if voice.in_library else self._folder_locked():
            if not voice.in_library and not self.may_store_unlisted(voice.name):
                return None
            atomic_write(path.with_suffix(".json"), (json.dumps(sidecar, indent=1) + "\n").encode())
            atomic_write(path, blob)
        return path

    def irreplaceable(self, voice: Voice, kind: ArtifactKind | Preset) -> str | None:
        """Why save(voice, kind) must not replace the file already there, None when it may: that file is
        the stored artifact of a voice (this one, or a voices.json voice whose mel_path names it) with no
        ref_audio file to compute it again from, so replacing it would lose the owner's data."""
        kind = kind_of(kind)
        target = self.file_of(voice, kind)
        if not os.path.lexists(target):
            return None
        if kind.legacy_is_owners and not os.path.lexists(target.with_suffix(".json")):
            return f"{target} has no sidecar: it is the owner's {kind.what} file"
        same = {os.path.abspath(target), os.path.realpath(target)}
        try:
            listed = [v for v in self.library.voices() if isinstance(v, Voice)]
        except ReferenceMelError:  # unreadable voices.json: the voice itself is still checked
            listed = []
        for owner in (voice, *listed):
            # By path first (links only where voices.json names one): only owners' audio is stat'ed.
            named = owner is voice or os.path.abspath(self.file_of(owner, kind)) in same
            stored = owner.stored_path(kind)
            named = named or stored is not None and {os.path.abspath(stored), os.path.realpath(stored)} & same
            if named and not (owner.ref_audio is not None and owner.ref_audio.is_file()):
                return (f"{target} is the stored {kind.name} {kind.what} of voice {owner.name!r}, which has no "
                        "ref_audio to compute it again from")
        return None

    @contextlib.contextmanager
    def _folder_locked(self):
        """An exclusive flock on the codes directory itself (nothing is created for it): the processes
        sharing the folder count and write unlisted voices one at a time."""
        fd = os.open(self.codes_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def stored_files(self) -> list[tuple[str, str, Path]]:
        """Every spectrogram file in the codes directory, with its sidecar or without (a legacy .bin):
        (voice name, preset name, .bin path), sorted; one scan, whatever voices.json lists (lhotse's
        manifest, made from the files)."""
        files = set()
        try:
            entries = list(os.scandir(self.codes_dir))
        except OSError:
            return []
        for entry in entries:
            stem, dot, extension = entry.name.rpartition(".")
            if not dot or extension not in ("bin", "json"):
                continue
            for name, suffix in MEL_SUFFIXES.items():
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    files.add((stem[:-len(suffix)], name, self.codes_dir / f"{stem}.bin"))
        return sorted(files)

    def stored_voice_names(self) -> set[str]:
        """Names of the voices that have a spectrogram file in the codes directory."""
        return {voice for voice, _, _ in self.stored_files()}

    def may_store_unlisted(self, name: str) -> bool:
        """Whether a voice voices.json does not list may get files here: one that has some already, or a
        new one while the codes directory holds files of fewer than MAX_UNLISTED_VOICES such voices,
        counted on disk each time (save_mel asks under the folder's lock, so the bound is the store's)."""
        stored = self.stored_voice_names()
        if name in stored:
            return True
        try:
            parsed = self.library.parsed()
        except ReferenceMelError:  # an unusable voices.json lists nothing
            parsed = None
        unlisted = stored - set(parsed["data"]["voices"] if parsed else ())
        if len(unlisted) < MAX_UNLISTED_VOICES:
            return True
        if not self._unlisted_full_logged:
            self._unlisted_full_logged = True
            log.warning("%s holds spectrograms of %d voices that voices.json does not list; computed spectrograms "
                        "of further unlisted voices are served from memory, not written (add the voices to "
                        "voices.json, or remove files of voices no longer used)", self.codes_dir, len(unlisted))
        return False

    def clean_leftovers(self, folder: Path | None = None) -> int:
        """Remove crash leftovers in `folder` (default: the codes directory; precompute also sweeps
        voices.json's folder, the one other place it writes). Returns how many."""
        return remove_leftovers(self.codes_dir if folder is None else folder)
