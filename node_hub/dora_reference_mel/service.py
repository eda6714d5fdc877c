"""The node's behaviour, independent of how dora delivers events (custom node or operator).

`ReferenceMelService.answer(event)` turns one input event into its outputs, in the order to send them:
- `reference_audio` / `voice`: one `mel` (or `error`) per configured preset, or one `error` when the
  event itself is unusable;
- `text` (primespeech's protocol): when it switches voice, that voice's `mel` events first, then the
  text itself, forwarded unchanged;
and a `log` line (MoFA's shape) beside every error and warning.
Resolution per preset: memory cache -> the store's lookup (precomputed file) -> compute (then write back).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import signal
from .cache import ByteLRU
from .config import Config
from .contract import (
    CUSTOM_VOICE,
    ERROR_OUTPUT,
    INPUT_AUDIO,
    INPUT_TEXT,
    INPUT_VOICE,
    LOG_OUTPUT,
    MEL_METADATA,
    MEL_OUTPUT,
    TEXT_OUTPUT,
    ContractError,
    parse_voice_switch,
)
from .errors import ReferenceMelError
from .recipe import Preset
from .store import CORRUPT, FileStamp, ReferenceStore, Stored, Voice, VoiceLibrary, check_voice_name, samples_digest

log = logging.getLogger(__name__)

# Metadata keys this node sets on `mel`; every other input key (question_id, session_status, ...) passes through.
OWN_KEYS = frozenset(MEL_METADATA) - {"request_id"} | {"channels", "error"}
# dora stamps every message it carries: an input's `timestamp` is not forwarded (dora 0.4 cannot send it back).
DORA_KEYS = frozenset({"timestamp"})
UPSTREAM_SECONDS = (3.0, 10.0)  # GPT-SoVITS refuses references outside this range for code extraction
WARM_RATES = (16000, 24000, 48000)  # recording rates warmed at start (44.1k/22.05k resample uncompiled)
WARM_UP_ATTEMPTS = 30  # a second apart: another process's build of one kernel takes seconds
MAX_CHECKED_AUDIO = 4096  # digests of audio that passed the checks, kept beside the cache
ARROW_DTYPES = {pa.float32(): np.float32, pa.float64(): np.float64, pa.int16(): np.int16, pa.int32(): np.int32}


@dataclasses.dataclass
class Output:
    output_id: str
    value: pa.Array
    metadata: dict
    note: str | None = None  # an INFO line for the node's log, written once the output is sent (see `sent`)

    def sent(self) -> None:
        """Log the note: called by the node and the operator after sending, so no answer waits on its log line."""
        if self.note is not None:
            log.info("%s", self.note)


@dataclasses.dataclass(frozen=True)
class Served:
    """A spectrogram ready to send, shared by the cache: never written to."""

    array: pa.Array  # flat, C-order data of `shape`
    shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Request:
    """One reference to serve: samples in hand, or a file (a voice's ref_audio, a CUSTOM path) to read."""

    voice: Voice | None  # the store's voice; None for unnamed audio and CUSTOM references (cache only)
    audio_path: Path | None = None  # read when `samples` is None
    samples: np.ndarray | None = None  # float32 [n, channels]
    sample_rate: int | None = None
    digest: str | None = None  # samples_digest, computed once for every preset
    stamp: FileStamp | None = None  # of audio_path, when the samples were read from it
    warnings: tuple[str, ...] = ()
    about: tuple[tuple[str, object], ...] = ()  # voice metadata: voice, ref_text, speed_factor, languages

    def with_samples(self, samples: np.ndarray, sample_rate: int, warnings, stamp: FileStamp | None = None,
                     digest: str | None = None) -> Request:
        """digest: samples_digest of these samples when the caller has it already."""
        return dataclasses.replace(self, samples=samples, sample_rate=sample_rate, stamp=stamp,
                                   digest=digest or samples_digest(samples, sample_rate),
                                   warnings=self.warnings + tuple(warnings))


@dataclasses.dataclass(frozen=True)
class Resolved:
    served: Served
    source: str  # cache | precomputed | computed
    request: Request  # with the samples, once they had to be read
    write_back: str | None = None


class ReferenceMelService:
    def __init__(self, config: Config, node_name: str = "reference-mel"):
        self.config = config
        self.node_name = node_name
        self.store = ReferenceStore(config.codes_dir, VoiceLibrary(config.voices_config, config.model_dir),
                                    max_ref_seconds=config.max_ref_seconds, extra_roots=config.ref_audio_roots)
        self.store.clean_leftovers()
        self.cache = ByteLRU(int(config.cache_mb * 1024 * 1024))
        # audio file -> (stamp, digest): a repeated voice switch reaches the cache after one stat.
        self._file_digests: dict[Path, tuple[FileStamp, str]] = {}
        # samples_digest -> the warnings of audio that passed every check: the same samples sent again
        # are hashed, not scanned again (the digest covers the rate, the channels and every sample)
        self._checked_audio = ByteLRU(MAX_CHECKED_AUDIO)
        self._write_failures_logged: set[str] = set()

    # -- entry points ---------------------------------------------------------------------------

    def answer(self, event: dict) -> list[Output]:
        """The outputs for one dora INPUT event; never raises (the node and the operator call this)."""
        try:
            return self.handle(event["id"], event.get("value"), event.get("metadata") or {})
        except Exception:  # a bug must not take the dataflow down: answer, log, keep serving
            log.exception("internal error on %s", event.get("id"))
            err = ReferenceMelError("internal", "the node failed on this event (see its log); it keeps serving")
            outputs = self._error(err, _passthrough(event.get("metadata") or {}), None)
            if event.get("id") == INPUT_TEXT:  # the text still goes on
                metadata = {k: v for k, v in (event.get("metadata") or {}).items() if k not in DORA_KEYS}
                outputs.append(Output(TEXT_OUTPUT, event.get("value"), metadata))
            return outputs

    def startup(self) -> list[Output]:
        """The startup voice's mel (VOICE_CHARACTER / VOICE_NAME), sent before any event; [] when unset."""
        if not self.config.startup_voice:
            return []
        passthrough = {"request_id": uuid.uuid4().hex, "request_id_generated": True, "startup": True}
        return self._respond(lambda: self._voice_request(self.config.startup_voice), passthrough)

    def handle(self, input_id: str, value, metadata: dict) -> list[Output]:
        if input_id == INPUT_TEXT:
            return self._text(value, metadata)
        passthrough = _passthrough(metadata)
        if input_id == INPUT_AUDIO:
            return self._respond(lambda: self._audio_request(value, metadata), passthrough)
        if input_id == INPUT_VOICE:
            return self._respond(lambda: self._voice_request(_one_string(value, "voice")), passthrough)
        err = ReferenceMelError("unknown_input", f"input {input_id!r} is not known; wire reference_audio, voice or text")
        return self._error(err, passthrough, None)

    # -- requests -------------------------------------------------------------------------------

    def _respond(self, make_request, passthrough: dict) -> list[Output]:
        """Build the request, then answer it once per preset; errors become `error` + `log` outputs."""
        start = time.perf_counter()
        try:
            request = make_request()
        except ReferenceMelError as err:
            return self._error(err, passthrough, err.voice)
        outputs = []
        for preset in self.config.presets:
            try:  # audio read for one preset serves the next ones too
                resolved = self._resolve(request, preset)
                request = resolved.request
                outputs.append(self._mel_output(resolved, preset, passthrough, start))
            except ReferenceMelError as err:
                outputs += self._error(err, passthrough, dict(request.about).get("voice"), preset)
        outputs += [self._log("WARNING", warning) for warning in request.warnings]
        return outputs

    def _text(self, value, metadata: dict) -> list[Output]:
        """primespeech text: a voice switch first becomes that voice's mel; the text always goes on."""
        forwarded = {k: v for k, v in metadata.items() if k not in DORA_KEYS}
        outputs = []
        try:
            switch = parse_voice_switch(_one_string(value, "text"))
        except (ReferenceMelError, ContractError) as err:
            if isinstance(err, ContractError):
                err = ReferenceMelError("bad_text", f"{err}; it is forwarded as is")
            switch, outputs = None, self._error(err, _passthrough(metadata), None)
        if switch is not None:
            if not isinstance(forwarded.get("request_id"), str) or not forwarded["request_id"]:
                forwarded["request_id"] = uuid.uuid4().hex  # the one key added: it links the text to its mel
            passthrough = _passthrough(forwarded)
            if switch.name == CUSTOM_VOICE:
                outputs += self._respond(lambda: self._custom_request(switch), passthrough)
            else:
                outputs += self._respond(lambda: self._voice_request(switch.name), passthrough)
        outputs.append(Output(TEXT_OUTPUT, value, forwarded))
        return outputs

    def _voice_request(self, name: str) -> Request:
        voice = self.store.voice(name)
        if voice.ref_audio is None and not voice.in_library and not self._has_stored(voice):
            raise ReferenceMelError(
                "unknown_voice", f"voice {name!r} is not in {self.store.library.path} and has no precomputed "
                f"spectrogram in {self.store.codes_dir}; add it to voices.json or send reference_audio", voice=name)
        about = [("voice", voice.name)] + [(k, float(v) if k == "speed_factor" else v) for k, v in voice.info]
        return Request(voice, audio_path=voice.ref_audio, about=tuple(about))

    def _has_stored(self, voice: Voice) -> bool:
        return any(self.store.mel_file(voice, p).exists() for p in self.config.presets)

    def _custom_request(self, switch) -> Request:
        path = Path(switch.ref_audio).expanduser()
        about = [("voice", CUSTOM_VOICE), ("ref_text", switch.ref_text)]
        about += [("prompt_lang", switch.lang)] if switch.lang else []
        return Request(None, audio_path=path.absolute(), about=tuple(about))

    def _audio_request(self, value, metadata: dict) -> Request:
        sample_rate = _int_metadata(metadata, "sample_rate", required=True)
        channels = _int_metadata(metadata, "channels", default=1)
        voice, warnings = None, []
        if metadata.get("voice") is not None:
            try:
                voice = self.store.voice(metadata["voice"])
            except ReferenceMelError as err:
                if err.code not in ("bad_voices_config", "ambiguous_voice"):
                    raise
                # The samples are here: serve them, by name alone, and say what is wrong with the library.
                voice = Voice(name=check_voice_name(metadata["voice"]))
                warnings.append(err.message)
        flat = _pcm_from_arrow(value)
        if channels < 1:
            raise ReferenceMelError("bad_channels", f"channels={channels} must be at least 1")
        if flat.size % channels:
            raise ReferenceMelError(
                "bad_channels", f"{flat.size} samples do not split into channels={channels}; "
                "send interleaved frames, all channels of each")
        about = (("voice", voice.name),) + tuple(voice.info) if voice else ()
        request = Request(voice, about=about, warnings=tuple(warnings))
        samples = flat.reshape(-1, channels)
        # float32 is already canonical: hash first, and skip the checks for audio that passed them before
        digest = samples_digest(samples, sample_rate) if samples.dtype == np.float32 else None
        checked = self._checked_audio.get(digest) if digest else None
        if checked is not None:
            return request.with_samples(samples, sample_rate, checked, digest=digest)
        samples = signal.check_samples(samples, sample_rate)
        if samples.dtype != np.float32:  # canonical float32 PCM: the same audio hashes the same however sent
            samples = samples.astype(np.float32) / np.float32(32768.0 if samples.dtype == np.int16 else 2147483648.0)
        audio_warnings = tuple(self._audio_warnings(samples, sample_rate))
        request = request.with_samples(samples, sample_rate, audio_warnings, digest=digest)
        self._checked_audio.put(request.digest, audio_warnings, 1)
        return request

    def _audio_warnings(self, samples: np.ndarray, sample_rate: int) -> list[str]:
        seconds = samples.shape[0] / sample_rate
        if seconds > self.config.max_ref_seconds:
            raise ReferenceMelError(
                "too_long", f"the reference is {seconds:.1f} s, over MAX_REF_SECONDS={self.config.max_ref_seconds:g}; "
                "send 3 to 10 s of speech (or raise MAX_REF_SECONDS)")
        warnings = []
        if not UPSTREAM_SECONDS[0] <= seconds <= UPSTREAM_SECONDS[1]:
            warnings.append(f"duration {seconds:.2f} s is outside GPT-SoVITS's 3 to 10 s reference range")
        peak = max(float(samples.max()), -float(samples.min()))  # no |x| temporary
        if peak > 2:
            warnings.append(f"peak {peak:.3g} is far above 1 (clipped or mis-scaled PCM); served peak-normalised")
        return warnings

    # -- resolution -----------------------------------------------------------------------------

    def _resolve(self, request: Request, preset: Preset) -> Resolved:
        found: Stored | None = None
        if request.samples is None:
            stamp = FileStamp.of(request.audio_path)  # one stat serves the cache check and the lookup
            hit = self._cached_file(request.audio_path, stamp, preset)
            if hit is not None:
                return Resolved(hit, "cache", request)
            if request.voice is not None:
                found = self._lookup(request.voice, preset, audio=stamp)
                if found.fresh:
                    return self._serve_stored(found, request, preset)
            request = self._read_audio(request, preset, found)
        signal.check_long_enough(request.samples.shape[0], request.sample_rate, preset)
        cached = self.cache.get((request.digest, preset.fingerprint))
        if cached is not None:
            return Resolved(cached, "cache", request)
        if request.voice is not None:
            found = found.against(request.digest) if found else self._lookup(request.voice, preset,
                                                                             digest=request.digest)
            if found.fresh:
                return Resolved(self._remember(found.data, request.digest, preset), "precomputed", request)
        mel = signal.reference_mel(request.samples, request.sample_rate, preset=preset)[0]
        if not np.isfinite(mel).all():
            raise ReferenceMelError(
                "non_finite_audio", f"the {preset.name} spectrogram overflows float32: the samples reach "
                f"{np.abs(request.samples).max():.3g}; send PCM scaled to [-1, 1]")
        write_back = self._write_back(request, mel, preset) if request.voice is not None else None
        return Resolved(self._remember(mel, request.digest, preset), "computed", request, write_back)

    def _lookup(self, voice: Voice, preset: Preset, **identity) -> Stored:
        found = self.store.lookup(voice, preset, **identity)
        if found.state == CORRUPT:
            log.warning("not serving stored %s of %r: %s; recomputing", preset.name, voice.name, found.reason)
        return found

    def _cached_file(self, path: Path | None, stamp: FileStamp | None, preset: Preset) -> Served | None:
        """A voice switch whose audio file is unchanged (same stamp) since it was last hashed: the cache."""
        known = self._file_digests.get(path)
        if known is None or known[0] != stamp:
            return None
        return self.cache.get((known[1], preset.fingerprint))

    def _serve_stored(self, found: Stored, request: Request, preset: Preset) -> Resolved:
        """A stored file proven by its audio's stamp. Its sidecar names the samples' digest, so samples
        already served (say as a reference_audio event) answer from the cache, whatever came first."""
        digest = found.sidecar.source_digest if found.sidecar else None
        if digest and found.sidecar.source_audio is not None and request.audio_path is not None:
            self._file_digests[request.audio_path] = (found.sidecar.source_audio, digest)  # proven by the stamp
        cached = self.cache.get((digest, preset.fingerprint)) if digest else None
        if cached is not None:
            return Resolved(cached, "cache", request)
        return Resolved(self._remember(found.data, digest, preset), "precomputed", request)

    def _read_audio(self, request: Request, preset: Preset, found: Stored | None) -> Request:
        if request.audio_path is None:
            why = f"({found.reason})" if found is not None and found.reason else ""
            raise ReferenceMelError(
                "no_ref_audio", f"voice {request.voice.name!r} has no ref_audio in voices.json and no usable precomputed "
                f"{preset.name} spectrogram {why}; add ref_audio or run `reference-mel precompute`",
                voice=request.voice.name)
        samples, sample_rate, stamp = self.store.read_audio(request.audio_path)
        samples = signal.check_samples(samples, sample_rate)
        request = request.with_samples(samples, sample_rate, self._audio_warnings(samples, sample_rate), stamp)
        self._file_digests[request.audio_path] = (stamp, request.digest)
        return request

    def _write_back(self, request: Request, mel: np.ndarray, preset: Preset) -> str:
        if not self.config.write_back:
            return "off"
        try:
            self.store.save_mel(request.voice, preset, mel, source_digest=request.digest,
                                source_sample_rate=request.sample_rate, audio=request.stamp)
            return "written"
        except OSError as err:
            folder = str(self.store.codes_dir)
            if folder not in self._write_failures_logged:  # once per folder: a read-only store is a state
                self._write_failures_logged.add(folder)
                log.error("cannot write precomputed spectrograms to %s (%s); serving from memory only", folder, err)
            return "failed"

    def _remember(self, mel: np.ndarray, digest: str | None, preset: Preset) -> Served:
        flat = np.ascontiguousarray(mel, dtype=self.config.mel_dtype).reshape(-1)
        served = Served(pa.array(flat), (1, *mel.shape))
        if digest:
            self.cache.put((digest, preset.fingerprint), served, flat.nbytes)
        return served

    # -- outputs --------------------------------------------------------------------------------

    def _mel_output(self, resolved: Resolved, preset: Preset, passthrough: dict, start: float) -> Output:
        request = resolved.request
        metadata = dict(passthrough)
        metadata.update(
            shape=list(resolved.served.shape), layout=preset.layout, dtype=self.config.mel_dtype, preset=preset.name,
            sample_rate=preset.sample_rate, n_fft=preset.n_fft, hop_length=preset.hop_length,
            source=resolved.source, fingerprint=preset.fingerprint,
        )
        if preset.n_mels:
            metadata["n_mels"] = preset.n_mels
        metadata.update(request.about)
        if resolved.write_back:
            metadata["write_back"] = resolved.write_back
        if request.voice is not None:
            codes = self.store.load_codes(request.voice)
            if codes is None:
                metadata["codes_status"] = "missing"
            else:
                metadata["codes"] = codes.tolist()
        elif request.about:  # CUSTOM: no codes; the consumer extracts them
            metadata["codes_status"] = "missing"
        if request.warnings:
            metadata["warnings"] = list(request.warnings)
        metadata["elapsed_ms"] = (time.perf_counter() - start) * 1000.0
        note = (f"mel voice={metadata.get('voice')} preset={preset.name} source={resolved.source} "
                f"shape={metadata['shape']} request_id={metadata['request_id']} elapsed_ms={metadata['elapsed_ms']:.2f}")
        return Output(MEL_OUTPUT, resolved.served.array, metadata, note)

    def _error(self, err: ReferenceMelError, passthrough: dict, voice, preset: Preset | None = None) -> list[Output]:
        body = err.to_dict()
        body["voice"] = body["voice"] or (voice if isinstance(voice, str) else None)
        metadata = dict(passthrough, error=err.code)
        if preset is not None:
            metadata["preset"] = body["preset"] = preset.name
        log.warning("error code=%s request_id=%s: %s", err.code, passthrough.get("request_id"), err.message)
        return [Output(ERROR_OUTPUT, pa.array([json.dumps(body)]), metadata),
                self._log("ERROR", f"[{err.code}] {err.message}")]

    def _log(self, level: str, message: str) -> Output:
        """A line for MoFA's system log: {"level", "message", "timestamp", "node"} as one JSON string."""
        line = {"level": level, "message": message, "timestamp": time.time(), "node": self.node_name}
        return Output(LOG_OUTPUT, pa.array([json.dumps(line)]), {})

    def largest_answer(self) -> pa.Array:
        """Zeros the size of the largest `mel` this node sends for a reference of upstream's longest length."""
        seconds = UPSTREAM_SECONDS[1]
        elements = max(p.n_bins * p.n_frames(int(seconds * p.sample_rate)) for p in self.config.presets)
        return pa.array(np.zeros(elements, dtype=self.config.mel_dtype))

    def warm_up(self) -> None:
        """Run every preset once on 10 s of audio (upstream's longest reference) at its own rates and at
        the common recording rates whose resampling is compiled: MLX builds those kernels (seconds, the
        first time on a machine; then from its disk cache) and fills its buffer cache before any event."""
        rng = np.random.default_rng(0)
        for preset in self.config.presets:
            for rate in sorted({preset.sample_rate, preset.input_rate, *WARM_RATES}):
                samples = (rng.standard_normal((rate * 10, 1)) * 0.1).astype(np.float32)
                for attempt in range(WARM_UP_ATTEMPTS):
                    try:
                        signal.reference_mel(samples, rate, preset=preset)
                        break
                    except RuntimeError as err:
                        # MLX's kernel cache on disk is shared by every process on the machine, and it is
                        # not written atomically: a node starting beside another that is building the same
                        # kernel can find a half-written library. Once the other is done, it loads.
                        if attempt == WARM_UP_ATTEMPTS - 1:
                            raise
                        log.warning("warm-up of %s at %d Hz: %s; retrying", preset.name, rate, str(err)[:200])
                        time.sleep(1.0)


def _passthrough(metadata: dict) -> dict:
    """The input's metadata minus this node's own keys, with a request_id (generated when absent)."""
    passthrough = {k: v for k, v in metadata.items() if k not in OWN_KEYS and k not in DORA_KEYS}
    if not isinstance(passthrough.get("request_id"), str) or not passthrough["request_id"]:
        passthrough["request_id"] = uuid.uuid4().hex
        passthrough["request_id_generated"] = True
    return passthrough


def _int_metadata(metadata: dict, key: str, *, required: bool = False, default: int | None = None) -> int:
    code = {"sample_rate": "bad_sample_rate", "channels": "bad_channels"}[key]
    value = metadata.get(key)
    if value is None:
        if required:
            raise ReferenceMelError(code, f"metadata {key} is missing; send it as an int with every reference_audio event")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReferenceMelError(code, f"metadata {key}={value!r} must be an integer")
    return value


def _pcm_from_arrow(value) -> np.ndarray:
    """A flat PCM array from an Arrow array (zero-copy where Arrow allows), or a clear error."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array):
        raise ReferenceMelError("bad_dtype", f"reference_audio must be an Arrow array, got {type(value).__name__}")
    dtype = ARROW_DTYPES.get(value.type)
    if dtype is None:
        raise ReferenceMelError(
            "bad_dtype", f"reference_audio of Arrow type {value.type} is not PCM; send float32, float64, int16 "
            "or int32 samples, interleaved when multichannel")
    if value.null_count:
        raise ReferenceMelError(
            "null_samples", f"reference_audio has {value.null_count} null samples; send a dense array")
    return value.to_numpy(zero_copy_only=True)


def _one_string(value, what: str) -> str:
    """The one string of a `voice` (checked as a name) or `text` event."""
    code = "bad_voice" if what == "voice" else "bad_text"
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array) or not (pa.types.is_string(value.type) or pa.types.is_large_string(value.type)):
        raise ReferenceMelError(
            code, f"a {what} event must be an Arrow string array with one string, got {getattr(value, 'type', value)}")
    if len(value) != 1 or value.null_count:
        raise ReferenceMelError(code, f"a {what} event must hold exactly one non-null string, got {len(value)} values")
    text = value[0].as_py()
    return check_voice_name(text) if what == "voice" else text
