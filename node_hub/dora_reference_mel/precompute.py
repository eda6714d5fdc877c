"""`reference-mel precompute`: every voice of voices.json resolved (read, looked up, computed in batches,
written) by the resolver the node runs, chunk by chunk of voices; and what the tool's commands share:
a voice's job, reading its audio, and how its errors read.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time
from pathlib import Path

from .config import Config
from .errors import ReferenceMelError
from .features.recipe import Preset
from .resolve import Request, Resolved, Resolver, duration_warning
from .store import ReferenceStore
from .store.kinds import ArtifactKind, kind_of, load_codes_kind
from .store.library import Voice
from .store.names import path_problem, printable, shown

VOICES_PER_CHUNK = 32  # voices read, computed and written together: bounds memory, still few MLX calls


@dataclasses.dataclass
class Job:
    """One (voice, preset) of the library and what precompute found for it."""

    voice: Voice
    preset: Preset | ArtifactKind  # a preset's spectrogram, or the codes (kinds.CodesKind)
    request: Request | None = None  # with the voice's samples, once read
    state: str = "pending"  # pending | up to date | computed | failed
    reason: str = ""
    path: Path | None = None  # the file that serves it, once up to date or computed
    warning: str = ""  # what the voice's audio gives GPT-SoVITS to complain about (its duration)


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal), drawn only for
    items that took work: a run with nothing to do draws nothing."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.drawn = max(total, 1), label, 0, False
        self.tty = sys.stderr.isatty()

    def step(self, what: str | None) -> None:
        """One more item done; `what` names it on the bar, None counts it silently (it needed no work)."""
        self.done += 1
        if what is not None:
            filled = int(30 * self.done / self.total)
            line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {what}"
            sys.stderr.write(("\r" + line[:100].ljust(100)) if self.tty else line + "\n")
            self.drawn = True
        if self.tty and self.drawn and self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def why(err: Exception) -> str:
    """What a voice's error says, for its line: a ReferenceMelError's code and message; anything else
    (an OSError of a path, a bug) by its type, so that one voice's failure never stops the others."""
    if isinstance(err, ReferenceMelError):
        return f"[{err.code}] {err.message}"
    return f"[{type(err).__name__}] {err}"


def load(resolver: Resolver, job: Job) -> Job:
    """Read, check and hash the voice's audio (worker threads: I/O and hashing release the GIL)."""
    if job.voice.ref_audio is None:
        job.state, job.reason = "failed", "no ref_audio in voices.json"
        return job
    try:
        job.request = resolver.read_audio(Request(job.voice, audio_path=job.voice.ref_audio), kind_of(job.preset))
        job.warning = duration_warning(job.request.samples.shape[0] / job.request.sample_rate) or ""
    except Exception as err:  # any error fails this voice alone
        job.state, job.reason = "failed", why(err)
    return job


def digest(job: Job) -> str | None:
    return job.request.digest if job.request is not None else None


def library_jobs(store: ReferenceStore, preset: Preset) -> tuple[list[Job], list[Job]]:
    """(jobs of usable voices, failed jobs of entries voices.json cannot give as voices)."""
    good, bad = [], []
    for entry in store.library.voices():
        if isinstance(entry, ReferenceMelError):
            bad.append(Job(Voice(name=shown(entry.message[:40])), preset, state="failed", reason=entry.message))
        else:
            good.append(Job(entry, preset))
    return good, bad


