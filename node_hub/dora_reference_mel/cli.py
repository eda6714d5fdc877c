"""`reference-mel`: precompute, inspect and verify a voice library's reference spectrograms.

A thin shell over the same functions the node runs (store.py, signal.py). Defaults come from the
same environment variables as the node (VOICES_CONFIG, CODES_DIR, MEL_PRESET, MEL_RESAMPLER, ...).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import signal
from .config import Config, select_device
from .errors import ReferenceMelError
from .recipe import PRESET_NAMES, Preset, get_preset
from .store import (
    AudioStamp,
    CorruptFile,
    ReferenceStore,
    Voice,
    VoiceLibrary,
    mel_path_key,
    read_audio,
    samples_digest,
    staleness,
)

VOICES_PER_CHUNK = 32  # voices read, computed and written together: bounds memory, still few MLX calls


@dataclasses.dataclass
class Job:
    """One (voice, preset) of the library and what precompute found for it."""

    voice: Voice
    preset: Preset
    samples: np.ndarray | None = None
    sample_rate: int = 0
    digest: str = ""
    stamp: AudioStamp | None = None
    state: str = "pending"  # pending | up to date | computed | failed
    reason: str = ""


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.tty = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        filled = int(30 * self.done / self.total)
        line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {what}"
        sys.stderr.write(("\r" + line[:100].ljust(100)) if self.tty else line + "\n")
        if self.tty and self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _store(args) -> ReferenceStore:
    return ReferenceStore(Path(args.codes_dir), VoiceLibrary(Path(args.voices)))


def _presets(args) -> list[Preset]:
    return [get_preset(p, resampler=args.resampler, v2_bins=args.bins) for p in args.preset]


def _load(job: Job) -> Job:
    """Read and hash the voice's audio (runs in worker threads: I/O and hashing release the GIL)."""
    if job.voice.ref_audio is None:
        job.state, job.reason = "failed", "no ref_audio in voices.json"
        return job
    try:
        job.stamp = AudioStamp.of(job.voice.ref_audio)
        job.samples, job.sample_rate = read_audio(job.voice.ref_audio)
        job.digest = samples_digest(job.samples, job.sample_rate)
    except ReferenceMelError as err:
        job.state, job.reason = "failed", err.message
    return job


def precompute(args) -> int:
    store = _store(args)
    voices = store.library.voices()
    if store.library.data() is None:
        print(f"error: {store.library.path} does not exist; pass --voices or set VOICES_CONFIG", file=sys.stderr)
        return 2
    presets = _presets(args)

    # Chunk by chunk of voices: read (in threads) and hash each voice's audio once for all its presets,
    # compute what is missing or stale in one batch, write, and let the chunk go: memory stays bounded
    # by one chunk whatever the library's size.
    jobs: list[Job] = []
    progress = Progress(len(voices) * len(presets), "computing")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for first in range(0, len(voices), VOICES_PER_CHUNK):
            loaded = list(pool.map(_load, [Job(v, presets[0]) for v in voices[first:first + VOICES_PER_CHUNK]]))
            for preset in presets:
                chunk = [dataclasses.replace(job, preset=preset) for job in loaded]
                todo = [job for job in chunk if _needs_compute(store, job, args.force)]
                mels = signal.reference_mel_batch([j.samples for j in todo], [j.sample_rate for j in todo],
                                                  preset=preset) if todo else []
                for job, mel in zip(todo, mels, strict=True):
                    try:
                        store.save_mel(job.voice, preset, mel[0], source_sha256=job.digest,
                                       source_sample_rate=job.sample_rate, audio=job.stamp)
                        job.state = "computed"
                    except OSError as err:
                        job.state, job.reason = "failed", f"cannot write {store.mel_file(job.voice, preset)}: {err}"
                for job in chunk:
                    job.samples = None
                    progress.step(f"{job.voice.name} {preset.name}")
                jobs += chunk

    _record_mel_paths(store, [j for j in jobs if j.state in ("computed", "up to date")])
    return _summary(jobs)


def _needs_compute(store: ReferenceStore, job: Job, force: bool) -> bool:
    """Decide a pending job: up to date, failed (too short), or to compute (with the reason why)."""
    if job.state != "pending":
        return False
    try:
        reason = staleness(store.load_mel(job.voice, job.preset), job.preset, job.digest)
    except CorruptFile as err:
        reason = f"corrupt ({err})"
    if reason is None and not force:
        job.state = "up to date"
        return False
    try:
        signal.check_long_enough(job.samples.shape[0], job.sample_rate, job.preset)
    except ReferenceMelError as err:
        job.state, job.reason = "failed", err.message
        return False
    job.reason = "forced" if reason is None else reason
    return True


def _record_mel_paths(store: ReferenceStore, jobs: list[Job]) -> None:
    """Set each voice's mel path in voices.json, only where it differs (a no-op run writes nothing)."""
    data = store.library.data()
    base = store.library.base_path(data)
    updates: dict[str, dict[str, str]] = {}
    for job in jobs:
        path, root = store.mel_file(job.voice, job.preset).resolve(), base.resolve()
        value = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)  # relative, as primespeech
        if data["voices"][job.voice.name].get(mel_path_key(job.preset)) != value:
            updates.setdefault(job.voice.name, {})[mel_path_key(job.preset)] = value
    if updates:
        store.library.set_voice_fields(updates)


