"""The node's behaviour, independent of how dora delivers events (custom node or operator).

`ReferenceMelService.handle(input_id, value, metadata)` turns one input event into its outputs:
one `mel` (or `error`) per configured preset, or one `error` when the event itself is unusable.
Resolution order per preset: memory cache -> precomputed file -> compute (then write back).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid

import numpy as np
import pyarrow as pa

from . import signal
from .cache import ByteLRU
from .config import Config
from .errors import ReferenceMelError
from .recipe import Preset
from .store import (
    AudioStamp,
    CorruptFile,
    ReferenceStore,
    Voice,
    VoiceLibrary,
    check_voice_name,
    read_audio,
    samples_digest,
    staleness,
)

log = logging.getLogger(__name__)

INPUT_AUDIO, INPUT_VOICE = "reference_audio", "voice"
OUTPUT_MEL, OUTPUT_ERROR = "mel", "error"
# Metadata keys this node sets on its outputs; every other input key passes through unchanged.
OWN_KEYS = frozenset({
    "shape", "dtype", "preset", "n_mels", "sample_rate", "n_fft", "hop_length", "voice", "source", "fingerprint",
    "codes", "codes_status", "elapsed_ms", "write_back", "warnings", "channels",
})
UPSTREAM_SECONDS = (3.0, 10.0)  # GPT-SoVITS refuses references outside this range for code extraction
ARROW_DTYPES = {pa.float32(): np.float32, pa.float64(): np.float64, pa.int16(): np.int16, pa.int32(): np.int32}


@dataclasses.dataclass
class Output:
    output_id: str
    value: pa.Array
    metadata: dict


@dataclasses.dataclass(frozen=True)
class Served:
    """A spectrogram ready to send, shared by the cache: never written to."""

    array: pa.Array  # flat float32, C-order data of [1, n_bins, n_frames]
    shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Request:
    samples: np.ndarray | None  # float32 [n, channels]; None for a voice event until the audio is read
    sample_rate: int | None
    voice: Voice | None
    warnings: tuple[str, ...] = ()
    digest: str | None = None  # samples_digest(samples, sample_rate), computed once for every preset
    stamp: AudioStamp | None = None  # when the samples were read from the voice's ref_audio file

    @classmethod
    def with_samples(cls, samples: np.ndarray, sample_rate: int, voice: Voice | None, warnings,
                     stamp: AudioStamp | None = None) -> Request:
        return cls(samples, sample_rate, voice, tuple(warnings), samples_digest(samples, sample_rate), stamp)


class ReferenceMelService:
    def __init__(self, config: Config):
        self.config = config
        self.store = ReferenceStore(config.codes_dir, VoiceLibrary(config.voices_config))
        self.cache = ByteLRU(int(config.cache_mb * 1024 * 1024))
        # (voice name, fingerprint) -> (audio stamp, digest): lets a repeated voice event hit the cache
        # after one stat of its audio file, without reading or hashing the audio again.
        self._voice_index: dict[tuple[str, str], tuple[AudioStamp | None, str]] = {}
        self._write_failures_logged: set[str] = set()

    # -- entry points ---------------------------------------------------------------------------

    def answer(self, event: dict) -> list[Output]:
        """The outputs for one dora INPUT event; never raises (the node and the operator call this)."""
        try:
            return self.handle(event["id"], event.get("value"), event.get("metadata") or {})
        except Exception:  # a bug must not take the dataflow down: answer, log, keep serving
            log.exception("internal error on %s", event.get("id"))
            return self.internal_error(event.get("metadata") or {})

    def handle(self, input_id: str, value, metadata: dict) -> list[Output]:
        start = time.perf_counter()
        passthrough = {k: v for k, v in (metadata or {}).items() if k not in OWN_KEYS}
        if not isinstance(passthrough.get("request_id"), str) or not passthrough["request_id"]:
            passthrough["request_id"] = uuid.uuid4().hex
            passthrough["request_id_generated"] = True
        voice_name = None
        try:
            if input_id == INPUT_AUDIO:
                request = self._audio_request(value, metadata or {})
            elif input_id == INPUT_VOICE:
                voice_name = _voice_event_name(value)
                request = Request(None, None, self.store.voice(voice_name))
            else:
                raise ReferenceMelError(
                    "unknown_input", f"input {input_id!r} is not known; wire reference_audio or voice")
            voice_name = request.voice.name if request.voice else voice_name
        except ReferenceMelError as err:
            return [self._error(err, passthrough, voice_name)]
        outputs = []
        for preset in self.config.presets:
            try:  # a voice event's audio, once read for one preset, serves the next ones too
                output, request = self._serve(request, preset, passthrough, start)
                outputs.append(output)
            except ReferenceMelError as err:
                outputs.append(self._error(err, passthrough, voice_name, preset))
            except CorruptFile as err:  # store problem found where no recompute is possible
                outputs.append(self._error(ReferenceMelError("corrupt_store", str(err)), passthrough, voice_name, preset))
        return outputs

    # -- decoding -------------------------------------------------------------------------------

    def _audio_request(self, value, metadata: dict) -> Request:
        sample_rate = _int_metadata(metadata, "sample_rate", required=True)
        channels = _int_metadata(metadata, "channels", default=1)
        voice, warnings = None, []
        if metadata.get("voice") is not None:
            try:
                voice = self.store.voice(metadata["voice"])
            except ReferenceMelError as err:
                if err.code != "bad_voices_config":
                    raise
                # The samples are here: serve them, by name alone, and say what is wrong with the library.
                voice = Voice(name=metadata["voice"])
                warnings.append(err.message)
        flat = _pcm_from_arrow(value)
        if channels < 1:
            raise ReferenceMelError("bad_channels", f"channels={channels} must be at least 1")
        if flat.size % channels:
            raise ReferenceMelError(
                "bad_channels", f"{flat.size} samples do not split into channels={channels}; "
                "send interleaved frames, all channels of each")
        samples = signal.check_samples(flat.reshape(-1, channels), sample_rate)
        if samples.dtype != np.float32:  # canonical float32 PCM: the same audio hashes the same however sent
            samples = samples.astype(np.float32) / np.float32(32768.0 if samples.dtype == np.int16 else 2147483648.0)
        return Request.with_samples(samples, sample_rate, voice, warnings + self._audio_warnings(samples, sample_rate))

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

    def _serve(self, request: Request, preset: Preset, passthrough: dict, start: float) -> tuple[Output, Request]:
        extra: dict = {}
        if request.samples is None:
            served, source, request = self._resolve_voice(request, preset, extra)
        else:
            served, source = self._resolve_samples(request, preset, extra)
        metadata = dict(passthrough)
        metadata.update(
            shape=list(served.shape), dtype="float32", preset=preset.name, sample_rate=preset.sample_rate,
            n_fft=preset.n_fft, hop_length=preset.hop_length, source=source, fingerprint=preset.fingerprint,
        )
        if preset.n_mels:
            metadata["n_mels"] = preset.n_mels
        metadata.update(extra)
        if request.voice is not None:
            metadata["voice"] = request.voice.name
            codes = self.store.load_codes(request.voice)
            if codes is None:
                metadata["codes_status"] = "missing"
            else:
                metadata["codes"] = codes.tolist()
        if request.warnings:
            metadata["warnings"] = list(request.warnings)
        metadata["elapsed_ms"] = (time.perf_counter() - start) * 1000.0
        log.info("mel voice=%s preset=%s source=%s shape=%s request_id=%s elapsed_ms=%.2f",
                 metadata.get("voice"), preset.name, source, metadata["shape"], metadata["request_id"],
                 metadata["elapsed_ms"])
        return Output(OUTPUT_MEL, served.array, metadata), request

    def _resolve_samples(self, request: Request, preset: Preset, extra: dict) -> tuple[Served, str]:
        signal.check_long_enough(request.samples.shape[0], request.sample_rate, preset)
        digest = request.digest
        if request.stamp is not None:  # read from the voice's file: a later voice event may hit the cache
            self._voice_index[(request.voice.name, preset.fingerprint)] = (request.stamp, digest)
        cached = self.cache.get((digest, preset.fingerprint))
        if cached is not None:
            return cached, "cache"
        if request.voice is not None:
            stored = self._load_stored(request.voice, preset)
            if stored is not None and self._stored_matches(stored, preset, digest, request):
                return self._remember(stored.data, digest, preset), "precomputed"
        return self._compute(request, digest, preset, extra), "computed"

    def _resolve_voice(self, request: Request, preset: Preset, extra: dict) -> tuple[Served, str, Request]:
        voice = request.voice
        stamp = AudioStamp.of(voice.ref_audio)
        known = self._voice_index.get((voice.name, preset.fingerprint))
        if known is not None and known[0] == stamp:
            cached = self.cache.get((known[1], preset.fingerprint))
            if cached is not None:
                return cached, "cache", request
        stored = self._load_stored(voice, preset)
        if stored is not None and (stored.sidecar is None or stored.sidecar.get("fingerprint") == preset.fingerprint):
            recorded = (stored.sidecar or {}).get("source_audio")
            fresh = (stored.sidecar is None or voice.ref_audio is None or stamp is None
                     or recorded == dataclasses.asdict(stamp))
            if fresh:
                digest = (stored.sidecar or {}).get("source_sha256")
                served = self._remember(stored.data, digest, preset)
                if digest:
                    self._voice_index[(voice.name, preset.fingerprint)] = (stamp, digest)
                return served, "precomputed", request
        # The audio file changed since the sidecar was written (or there is no stored file): read it.
        if voice.ref_audio is None:
            if not voice.in_library:
                raise ReferenceMelError(
                    "unknown_voice", f"voice {voice.name!r} is not in {self.store.library.path} and has no "
                    f"precomputed spectrogram in {self.store.codes_dir}; add it to voices.json or send "
                    "reference_audio", voice=voice.name)
            raise ReferenceMelError(
                "no_ref_audio", f"voice {voice.name!r} has no ref_audio in voices.json and no usable precomputed "
                f"{preset.name} spectrogram; add ref_audio or run `reference-mel precompute`", voice=voice.name)
        samples, sample_rate = read_audio(voice.ref_audio)
        request = Request.with_samples(samples, sample_rate, voice, self._audio_warnings(samples, sample_rate), stamp)
        if stored is not None:
            signal.check_long_enough(samples.shape[0], sample_rate, preset)
            if self._stored_matches(stored, preset, request.digest, request):
                self._voice_index[(voice.name, preset.fingerprint)] = (stamp, request.digest)
                return self._remember(stored.data, request.digest, preset), "precomputed", request
        served, source = self._resolve_samples(request, preset, extra)
        return served, source, request

    def _load_stored(self, voice: Voice, preset: Preset):
        try:
            return self.store.load_mel(voice, preset)
        except CorruptFile as err:
            log.warning("not serving stored %s spectrogram of %r: %s; recomputing", preset.name, voice.name, err)
            return None

    @staticmethod
    def _stored_matches(stored, preset: Preset, digest: str, request: Request) -> bool:
        if stored.sidecar is None:  # legacy .bin: only its frame count can be checked against the audio
            n = signal.resampled_length(request.samples.shape[0], request.sample_rate, preset.sample_rate)
            return stored.data.shape[1] == preset.n_frames(n)
        return staleness(stored, preset, digest) is None

    def _compute(self, request: Request, digest: str, preset: Preset, extra: dict) -> Served:
        mel = signal.reference_mel(request.samples, request.sample_rate, preset=preset)[0]  # [n_bins, n_frames]
        if request.voice is not None:
            extra["write_back"] = self._write_back(request, mel, digest, preset)
        return self._remember(mel, digest, preset)

    def _write_back(self, request: Request, mel: np.ndarray, digest: str, preset: Preset) -> str:
        if not self.config.write_back:
            return "off"
        try:
            self.store.save_mel(request.voice, preset, mel, source_sha256=digest,
                                source_sample_rate=request.sample_rate, audio=request.stamp)
            return "written"
        except OSError as err:
            folder = str(self.store.mel_file(request.voice, preset).parent)
            if folder not in self._write_failures_logged:  # once per folder: a read-only store is a state
                self._write_failures_logged.add(folder)
                log.error("cannot write precomputed spectrograms to %s (%s); serving from memory only", folder, err)
            return "failed"

    def _remember(self, mel: np.ndarray, digest: str | None, preset: Preset) -> Served:
        flat = np.ascontiguousarray(mel, dtype=np.float32).reshape(-1)
        served = Served(pa.array(flat), (1, *mel.shape))
        if digest:
            self.cache.put((digest, preset.fingerprint), served, flat.nbytes)
        return served

    # -- errors ---------------------------------------------------------------------------------

    def _error(self, err: ReferenceMelError, passthrough: dict, voice, preset: Preset | None = None) -> Output:
        body = err.to_dict()
        body["voice"] = body["voice"] or (voice if isinstance(voice, str) else None)
        metadata = dict(passthrough, error=err.code)
        if preset is not None:
            metadata["preset"] = preset.name
            body["preset"] = preset.name
        log.warning("error code=%s request_id=%s: %s", err.code, passthrough.get("request_id"), err.message)
        return Output(OUTPUT_ERROR, pa.array([json.dumps(body)]), metadata)

    def internal_error(self, metadata: dict) -> list[Output]:
        passthrough = {k: v for k, v in metadata.items() if k not in OWN_KEYS}
        err = ReferenceMelError("internal", "the node failed on this event (see its log); it keeps serving")
        return [self._error(err, passthrough, None)]

    def warm_up(self) -> None:
        """Run every preset once on 10 s of audio (upstream's longest reference) at the preset's rate
        and at 48 kHz: MLX compiles its kernels and fills its buffer cache before the first event."""
        rng = np.random.default_rng(0)
        for preset in self.config.presets:
            for rate in (preset.sample_rate, 48000):
                samples = (rng.standard_normal((rate * 10, 1)) * 0.1).astype(np.float32)
                signal.reference_mel(samples, rate, preset=preset)


def _int_metadata(metadata: dict, key: str, *, required: bool = False, default: int | None = None) -> int:
    value = metadata.get(key)
    if value is None:
        if required:
            raise ReferenceMelError(
                f"bad_{key}", f"metadata {key} is missing; send it as an int with every reference_audio event")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReferenceMelError(f"bad_{key}", f"metadata {key}={value!r} must be an integer")
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


def _voice_event_name(value) -> str:
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array) or not (pa.types.is_string(value.type) or pa.types.is_large_string(value.type)):
        raise ReferenceMelError(
            "bad_voice", f"a voice event must be an Arrow string array with one name, got {getattr(value, 'type', value)}")
    if len(value) != 1 or value.null_count:
        raise ReferenceMelError(
            "bad_voice", f"a voice event must hold exactly one non-null name, got {len(value)} values")
    return check_voice_name(value[0].as_py())
