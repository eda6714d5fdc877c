"""The one resolver: every artifact the node serves, and every one the `reference-mel` tool computes,
goes memory cache -> the store's lookup -> compute -> write-back here, for any kind of artifact
(store/kinds.py). It keeps the memos that make a repeated request cheap: the served artifacts (the cache,
by samples digest and fingerprint) and the samples digest of each audio file read (by its stat stamp,
in the store).

`Resolver.resolve(request, kind)` answers one request (the node, `inspect`); `resolve_batch` answers many
clips of one kind in few device calls (`precompute`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .cache import ByteLRU
from .errors import ReferenceMelError
from .features import pcm
from .store import CORRUPT, ReferenceStore, Stored
from .store.files import FileStamp, StoreFileError, open_regular
from .store.kinds import ArtifactKind, CodesKind, trained_codes_kind
from .store.library import Voice
from .store.names import samples_digest, shown

log = logging.getLogger(__name__)

UPSTREAM_SECONDS = (3.0, 10.0)  # GPT-SoVITS refuses references outside this range for code extraction
TRAINED_WEIGHTS_KEPT = 4  # TRAINED voices' SoVITS weights whose codes kinds stay loaded (8 MB each)
MAX_WEIGHTS_BYTES = 1 << 36  # a TRAINED voice's weights file (only its header and three tensors are read)


def duration_warning(seconds: float, longest: float | None = None) -> str | None:
    """The warning for a reference of `seconds` outside GPT-SoVITS's range, or None. With `longest`, the
    duration is known only to lie between the two (as a stored spectrogram's frames tell): it warns
    only when the whole span is outside, and names its middle."""
    longest = seconds if longest is None else longest
    if longest >= UPSTREAM_SECONDS[0] and seconds <= UPSTREAM_SECONDS[1]:
        return None
    return f"duration {(seconds + longest) / 2:.2f} s is outside GPT-SoVITS's 3 to 10 s reference range"


def audio_warnings(samples: np.ndarray, sample_rate: int, max_seconds: float) -> list[str]:
    """What checked float32 samples give GPT-SoVITS to complain about (duration, peak); `too_long` past
    MAX_REF_SECONDS."""
    seconds = samples.shape[0] / sample_rate
    if seconds > max_seconds:
        raise ReferenceMelError(
            "too_long", f"the reference is {seconds:.1f} s, over MAX_REF_SECONDS={max_seconds:g}; "
            "send 3 to 10 s of speech (or raise MAX_REF_SECONDS)")
    warnings = []
    if duration := duration_warning(seconds):
        warnings.append(duration)
    peak = max(float(samples.max()), -float(samples.min()))  # no |x| temporary
    if peak > 2:
        warnings.append(f"peak {peak:.3g} is far above 1 (clipped or mis-scaled PCM); served peak-normalised")
    return warnings


@dataclasses.dataclass(frozen=True)
class Served:
    """An artifact ready to send, shared by the cache: never written to."""

    data: np.ndarray  # flat, C-order data of `shape`, in the served dtype
    shape: tuple[int, ...]  # with the batch axis
    warnings: tuple[str, ...] = ()  # the samples' own (duration, peak): told again whenever this is served


@dataclasses.dataclass(frozen=True)
class Request:
    """One reference to resolve: samples in hand, or a file (a voice's ref_audio, a CUSTOM path) to read."""

    voice: Voice | None  # the store's voice; None for unnamed audio and CUSTOM references (cache only)
    audio_path: Path | None = None  # read when `samples` is None
    samples: np.ndarray | None = None  # float32 [n, channels]
    sample_rate: int | None = None
    digest: str | None = None  # samples_digest, computed once for every kind
    stamp: FileStamp | None = None  # of audio_path, when the samples were read from it
    roots: tuple[Path, ...] | None = None  # folders audio_path must lie in: set for a path from an event
    warnings: tuple[str, ...] = ()
    audio_warnings: tuple[str, ...] = ()  # those of `warnings` that belong to the samples (with_samples')
    about: tuple[tuple[str, object], ...] = ()  # voice metadata: voice, ref_text, speed_factor, languages
    sovits_weights: str | None = None  # a TRAINED voice's own SoVITS weights path, as sent: its codes' weights

    def with_samples(self, samples: np.ndarray, sample_rate: int, warnings, stamp: FileStamp | None = None,
                     digest: str | None = None) -> Request:
        """digest: samples_digest of these samples when the caller has it already."""
        return dataclasses.replace(self, samples=samples, sample_rate=sample_rate, stamp=stamp,
                                   digest=digest or samples_digest(samples, sample_rate),
                                   warnings=self.warnings + tuple(warnings), audio_warnings=tuple(warnings))

    def told(self, served: Served) -> Request:
        """This request, with the warnings of the samples `served` was made from, when it is served without
        reading them (from the cache or the store)."""
        new = tuple(w for w in served.warnings if w not in self.warnings)
        return dataclasses.replace(self, warnings=self.warnings + new) if new else self


@dataclasses.dataclass(frozen=True)
class Resolved:
    served: Served
    source: str  # cache | precomputed | computed
    request: Request  # with the samples, once they had to be read
    write_back: str | None = None  # written | skipped | failed | off, for a computed artifact of a voice
    stored: Stored | None = None  # what the store held, when it was asked (and why it did not serve)
    path: Path | None = None  # the file that serves it from now on: the stored one, or the one written
    write_error: str | None = None  # why write_back failed


# codes_status of a `mel` event, by where the resolver found its codes
CODES_STATUS = {"cache": "cache", "precomputed": "stored", "computed": "computed"}


class Codes(NamedTuple):
    data: np.ndarray | None  # int codes [N], or None
    status: str  # stored | computed | cache | missing
    request: Request  # with the samples, once they had to be read
    warnings: tuple[str, ...] = ()  # why they could not be computed


class Resolver:
    def __init__(self, store: ReferenceStore, *, cache_bytes: int = 0, write_back: bool = True, dtype: str = "float32"):
        """cache_bytes: the memory cache's bound (0: off); write_back: MEL_WRITE_BACK; dtype: MEL_DTYPE."""
        self.store = store
        self.cache = ByteLRU(cache_bytes)
        self.write_back = write_back
        self.dtype = dtype
        self._write_failures_logged: set[str] = set()
        self._kept_files_logged: set[Path] = set()
        self._trained_kinds: dict[tuple, CodesKind] = {}  # by weights path and stamp, oldest first

    def resolve(self, request: Request, kind: ArtifactKind) -> Resolved:
        found: Stored | None = None
        if request.samples is None:
            stamp = FileStamp.of(request.audio_path)  # one stat serves the cache check and the lookup
            hit = self._cached_file(request.audio_path, stamp, kind)
            if hit is not None:
                return Resolved(hit, "cache", request.told(hit))
            if request.voice is not None:
                found = self._lookup(request.voice, kind, audio=stamp)
                if found.fresh:
                    return self._serve_stored(found, request, kind)
            request = self.read_audio(request, kind, found)
        kind.check_length(request.samples.shape[0], request.sample_rate)
        cached = self.cache.get((request.digest, kind.fingerprint))
        if cached is not None:
            return Resolved(cached, "cache", request.told(cached))
        if request.voice is not None:
            found = (found.against(request.digest, kind.fingerprint) if found
                     else self._lookup(request.voice, kind, digest=request.digest))
            if found.fresh:
                served = self._remember(found.data, request.digest, kind, request.audio_warnings)
                return Resolved(served, "precomputed", request, stored=found, path=found.path)
        return self._computed(request, kind, kind.compute(request.samples, request.sample_rate), found)

    def resolve_codes(self, request: Request) -> Codes:
        """The request's semantic codes: a named voice's owner's codes file as it is (store.owner_codes; without
        the codes model, any codes file of the voice), else the store's codes kind resolved like any artifact.
        `bad_codes` when the owner's file is unusable; a clip the codes cannot be computed from (outside 3 to 10
        s, say) gives no codes and the reason."""
        voice, codes, kind = request.voice, None, self.store.codes_kind
        if voice is not None:
            codes = self.store.load_codes(voice) if kind is None else self.store.owner_codes(voice)
        if codes is not None or kind is None:
            return Codes(codes, "stored" if codes is not None else "missing", request)
        try:
            kind = kind if request.sovits_weights is None else self._trained_kind(kind, request.sovits_weights)
            resolved = self.resolve(request, kind)
        except ReferenceMelError as err:
            said = () if err.code == "no_ref_audio" else (f"no semantic codes: [{err.code}] {err.message}",)
            return Codes(None, "missing", request, said)
        return Codes(resolved.served.data, CODES_STATUS[resolved.source], resolved.request)

    def _trained_kind(self, base: CodesKind, given: str) -> CodesKind:
        """The codes kind of a TRAINED voice's SoVITS weights (kinds.trained_codes_kind): a path confined to the
        event roots like its clip, opened once and read from that descriptor; the last few stay loaded, by path
        and stat stamp."""
        path = self.store.event_path(given, "VOICE:TRAINED sovits_weights", "bad_weights")
        try:
            with open_regular(path, self.store.event_roots(), MAX_WEIGHTS_BYTES) as (file, stamp):
                key = (path, stamp)
                kind = self._trained_kinds.pop(key, None) or trained_codes_kind(base, file.fileno(), str(path))
        except StoreFileError as err:
            raise ReferenceMelError("bad_weights", f"VOICE:TRAINED sovits_weights {shown(given)} {err.reason}") from None
        except OSError as err:
            raise ReferenceMelError("bad_weights", f"VOICE:TRAINED sovits_weights {shown(given)} cannot be read ({err})") \
                from None
        self._trained_kinds[key] = kind
        if len(self._trained_kinds) > TRAINED_WEIGHTS_KEPT:
            del self._trained_kinds[next(iter(self._trained_kinds))]
        return kind

    def resolve_batch(self, requests: Sequence[Request], kind: ArtifactKind, *,
                      force: bool = False) -> list[Resolved | Exception]:
        """Requests whose samples are in hand, resolved together: the stored ones looked up, the rest (all
        with `force`) computed in one batch and written back. Each gets its Resolved, or the error that
        failed it alone; should the batch fail, its clips are computed one by one to tell which did."""
        outcomes: list[Resolved | Exception | None] = [None] * len(requests)
        todo: list[tuple[int, Stored | None]] = []
        for index, request in enumerate(requests):
            try:
                found = self._lookup(request.voice, kind, digest=request.digest) if request.voice else None
                if found is not None and found.fresh and not force:
                    served = self._remember(found.data, None, kind)
                    outcomes[index] = Resolved(served, "precomputed", request, stored=found, path=found.path)
                    continue
                kind.check_length(request.samples.shape[0], request.sample_rate)
                todo.append((index, found))
            except Exception as err:  # too short, or any error: this clip fails alone
                outcomes[index] = err
        try:
            computed = kind.compute_batch([requests[i].samples for i, _ in todo], [requests[i].sample_rate for i, _ in todo])
        except Exception:  # one by one, below, says which clip failed and why
            computed = [None] * len(todo)
        for (index, found), data in zip(todo, computed, strict=True):
            request = requests[index]
            try:
                data = kind.compute(request.samples, request.sample_rate) if data is None else data
                outcomes[index] = self._computed(request, kind, data, found)
            except Exception as err:
                outcomes[index] = err
        return outcomes

    def read_audio(self, request: Request, kind: ArtifactKind, found: Stored | None = None) -> Request:
        """The request with its audio file read, checked and hashed (`no_ref_audio` when it has none)."""
        if request.audio_path is None:
            why = f"({found.reason})" if found is not None and found.reason else ""
            raise ReferenceMelError(
                "no_ref_audio", f"voice {request.voice.name!r} has no ref_audio in voices.json and no usable precomputed "
                f"{kind.name} {kind.what} {why}; add ref_audio or run `reference-mel precompute`",
                voice=request.voice.name)
        if request.voice is None:  # a CUSTOM path, from an event
            fix = "send the path of an audio file inside REF_AUDIO_ROOTS"
        else:
            fix = f"fix voice {shown(request.voice.name)}'s ref_audio in {self.store.library.path} (VOICES_CONFIG)"
        samples, sample_rate, stamp = self.store.read_audio(request.audio_path, request.roots, fix)
        samples = pcm.check_samples(samples, sample_rate)
        warnings = audio_warnings(samples, sample_rate, self.store.max_ref_seconds)
        request = request.with_samples(samples, sample_rate, warnings, stamp)
        self.store.remember_digest(request.audio_path, stamp, request.digest)
        return request

    def _computed(self, request: Request, kind: ArtifactKind, data: np.ndarray, found: Stored | None) -> Resolved:
        served = self._remember(data, request.digest, kind, request.audio_warnings)  # checked in the dtype sent
        if request.voice is None:
            return Resolved(served, "computed", request, stored=found)
        write_back, path, error = self._write_back(request, data, kind)
        return Resolved(served, "computed", request, write_back, stored=found, path=path, write_error=error)

    def _lookup(self, voice: Voice, kind: ArtifactKind, **identity) -> Stored:
        found = self.store.lookup(voice, kind, **identity)
        if found.state == CORRUPT:
            log.warning("not serving stored %s of %r: %s; recomputing", kind.name, voice.name, found.reason)
        return found

    def _cached_file(self, path: Path | None, stamp: FileStamp | None, kind: ArtifactKind) -> Served | None:
        """A voice switch whose audio file is unchanged (same stamp) since it was last hashed: the cache."""
        digest = self.store.known_digest(path, stamp)
        return self.cache.get((digest, kind.fingerprint)) if digest else None

    def _serve_stored(self, found: Stored, request: Request, kind: ArtifactKind) -> Resolved:
        """A stored file proven by its audio's stamp. Its sidecar names the samples' digest, so samples
        already served (say as a reference_audio event) answer from the cache, whatever came first."""
        digest = found.sidecar.source_digest if found.sidecar else None
        if digest and found.sidecar.source_audio is not None and request.audio_path is not None:
            self.store.remember_digest(request.audio_path, found.sidecar.source_audio, digest)  # proven by the stamp
        cached = self.cache.get((digest, kind.fingerprint)) if digest else None
        if cached is not None:
            return Resolved(cached, "cache", request.told(cached), stored=found, path=found.path)
        served = self._remember(found.data, digest, kind, found.sidecar.warnings if found.sidecar else ())
        return Resolved(served, "precomputed", request.told(served), stored=found, path=found.path)

    def _write_back(self, request: Request, data: np.ndarray,
                    kind: ArtifactKind) -> tuple[str, Path | None, str | None]:
        """(written | skipped | failed | off, the file written, why it was not)."""
        if not self.write_back:
            return "off", None, None
        target = self.store.file_of(request.voice, kind)
        kept = self.store.irreplaceable(request.voice, kind)
        if kept is not None:
            if target not in self._kept_files_logged:  # once per file: every later event would say the same
                self._kept_files_logged.add(target)
                log.warning("not writing the computed %s: %s; it is served from memory", kind.what, kept)
            return "skipped", None, kept
        try:
            written = self.store.save(request.voice, kind, data, source_digest=request.digest,
                                      source_sample_rate=request.sample_rate, audio=request.stamp,
                                      warnings=request.audio_warnings)
            if written is None:  # the bound on voices voices.json does not list
                return "skipped", None, f"{self.store.codes_dir} holds files of too many voices voices.json does not list"
            return "written", written, None
        except OSError as err:
            folder = str(self.store.codes_dir)
            if folder not in self._write_failures_logged:  # once per folder: a read-only store is a state
                self._write_failures_logged.add(folder)
                log.error("cannot write precomputed %ss to %s (%s); serving from memory only", kind.what, folder, err)
            return "failed", None, f"cannot write {target}: {err}"

    def _remember(self, data: np.ndarray, digest: str | None, kind: ArtifactKind, warnings=()) -> Served:
        """The artifact as served (self.dtype), checked finite in that type, and cached with the warnings of
        its samples."""
        dtype = self.dtype if np.dtype(kind.dtype).kind == "f" else kind.dtype  # MEL_DTYPE rounds only floats
        flat = np.ascontiguousarray(data, dtype=dtype).reshape(-1)
        if np.dtype(dtype) == np.float16 and not np.isfinite(flat).all():
            raise ReferenceMelError(
                "non_finite_audio", f"the {kind.name} {kind.what} reaches {float(np.abs(data).max()):.3g}, beyond "
                f"{self.dtype}'s range (MEL_DTYPE={self.dtype}): the samples are far outside "
                "[-1, 1]; send PCM scaled to [-1, 1], or set MEL_DTYPE=float32")
        served = Served(flat, (1, *data.shape), tuple(warnings))
        if digest:
            self.cache.put((digest, kind.fingerprint), served, flat.nbytes)
        return served
