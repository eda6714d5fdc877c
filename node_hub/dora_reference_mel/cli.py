"""`reference-mel`: precompute, verify, list and inspect a voice library's reference spectrograms.

A thin shell over the same functions the node runs (store.py, signal.py). Defaults come from the
same environment variables as the node (VOICES_CONFIG, CODES_DIR, MEL_PRESET, MEL_RESAMPLER, ...).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from .config import Config
from .errors import ReferenceMelError
from .features import backend, spectrogram
from .features.recipe import PRESET_NAMES, RESAMPLERS, Preset
from .limits import DEVICES
from .node.service import duration_warning
from .store import ABSENT, ReferenceStore, Stored
from .store.files import FileStamp, read_audio
from .store.library import Voice, mel_path_key
from .store.names import check_voice_name, path_problem, printable, samples_digest, shown

VOICES_PER_CHUNK = 32  # voices read, computed and written together: bounds memory, still few MLX calls
SIGPIPE_STATUS = 128 + 13  # what a shell reports for a command that a closed pipe (SIGPIPE) ended


@dataclasses.dataclass
class Job:
    """One (voice, preset) of the library and what precompute found for it."""

    voice: Voice
    preset: Preset
    samples: np.ndarray | None = None
    sample_rate: int = 0
    digest: str = ""
    stamp: FileStamp | None = None
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


def _why(err: Exception) -> str:
    """What a voice's error says, for its line: a ReferenceMelError's code and message; anything else
    (an OSError of a path, a bug) by its type, so that one voice's failure never stops the others."""
    if isinstance(err, ReferenceMelError):
        return f"[{err.code}] {err.message}"
    return f"[{type(err).__name__}] {err}"


def _load(store: ReferenceStore, job: Job) -> Job:
    """Read, check and hash the voice's audio (worker threads: I/O and hashing release the GIL)."""
    if job.voice.ref_audio is None:
        job.state, job.reason = "failed", "no ref_audio in voices.json"
        return job
    try:
        samples, rate, job.stamp = store.read_audio(job.voice.ref_audio)
        job.samples, job.sample_rate = spectrogram.check_samples(samples, rate), rate
        job.digest = samples_digest(job.samples, rate)
        job.warning = duration_warning(job.samples.shape[0] / rate) or ""
    except Exception as err:  # any error fails this voice alone
        job.state, job.reason = "failed", _why(err)
    return job