def precompute(args, config: Config) -> int:
    started = time.perf_counter()
    store = ReferenceStore.from_config(config)
    resolver = Resolver(store)
    if store.library.data() is None:
        print(f"error: {store.library.path} does not exist; pass --voices or set VOICES_CONFIG", file=sys.stderr)
        return 2
    store.clean_leftovers()
    # A killed run's voices.json temporary: beside the file itself, where a linked voices.json leads.
    store.clean_leftovers(Path(os.path.realpath(store.library.path)).parent)
    codes, weights_usable = codes_kind(config)
    store.codes_kind = codes
    presets = [kind_of(preset) for preset in config.presets] + ([codes] if codes is not None else [])
    voices, jobs = library_jobs(store, presets[0])

    # Chunk by chunk of voices: read (in threads) and hash each voice's audio once for all its presets,
    # compute what is missing or stale in one batch, write, and let the chunk go. The next chunk is read
    # while this one computes, so memory stays bounded by two chunks whatever the library's size. A bad
    # voice fails alone; the others go on.
    progress = Progress(len(voices) * len(presets), "computing")
    chunks = [voices[first:first + VOICES_PER_CHUNK] for first in range(0, len(voices), VOICES_PER_CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reading = [pool.submit(load, resolver, job) for job in chunks[0]] if chunks else []
        for index in range(len(chunks)):
            loaded = [future.result() for future in reading]
            reading = [pool.submit(load, resolver, job) for job in chunks[index + 1]] if index + 1 < len(chunks) else []
            for preset in presets:
                chunk = [dataclasses.replace(job, preset=preset) for job in loaded]
                for job in chunk:
                    if preset is codes and job.state == "pending" and _owner_codes(store, job.voice):
                        job.state = "up to date"  # the owner's codes file serves: never computed over
                pending = [job for job in chunk if job.state == "pending"]
                requests = [job.request for job in pending]
                for job, outcome in zip(pending, resolver.resolve_batch(requests, kind_of(preset), force=args.force),
                                        strict=True):  # no name keeps the outcomes (and their samples) past the loop
                    _record(job, outcome)
                del requests
                for job in chunk:
                    job.request = None
                    progress.step(f"{printable(job.voice.name)} {preset.name}" if job.state == "computed" else None)
                jobs += chunk
            for job in loaded:  # read in place into the library's list: let this chunk's samples go
                job.request = None

    recorded = [j for j in jobs if j.state in ("computed", "up to date") and j.preset is not codes]  # mel paths only
    unrecorded = _record_mel_paths(store, recorded)
    status = _summary(jobs, unrecorded, time.perf_counter() - started)
    codes_problems = sum(codes_problem(store, job.voice) for job in voices)  # not precompute's to fix: said
    return 1 if codes_problems or not weights_usable else status


def codes_kind(config: Config) -> tuple[ArtifactKind | None, bool]:
    """(the codes kind, None when codes are off or the weights are not here; False when the weights files are
    there but unusable, said on stderr). The tool computes codes where the weights are, and says nothing else."""
    try:
        return load_codes_kind(config.hubert_weights, config.sovits_weights, say_why_not=False), True
    except ReferenceMelError as err:
        print(f"error: semantic codes are not computed: [{err.code}] {err.message}", file=sys.stderr)
        return None, False


def _owner_codes(store: ReferenceStore, voice: Voice) -> bool:
    """Whether the voice has a codes file of the owner's (a bad one too: codes_problem names it)."""
    try:
        return store.owner_codes(voice) is not None
    except ReferenceMelError:
        return True


def _record(job: Job, outcome: Resolved | Exception) -> None:
    """A job's state from what the resolver did: up to date, computed (and why), or failed (and why)."""
    if isinstance(outcome, Exception):
        job.state, job.reason = "failed", why(outcome)
    elif outcome.source == "precomputed":
        job.state, job.path = "up to date", outcome.path
    elif outcome.write_back != "written":
        job.state, job.reason = "failed", f"not written: {outcome.write_error}"
    else:
        found = outcome.stored
        job.state, job.path = "computed", outcome.path
        job.reason = "forced" if found is not None and found.fresh else f"{found.state}: {found.reason}"


def _record_mel_paths(store: ReferenceStore, jobs: list[Job]) -> list[str]:
    """Set each voice's mel path in voices.json, only where it differs (a no-op run writes nothing).
    Returns what could not be recorded, and why: voices.json is the owner's and may be read-only, full,
    or changed by someone else since the run began. Entries removed or changed into non-voices meanwhile
    are left alone."""
    fix = ("the files are written and the node finds them by their default names in CODES_DIR; to record "
           "them, make voices.json writable and run precompute again")
    try:
        data = store.library.data()
        if data is None:
            return [f"{store.library.path} was removed during the run; nothing recorded ({fix})"]
        root = store.library.base_path(data).resolve()
        updates: dict[str, dict[str, str]] = {}
        unrecorded = []
        for job in jobs:
            entry, key = data["voices"].get(job.voice.name), kind_of(job.preset).voice_path_key()
            path = job.path.resolve()
            value = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)  # relative, as primespeech
            if not isinstance(entry, dict) or entry.get(key) == value:
                continue
            problem = path_problem(value)  # the rule voices.json's paths are read by: recorded, it would break the voice
            if problem:
                unrecorded.append(f"{job.voice.name} {key}={shown(value)} {problem}, which "
                                  "voices.json cannot hold (the node finds the file by its default name in CODES_DIR)")
                continue
            updates.setdefault(job.voice.name, {})[key] = value
        if updates:
            store.library.set_voice_fields(updates)
        return unrecorded
    except Exception as err:  # whatever the file did meanwhile, the summary still comes
        return [f"cannot record the mel paths in {store.library.path} ({why(err)}); {fix}"]


def _summary(jobs: list[Job], unrecorded: list[str], seconds: float) -> int:
    counts = {s: sum(j.state == s for j in jobs) for s in ("computed", "up to date", "failed")}
    took = f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"
    print(f"precompute: {counts['computed']} computed, {counts['up to date']} up to date, "
          f"{counts['failed']} failed, in {took}")
    warnings = {}
    for job in jobs:
        name = printable(job.voice.name)
        if job.state == "computed":
            print(f"  computed   {name} {job.preset.name} ({job.reason})")
        elif job.state == "failed":
            print(f"  failed     {name} {job.preset.name}: {job.reason}")
        if job.warning:
            warnings.setdefault(name, job.warning)  # one line a voice, whatever its presets
    for name, warning in warnings.items():
        print(f"  warning    {name}: {warning}")
    for problem in unrecorded:
        print(f"  not recorded in voices.json: {problem}")
    if counts["computed"] == 0 and counts["failed"] == 0 and not unrecorded:
        print("precompute: nothing to do, every spectrogram and computed codes file is up to date")
    return 1 if counts["failed"] else 0  # by the voices: their files serve by default names, recorded or not


def codes_problem(store: ReferenceStore, voice: Voice) -> bool:
    """Print the voice's codes when the node would refuse them (`bad_codes`), voices.json's codes_path names
    no file, or (with the codes model) computed codes are stale; True then."""
    state, detail = store.codes_report(voice)
    if state in ("bad", "stale") or state == "missing" and voice.codes_path is not None:
        print(f"{state:8s} {printable(voice.name)} codes: {detail}")
        return True
    return False
