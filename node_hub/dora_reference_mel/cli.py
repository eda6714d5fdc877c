"""`reference-mel`: precompute, verify, list and inspect a voice library's reference spectrograms.

A thin shell over the resolver and the store the node runs (resolve.py, store/). Defaults come from the
same environment variables as the node (VOICES_CONFIG, CODES_DIR, MEL_PRESET, MEL_RESAMPLER, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import unicodedata
from pathlib import Path

from .config import Config
from .errors import ReferenceMelError
from .features import backend, pcm
from .features.recipe import PRESET_NAMES, RESAMPLERS
from .limits import DEVICES
from .precompute import Job, codes_kind, codes_problem, digest, library_jobs, load, precompute, why
from .resolve import Request, Resolver, audio_warnings, duration_warning
from .store import ABSENT, ReferenceStore, Stored
from .store.files import FileStamp, read_audio
from .store.kinds import kind_of
from .store.library import Voice
from .store.names import check_voice_name, printable

SIGPIPE_STATUS = 128 + 13  # what a shell reports for a command that a closed pipe (SIGPIPE) ended


def verify(args, config: Config) -> int:
    resolver = Resolver(ReferenceStore.from_config(config))
    store = resolver.store
    store.codes_kind, weights_usable = codes_kind(config)  # computed codes are checked against these weights
    voices, failed = library_jobs(store, config.presets[0])
    bad = len(failed) + (not weights_usable)
    for job in failed:
        print(f"corrupt  voices.json entry: {job.reason}")
    for message in _collisions(store):  # switches to these names fail: said here, before a dataflow meets them
        print(f"ambiguous {message}")
    for job in voices:
        bad += _checked(_verify_voice, resolver, job, config.presets)
    for voice in _unlisted(store):  # written back for reference_audio events: no audio to check them against
        bad += _checked(_verify_unlisted, resolver, Job(voice, config.presets[0]), config.presets)
    print(f"verify: {bad} stale or corrupt")
    return 1 if bad else 0


def _checked(check, resolver: Resolver, job: Job, presets) -> int:
    """How many of the voice's files `check` finds stale or corrupt; an error checking it counts as one
    and is reported on its line, and the other voices are checked all the same."""
    try:
        return check(resolver, job, presets)
    except BrokenPipeError:  # the reader is gone: not this voice's failure (main ends the command)
        raise
    except Exception as err:
        print(f"failed   {printable(job.voice.name)}: {why(err)}")
        return 1


def _verify_voice(resolver: Resolver, job: Job, presets) -> int:
    store, job = resolver.store, load(resolver, job)
    name, bad = printable(job.voice.name), codes_problem(store, job.voice)
    for preset in presets:
        found = store.lookup(job.voice, preset, digest=digest(job))
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


def _verify_unlisted(resolver: Resolver, job: Job, presets) -> int:
    store = resolver.store
    bad = codes_problem(store, job.voice)
    for preset in presets:
        found = store.lookup(job.voice, preset)
        if found.state != ABSENT:
            print(f"{'ok' if found.fresh else found.state:8s} {printable(job.voice.name)} {preset.name} (not in voices.json)"
                  + ("" if found.fresh else f": {found.reason}"))
            bad += not found.fresh
    return bad


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
    store.codes_kind = codes_kind(config)[0]
    voices, problems = [], []
    listed = [(entry, True) for entry in store.library.voices()]
    for entry, in_library in listed + [(voice, False) for voice in _unlisted(store)]:
        if isinstance(entry, ReferenceMelError):
            problems.append(entry.message)
            continue
        try:
            voices.append(_describe(store, entry, config.presets, in_library=in_library))
        except Exception as err:  # one voice's error is reported; the others are listed
            problems.append(f"{entry.name}: {why(err)}")
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
    """Resolved as the node resolves it (its store, its lookup), computed when no stored file serves, written nowhere."""
    store = ReferenceStore.from_config(config)
    store.codes_kind = codes_kind(config)[0]
    resolver = Resolver(store, write_back=False)
    preset = config.presets[0]
    target, voice = Path(args.target), None
    if target.is_file():
        samples, rate, _ = read_audio(target, None, config.max_ref_seconds)  # named by the user: any folder
        samples = pcm.check_samples(samples, rate)
        request = Request(None).with_samples(samples, rate, audio_warnings(samples, rate, config.max_ref_seconds))
        origin = "compute (an audio file: the node computes it, then caches it)"
    else:
        voice = store.voice(args.target)
        if not store.knows(voice, config.presets):  # the node's unknown_voice
            print(f"error: {args.target!r} is neither an audio file nor a voice in {store.library.path} or with "
                  f"a spectrogram file in {store.codes_dir}", file=sys.stderr)
            return 2
        job = load(resolver, Job(voice, preset))  # the audio read whatever is stored: its numbers are shown
        request = job.request or Request(voice)  # unreadable: only a stored file can serve
    try:
        resolved = resolver.resolve(request, kind_of(preset))
    except ReferenceMelError as err:
        unread = f"{job.reason}; and " if voice is not None and job.reason else ""
        print(f"error: voice {args.target!r}: {unread}{why(err)}", file=sys.stderr)
        return 1
    if voice is not None:
        origin = _origin(resolved.stored)
    samples, rate = resolved.request.samples, resolved.request.sample_rate
    mel = resolved.served.data.reshape(resolved.served.shape)
    spec = mel[0]
    n_frames, hop_s = preset.frames_in(spec.shape), preset.hop_length / preset.sample_rate
    print(f"target     {args.target}")
    print(f"preset     {preset.name} (fingerprint {preset.fingerprint})")
    print(f"source     {origin}")
    print(f"shape      {list(mel.shape)}  {preset.layout}: {n_frames} frames of {hop_s * 1e3:.0f} ms"
          f" = {n_frames * hop_s:.2f} s")
    if samples is not None:
        print(f"audio      {samples.shape[0] / rate:.2f} s at {rate} Hz, {samples.shape[1]} channel(s)")
    for warning in resolved.request.warnings:
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