def _library_jobs(store: ReferenceStore, preset: Preset) -> tuple[list[Job], list[Job]]:
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
    if store.library.data() is None:
        print(f"error: {store.library.path} does not exist; pass --voices or set VOICES_CONFIG", file=sys.stderr)
        return 2
    store.clean_leftovers()
    # A killed run's voices.json temporary: beside the file itself, where a linked voices.json leads.
    store.clean_leftovers(Path(os.path.realpath(store.library.path)).parent)
    presets = list(config.presets)
    voices, jobs = _library_jobs(store, presets[0])

    # Chunk by chunk of voices: read (in threads) and hash each voice's audio once for all its presets,
    # compute what is missing or stale in one batch, write, and let the chunk go. The next chunk is read
    # while this one computes, so memory stays bounded by two chunks whatever the library's size. A bad
    # voice fails alone; the others go on.
    progress = Progress(len(voices) * len(presets), "computing")
    chunks = [voices[first:first + VOICES_PER_CHUNK] for first in range(0, len(voices), VOICES_PER_CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reading = [pool.submit(_load, store, job) for job in chunks[0]] if chunks else []
        for index in range(len(chunks)):
            loaded = [future.result() for future in reading]
            reading = [pool.submit(_load, store, job) for job in chunks[index + 1]] if index + 1 < len(chunks) else []
            for preset in presets:
                chunk = [dataclasses.replace(job, preset=preset) for job in loaded]
                todo = [job for job in chunk if _plan(store, job, args.force)]
                for job, mel in zip(todo, _compute(todo, preset), strict=True):
                    _save(store, job, mel)
                for job in chunk:
                    job.samples = None
                    progress.step(f"{printable(job.voice.name)} {preset.name}" if job.state == "computed" else None)
                jobs += chunk
            for job in loaded:  # read in place into the library's list: let this chunk's samples go
                job.samples = None

    unrecorded = _record_mel_paths(store, [j for j in jobs if j.state in ("computed", "up to date")])
    status = _summary(jobs, unrecorded, time.perf_counter() - started)
    codes_problems = sum(_codes_problem(store, job.voice) for job in voices)  # not precompute's to fix: said
    return 1 if codes_problems else status


def _plan(store: ReferenceStore, job: Job, force: bool) -> bool:
    """Decide a pending job: up to date, failed (too short), or to compute (with the reason why)."""
    if job.state != "pending":
        return False
    try:
        found = store.lookup(job.voice, job.preset, digest=job.digest)
        if found.fresh and not force:
            job.state, job.path = "up to date", found.path
            return False
        spectrogram.check_long_enough(job.samples.shape[0], job.sample_rate, job.preset)
    except Exception as err:  # too short, or any error: this voice fails alone
        job.state, job.reason = "failed", _why(err)
        return False
    job.reason = "forced" if found.fresh else f"{found.state}: {found.reason}"
    return True


def _compute(todo: list[Job], preset: Preset) -> list[np.ndarray | None]:
    """Spectrograms of the jobs in one batch; should the batch fail, one by one, so that one bad clip
    fails alone (None for it, with its reason)."""
    if not todo:
        return []
    try:
        return spectrogram.reference_mel_batch([j.samples for j in todo], [j.sample_rate for j in todo], preset=preset)
    except Exception:  # the clips one by one say which failed, and why
        pass
    mels = []
    for job in todo:
        try:
            mels.append(spectrogram.reference_mel(job.samples, job.sample_rate, preset=preset))
        except Exception as err:
            job.state, job.reason = "failed", _why(err)
            mels.append(None)
    return mels


def _save(store: ReferenceStore, job: Job, mel: np.ndarray | None) -> None:
    if mel is None:
        return
    if not np.isfinite(mel).all():
        job.state, job.reason = "failed", "the spectrogram overflows float32 (samples far outside [-1, 1])"
        return
    try:
        job.path = store.save_mel(job.voice, job.preset, mel[0], source_digest=job.digest,
                                  source_sample_rate=job.sample_rate, audio=job.stamp)
        job.state = "computed"
    except Exception as err:  # a full disk, a read-only folder: this voice fails alone
        job.state, job.reason = "failed", f"cannot write {store.mel_file(job.voice, job.preset)}: {_why(err)}"


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
            entry = data["voices"].get(job.voice.name)
            path = job.path.resolve()
            value = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)  # relative, as primespeech
            if not isinstance(entry, dict) or entry.get(mel_path_key(job.preset)) == value:
                continue
            problem = path_problem(value)  # the rule voices.json's paths are read by: recorded, it would break the voice
            if problem:
                unrecorded.append(f"{job.voice.name} {mel_path_key(job.preset)}={shown(value)} {problem}, which "
                                  "voices.json cannot hold (the node finds the file by its default name in CODES_DIR)")
                continue
            updates.setdefault(job.voice.name, {})[mel_path_key(job.preset)] = value
        if updates:
            store.library.set_voice_fields(updates)
        return unrecorded
    except Exception as err:  # whatever the file did meanwhile, the summary still comes
        return [f"cannot record the mel paths in {store.library.path} ({_why(err)}); {fix}"]


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
        print("precompute: nothing to do, every spectrogram is up to date")
    return 1 if counts["failed"] else 0  # by the voices: their files serve by default names, recorded or not


def verify(args, config: Config) -> int:
    store = ReferenceStore.from_config(config)
    voices, failed = _library_jobs(store, config.presets[0])
    bad = len(failed)
    for job in failed:
        print(f"corrupt  voices.json entry: {job.reason}")
    for message in _collisions(store):  # switches to these names fail: said here, before a dataflow meets them
        print(f"ambiguous {message}")
    for job in voices:
        bad += _checked(_verify_voice, store, job, config.presets)
    for voice in _unlisted(store):  # written back for reference_audio events: no audio to check them against
        bad += _checked(_verify_unlisted, store, Job(voice, config.presets[0]), config.presets)
    print(f"verify: {bad} stale or corrupt")
    return 1 if bad else 0


def _checked(check, store: ReferenceStore, job: Job, presets) -> int:
    """How many of the voice's files `check` finds stale or corrupt; an error checking it counts as one
    and is reported on its line, and the other voices are checked all the same."""
    try:
        return check(store, job, presets)
    except BrokenPipeError:  # the reader is gone: not this voice's failure (main ends the command)
        raise
    except Exception as err:
        print(f"failed   {printable(job.voice.name)}: {_why(err)}")
        return 1


def _verify_voice(store: ReferenceStore, job: Job, presets) -> int:
    job = _load(store, job)
    name, bad = printable(job.voice.name), _codes_problem(store, job.voice)
    for preset in presets:
        found = store.lookup(job.voice, preset, digest=job.digest or None)
        if found.state == ABSENT:
            print(f"missing  {name} {preset.name} (not precomputed)")
            continue
        if job.state == "failed" and found.fresh:
            found = dataclasses.replace(found, state="stale", reason=f"cannot check against its audio: {job.reason}")
        print(f"{'ok' if found.fresh else found.state:8s} {name} {preset.name}"
              + ("" if found.fresh else f": {found.reason}"))
        bad += not found.fresh
    if job.warning:  # the files may be sound; GPT-SoVITS still complains of the audio
        print(f"warning  {name}: {job.warning}")
    return bad


def _verify_unlisted(store: ReferenceStore, job: Job, presets) -> int:
    bad = _codes_problem(store, job.voice)
    for preset in presets:
        found = store.lookup(job.voice, preset)
        if found.state != ABSENT:
            print(f"{'ok' if found.fresh else found.state:8s} {printable(job.voice.name)} {preset.name} (not in voices.json)"
                  + ("" if found.fresh else f": {found.reason}"))
            bad += not found.fresh
    return bad


def _codes_problem(store: ReferenceStore, voice: Voice) -> bool:
    """Print the voice's codes when the node would refuse them (`bad_codes`) or voices.json's codes_path
    names no file; True then."""
    state, detail = store.codes_report(voice)
    if state == "bad" or state == "missing" and voice.codes_path is not None:
        print(f"{state:8s} {printable(voice.name)} codes: {detail}")
        return True
    return False


def _unlisted(store: ReferenceStore) -> list[Voice]:
    """Voices with spectrograms in the codes directory that voices.json does not list."""
    listed = {entry.name for entry in store.library.voices() if isinstance(entry, Voice)}
    names = []
    for name in sorted(store.stored_voice_names() - listed):
        try:
            names.append(Voice(name=check_voice_name(name)))
        except ReferenceMelError:  # a file name no voice could have written (an undecodable name, say)
            continue
    return names


def _describe(store: ReferenceStore, voice: Voice, presets, *, in_library: bool) -> dict:
    """What the store holds for a voice, judged by stat stamps alone (no audio is read): the duration
    warning comes from the frames of a file made from the voice's current audio."""
    stored, warnings = {}, []
    for preset in presets:
        found = store.lookup(voice, preset, audio=FileStamp.of(voice.ref_audio) if voice.ref_audio else None)
        producer = found.sidecar.raw.get("producer") if found.sidecar else None
        stored[preset.name] = {"state": found.state, "path": str(found.path) if found.path else None,
                               "reason": found.reason or None, "producer": producer}
        if found.fresh and found.sidecar and not warnings:
            warning = duration_warning(*preset.seconds_of(preset.frames_in(found.sidecar.shape)))
            warnings += [warning] if warning else []
    codes_state, codes_detail = store.codes_report(voice)
    return {"name": voice.name, "in_library": in_library,
            "ref_audio": str(voice.ref_audio) if voice.ref_audio else None, "stored": stored, "warnings": warnings,
            "codes": {"state": codes_state, "detail": codes_detail}}


def _padded(text: str, columns: int) -> str:
    """`text` padded with spaces to `columns` terminal columns: East Asian wide and fullwidth characters
    take two, combining marks none."""
    width = sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * (columns - width)


def list_voices(args, config: Config) -> int:
    """Every voice of voices.json and every voice with stored files that it does not list."""
    store = ReferenceStore.from_config(config)
    voices, problems = [], []
    listed = [(entry, True) for entry in store.library.voices()]
    for entry, in_library in listed + [(voice, False) for voice in _unlisted(store)]:
        if isinstance(entry, ReferenceMelError):
            problems.append(entry.message)
            continue
        try:
            voices.append(_describe(store, entry, config.presets, in_library=in_library))
        except Exception as err:  # one voice's error is reported; the others are listed
            problems.append(f"{entry.name}: {_why(err)}")
    collisions = _collisions(store)
    if args.json:
        print(json.dumps({"voices_config": str(store.library.path), "codes_dir": str(store.codes_dir),
                          "voices": voices, "problems": problems, "collisions": collisions}, indent=1,
                         ensure_ascii=False))
        return 0
    for voice in voices:
        where = "voices.json" if voice["in_library"] else "codes dir only"
        states = " ".join(f"{name}={item['state']}" for name, item in voice["stored"].items())
        print(f"{_padded(printable(voice['name']), 24)} {where:15s} {states} codes={voice['codes']['state']}")
        for warning in voice["warnings"]:
            print(f"  warning: {warning}")
    for problem in problems:
        print(f"unusable entry: {problem}")
    for message in collisions:
        print(f"ambiguous name: {message}")
    print(f"list: {sum(v['in_library'] for v in voices)} voices in voices.json, "
          f"{sum(not v['in_library'] for v in voices)} more with stored files only")
    return 0


def _collisions(store: ReferenceStore) -> list[str]:
    """voices.json's names that match two voices (none when the file is unusable: that is reported apart)."""
    try:
        return store.library.collisions()
    except ReferenceMelError:
        return []


def _origin(found: Stored) -> str:
    if found.fresh:
        return f"precomputed file {found.path}"
    if found.state == ABSENT:
        return "compute (no precomputed file)"
    return f"compute ({found.state} file {found.path}: {found.reason})"


def inspect(args, config: Config) -> int:
    store = ReferenceStore.from_config(config)
    preset = config.presets[0]
    target, voice, found = Path(args.target), None, None
    if target.is_file():
        samples, rate, _ = read_audio(target, None, config.max_ref_seconds)  # named by the user: any folder
        origin = "compute (an audio file: the node computes it, then caches it)"
    else:
        voice = store.voice(args.target)
        if not store.knows(voice, config.presets):  # the node's unknown_voice
            print(f"error: {args.target!r} is neither an audio file nor a voice in {store.library.path} or with "
                  f"a spectrogram file in {store.codes_dir}", file=sys.stderr)
            return 2
        job = _load(store, Job(voice, preset))
        samples, rate = job.samples, job.sample_rate
        found = store.lookup(voice, preset, digest=job.digest or None)
        if samples is None and not found.fresh:
            print(f"error: voice {voice.name!r}: {job.reason}; and {_origin(found)}", file=sys.stderr)
            return 1
        origin = _origin(found)
    mel = found.data[None] if found is not None and found.fresh else spectrogram.reference_mel(samples, rate, preset=preset)
    spec = mel[0]
    n_frames, hop_s = preset.frames_in(spec.shape), preset.hop_length / preset.sample_rate
    print(f"target     {args.target}")
    print(f"preset     {preset.name} (fingerprint {preset.fingerprint})")
    print(f"source     {origin}")
    print(f"shape      {list(mel.shape)}  {preset.layout}: {n_frames} frames of {hop_s * 1e3:.0f} ms"
          f" = {n_frames * hop_s:.2f} s")
    if samples is not None:
        print(f"audio      {samples.shape[0] / rate:.2f} s at {rate} Hz, {samples.shape[1]} channel(s)")
        if warning := duration_warning(samples.shape[0] / rate):
            print(f"warning    {warning}")
    print(f"values     min {spec.min():.4g}  max {spec.max():.4g}  mean {spec.mean():.4g}")
    if voice is not None:
        state, detail = store.codes_report(voice)
        print(f"codes      {state}: {detail}")
    if args.png:
        try:
            import matplotlib  # noqa: F401  (plot.py imports it lazily: ask here, before any work)

            from .plot import save_spectrogram_png
        except ImportError as err:
            print(f"error: --png needs matplotlib ({err}); pip install 'dora-reference-mel[plot]'", file=sys.stderr)
            return 2
        png = Path(args.png) if Path(args.png).suffix else Path(args.png).with_suffix(".png")  # as matplotlib names it
        path = save_spectrogram_png(spec, png, title=f"{args.target} {preset.name}", preset=preset.name,
                                    sample_rate=preset.sample_rate, hop_length=preset.hop_length, n_fft=preset.n_fft,
                                    layout=preset.layout)
        print(f"png        {path}")
    return 0


# Command-line option -> the environment variable it overrides (the rest of the configuration stays the node's).
OPTION_VARIABLES = {"voices": "VOICES_CONFIG", "codes_dir": "CODES_DIR", "preset": "MEL_PRESET",
                    "resampler": "MEL_RESAMPLER", "bins": "MEL_BINS", "device": "MEL_DEVICE"}


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:  # here, not at exit: a closed pipe is then told apart from a crash
            sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped reading (`| head`): end quietly, as SIGPIPE ends a command
        with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.dup2(devnull, sys.stderr.fileno())
        return SIGPIPE_STATUS


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="reference-mel", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--voices", help="voices.json (default: VOICES_CONFIG)")
    common.add_argument("--codes-dir", help="codes directory (default: CODES_DIR)")
    common.add_argument("--preset", nargs="+", choices=PRESET_NAMES, help="presets (default: MEL_PRESET)")
    common.add_argument("--resampler", choices=RESAMPLERS, help="default: MEL_RESAMPLER")
    common.add_argument("--bins", type=int, help="v2 bins (default: MEL_BINS or 704)")
    common.add_argument("--device", choices=DEVICES, help="default: MEL_DEVICE")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("precompute", parents=[common], help="compute every missing or stale spectrogram")
    p.add_argument("--force", action="store_true", help="recompute even up-to-date files")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="threads reading audio")
    p.set_defaults(run=precompute)
    p = sub.add_parser("inspect", parents=[common], help="where a voice's spectrogram comes from, and its numbers")
    p.add_argument("target", help="a voice name (or alias) or an audio file")
    p.add_argument("--png", help="write a picture of the spectrogram here")
    p.set_defaults(run=inspect)
    p = sub.add_parser("verify", parents=[common], help="check every precomputed file against its audio")
    p.set_defaults(run=verify)
    p = sub.add_parser("list", parents=[common], help="every voice and what the store holds for it")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(run=list_voices)
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a path of non-UTF-8 bytes is shown escaped, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    env = dict(os.environ)
    for option, variable in OPTION_VARIABLES.items():
        value = getattr(args, option)
        if value is not None:
            env[variable] = ",".join(value) if isinstance(value, list) else str(value)
    try:
        config = Config.from_env(env)
        backend.select(config.device)  # compiling nothing: a library of any rates builds no kernel
        return args.run(args, config)
    except ReferenceMelError as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