def _summary(jobs: list[Job]) -> int:
    counts = {s: sum(j.state == s for j in jobs) for s in ("computed", "up to date", "failed")}
    print(f"precompute: {counts['computed']} computed, {counts['up to date']} up to date, "
          f"{counts['failed']} failed")
    for job in jobs:
        if job.state == "computed":
            print(f"  computed   {job.voice.name} {job.preset.name} ({job.reason})")
        elif job.state == "failed":
            print(f"  failed     {job.voice.name} {job.preset.name}: {job.reason}")
    if counts["computed"] == 0 and counts["failed"] == 0:
        print("precompute: nothing to do, every spectrogram is up to date")
    return 1 if counts["failed"] else 0


def verify(args) -> int:
    store, presets = _store(args), _presets(args)
    bad = 0
    for voice in store.library.voices():
        job = _load(Job(voice, presets[0]))
        for preset in presets:
            try:
                stored = store.load_mel(voice, preset)
            except CorruptFile as err:
                print(f"corrupt  {voice.name} {preset.name}: {err}")
                bad += 1
                continue
            if stored is None:
                print(f"missing  {voice.name} {preset.name} (not precomputed)")
                continue
            if job.state == "failed":
                print(f"stale    {voice.name} {preset.name}: cannot check against its audio: {job.reason}")
                bad += 1
                continue
            reason = staleness(stored, preset, job.digest)
            print(f"{'ok      ' if reason is None else 'stale   '} {voice.name} {preset.name}"
                  + ("" if reason is None else f": {reason}"))
            bad += reason is not None
    print(f"verify: {bad} stale or corrupt")
    return 1 if bad else 0


def inspect(args) -> int:
    store = _store(args)
    preset = _presets(args)[0]

    target, mel = Path(args.target), None
    if target.is_file():
        voice, (samples, rate) = None, read_audio(target)
        origin = "compute (an audio file: the node computes it, then caches it)"
    else:
        voice = store.voice(args.target)
        if voice.ref_audio is None and not voice.in_library:
            print(f"error: {args.target!r} is neither an audio file nor a voice in {store.library.path}",
                  file=sys.stderr)
            return 2
        job = _load(Job(voice, preset))
        samples, rate, mel = job.samples, job.sample_rate, None
        try:
            stored = store.load_mel(voice, preset)
            reason = staleness(stored, preset, job.digest) if job.state != "failed" else "audio unreadable"
            if reason is None:
                origin, mel = f"precomputed file {stored.path}", stored.data[None]
            elif stored is not None:
                origin = f"stale file {stored.path}: {reason}; the node recomputes it"
            else:
                origin = "compute (no precomputed file)"
        except CorruptFile as err:
            origin, stored = f"compute (stored file corrupt: {err})", None
        if samples is None and mel is None:
            if stored is None:
                print(f"error: voice {voice.name!r}: {job.reason}", file=sys.stderr)
                return 1
            mel = stored.data[None]  # no audio to check it against: show what the node would serve
    if mel is None:
        mel = signal.reference_mel(samples, rate, preset=preset)
    spec = mel[0]
    print(f"target     {args.target}")
    print(f"preset     {preset.name} (fingerprint {preset.fingerprint})")
    print(f"source     {origin}")
    print(f"shape      {list(mel.shape)}  ({spec.shape[1]} frames of {preset.hop_length / preset.sample_rate * 1e3:.0f} ms"
          f" = {spec.shape[1] * preset.hop_length / preset.sample_rate:.2f} s)")
    if samples is not None:
        print(f"audio      {samples.shape[0] / rate:.2f} s at {rate} Hz, {samples.shape[1]} channel(s)")
    print(f"values     min {spec.min():.4g}  max {spec.max():.4g}  mean {spec.mean():.4g}")
    if voice is not None:
        try:
            codes = store.load_codes(voice)
            print(f"codes      {'missing' if codes is None else f'{codes.size} codes ({codes.size / 50:.2f} s)'}")
        except ReferenceMelError as err:
            print(f"codes      unusable: {err.message}")
    if args.png:
        from .plot import save_spectrogram_png

        path = save_spectrogram_png(spec, Path(args.png), title=f"{args.target} {preset.name}", preset=preset.name,
                                    sample_rate=preset.sample_rate, hop_length=preset.hop_length, n_fft=preset.n_fft)
        print(f"png        {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        env = Config.from_env()
    except ReferenceMelError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="reference-mel", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--voices", default=str(env.voices_config), help="voices.json (default: %(default)s)")
    common.add_argument("--codes-dir", default=str(env.codes_dir), help="codes directory (default: %(default)s)")
    common.add_argument("--preset", nargs="+", choices=PRESET_NAMES, default=[p.name for p in env.presets])
    common.add_argument("--resampler", choices=("torchaudio", "soxr_hq"), default=env.presets[0].resampler)
    common.add_argument("--bins", type=int, default=None, help="v2 bins (default: MEL_BINS or 704)")
    common.add_argument("--device", choices=("auto", "gpu", "cpu"), default=env.device)
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
    args = parser.parse_args(argv)
    if args.bins is None:
        args.bins = next((p.n_bins for p in env.presets if p.name == "v2"), None)
    try:
        select_device(args.device)
        started = time.perf_counter()
        status = args.run(args)
        print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        return status
    except ReferenceMelError as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
