"""The node's behaviour, independent of how dora delivers events (custom node or operator).

`ReferenceMelService.answer(event)` turns one input event into its outputs, in the order to send them:
- `reference_audio` / `voice`: one `mel` (or `error`) per configured preset, or one `error` when the
  event itself is unusable;
- `text` (primespeech's protocol): when it switches voice, that voice's `mel` events first, then the
  text itself, forwarded unchanged;
and a `log` line (MoFA's shape) beside every error and warning.
Each preset's spectrogram is resolved by resolve.Resolver (memory cache -> the store's lookup -> compute ->
write-back); this module turns events into its requests, and its answers into outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import numpy as np
import pyarrow as pa

from ..cache import ByteLRU
from ..config import Config
from ..errors import ReferenceMelError
from ..features import pcm
from ..features.recipe import Preset
from ..resolve import Codes, Request, Resolved, Resolver, audio_warnings
from ..store import ReferenceStore
from ..store.kinds import kind_of, load_codes_kind
from ..store.library import Voice
from ..store.names import check_voice_name, samples_digest, shown
from .contract import (
    ERROR_OUTPUT,
    INPUT_AUDIO,
    INPUT_TEXT,
    INPUT_VOICE,
    LOG_OUTPUT,
    MAX_CHANNELS,
    MEL_METADATA,
    MEL_OUTPUT,
    REFERENCE_KEY,
    TEXT_OUTPUT,
    ContractError,
    VoiceSwitch,
    error_value,
    int_metadata,
    log_value,
    mel_metadata,
    one_string,
    parse_voice_switch,
    pcm_from_arrow,
)
from .last_voice import LastVoice

log = logging.getLogger(__name__)

# Metadata keys this node sets on `mel` (and on texts); every other input key (question_id, session_status, ...)
# passes through.
OWN_KEYS = frozenset(MEL_METADATA) - {"request_id"} | {"channels", "error", REFERENCE_KEY}
# dora stamps every message it carries: an input's `timestamp` is not forwarded (dora 0.4 cannot send it back).
DORA_KEYS = frozenset({"timestamp"})
MAX_CHECKED_AUDIO = 4096  # digests of audio that passed the checks, kept beside the cache


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


class ReferenceMelService:
    def __init__(self, config: Config, node_name: str = "reference-mel", run: tuple[str, str] | None = None):
        """run: (node id, dataflow id) under dora (last_voice.dora_run): the voice texts were last switched to
        is kept for a restart of this node in this dataflow."""
        self.config = config
        self.node_name = node_name
        self.store = ReferenceStore.from_config(config)
        self.store.clean_leftovers()
        try:  # the codes model, loaded before any event; without it codes are only read from files
            self.store.codes_kind = load_codes_kind(config.hubert_weights, config.sovits_weights)
        except ReferenceMelError as err:
            log.error("semantic codes are only read from codes files, not computed: [%s] %s", err.code, err.message)
        self.resolver = Resolver(self.store, cache_bytes=int(config.cache_mb * 1024 * 1024),
                                 write_back=config.write_back, dtype=config.mel_dtype)
        # samples_digest -> the warnings of audio that passed every check: the same samples sent again
        # are hashed, not scanned again (the digest covers the rate, the channels and every sample)
        self._checked_audio = ByteLRU(MAX_CHECKED_AUDIO)
        self.reference_request_id: str | None = None  # the reference_id texts are spoken with: see _text
        # The startup reference's mel events, sent again just before the first text spoken with them: dora
        # delivers a message sent before a receiver on another daemon has connected to no one (docs/delivery.md)
        self._startup_mels: list[Output] = []
        self.last_voice = LastVoice(config.codes_dir, run, write_back=config.write_back) if run else None

    # -- entry points ---------------------------------------------------------------------------

    def answer(self, event: dict) -> list[Output]:
        """The outputs for one dora INPUT event; never raises (the node and the operator call this)."""
        metadata = event.get("metadata") or {}
        try:
            return self.handle(event.get("id"), event.get("value"), metadata)
        except Exception:  # a bug must not take the dataflow down: answer, log, keep serving
            log.exception("internal error on %s", shown(event.get("id")))
            err = ReferenceMelError("internal", "the node failed on this event (see its log); it keeps serving")
            passthrough = _passthrough(metadata)
            outputs = self._error(err, passthrough, None)
            if event.get("id") == INPUT_TEXT:  # the text still goes on, with the request_id its error carries
                outputs.append(Output(TEXT_OUTPUT, event.get("value"), self._forwarded(metadata, passthrough)))
            return outputs

    def startup(self) -> list[Output]:
        """The startup voice's mel (VOICE_CHARACTER / VOICE_NAME), sent before any event; [] when unset. A
        node dora restarted sends instead the voice its texts were last switched to in this dataflow.
        Never raises: a startup voice that cannot serve answers `error` (marked `startup`) like any event."""
        restored = self.last_voice.read() if self.last_voice else None
        if restored is not None:
            log.info("restarted in the same dataflow: serving %s, the voice texts were last switched to, instead of "
                     "the startup voice", shown(restored.ref_audio or restored.name))
            switch = restored
        elif self.config.startup_voice:
            switch = VoiceSwitch(self.config.startup_voice, "")
        else:
            return []
        passthrough = {"request_id": uuid.uuid4().hex, "request_id_generated": True, "startup": True}
        try:
            outputs = self._respond(lambda: self._switch_request(switch), passthrough)
        except Exception:
            log.exception("internal error on the startup voice %s", shown(switch.name))
            err = ReferenceMelError("internal", "the node failed on its startup voice (see its log); it keeps serving")
            return self._error(err, passthrough, switch.name)
        if self._switched(outputs):
            self._startup_mels = [out for out in outputs if out.output_id == MEL_OUTPUT]
        return outputs

    def handle(self, input_id: str, value, metadata: dict) -> list[Output]:
        if input_id == INPUT_TEXT:
            return self._text(value, metadata)
        passthrough = _passthrough(metadata)
        if input_id == INPUT_AUDIO:
            return self._respond(lambda: self._audio_request(value, metadata), passthrough)
        if input_id == INPUT_VOICE:
            return self._respond(lambda: self._voice_request(check_voice_name(one_string(value, "voice"))), passthrough)
        err = ReferenceMelError("unknown_input", f"input {shown(input_id)} is not known; wire reference_audio, voice "
                                "or text")
        return self._error(err, passthrough, None)

    # -- requests -------------------------------------------------------------------------------

    def _respond(self, make_request, passthrough: dict) -> list[Output]:
        """Build the request, then answer it once per preset; errors become `error` + `log` outputs."""
        start = time.perf_counter()
        try:
            request = make_request()
        except ReferenceMelError as err:
            return self._error(err, passthrough, err.voice)
        outputs, answers = [], []
        # Unique to this answer, so that texts sharing one request_id can each name their own switch's reference.
        reference_id = f"{passthrough['request_id']}:{uuid.uuid4().hex[:8]}"
        for preset in self.config.presets:
            try:  # audio read for one preset serves the next ones too
                resolved = self.resolver.resolve(request, kind_of(preset))
                request = resolved.request
                answers.append((preset, resolved))
            except ReferenceMelError as err:
                answers.append((preset, err))
        codes = Codes(None, "missing", request)
        if any(isinstance(answer, Resolved) for _, answer in answers):
            try:  # once for every preset, from the samples they read
                codes = self.resolver.resolve_codes(request)
            except ReferenceMelError as err:  # the owner's codes file is unusable: no mel goes without them
                answers = [(preset, err if isinstance(answer, Resolved) else answer) for preset, answer in answers]
        for preset, answer in answers:
            if isinstance(answer, ReferenceMelError):
                outputs += self._error(answer, passthrough, dict(request.about).get("voice"), preset)
            else:
                outputs.append(self._mel_output(answer, preset, passthrough, reference_id, start, codes))
        outputs += [self._log("WARNING", warning) for warning in codes.request.warnings + codes.warnings]
        return outputs

    def _text(self, value, metadata: dict) -> list[Output]:
        """primespeech text: a voice switch first becomes that voice's mel; the text always goes on.

        Every forwarded text names, under REFERENCE_KEY, the reference_id of the reference it is to be spoken
        with (one the text arrived with is replaced, or removed while none was sent): its own switch's
        when that switch was served for every preset, else the voice before it (the startup voice, an
        earlier switch, or after a restart the last one), as the TTS nodes keep their voice when a switch
        fails. So a TTS node needs no `error` input: it waits for the named reference, or speaks with its
        own voice when the text names none."""
        outputs, switch, passthrough = [], None, None
        try:
            switch = parse_voice_switch(one_string(value, "text"))
        except (ReferenceMelError, ContractError) as err:
            if isinstance(err, ContractError):
                err = ReferenceMelError("bad_text", f"{err}; it is forwarded as is")
            passthrough = _passthrough(metadata)  # the error and the forwarded text carry one request_id
            outputs = self._error(err, passthrough, None)
        if switch is not None:
            passthrough = _passthrough(metadata)
            outputs += self._respond(lambda: self._switch_request(switch), passthrough)
            if self._switched(outputs) and self.last_voice is not None:
                self.last_voice.write(switch)
        if self._startup_mels:  # once: the first text is spoken with the startup reference, or left it
            if self.reference_request_id == self._startup_mels[0].metadata["reference_id"]:
                outputs += [dataclasses.replace(out, note=None) for out in self._startup_mels]
            self._startup_mels = []
        outputs.append(Output(TEXT_OUTPUT, value, self._forwarded(metadata, passthrough)))
        return outputs

    def _switched(self, outputs: list[Output]) -> bool:
        """A switch served for every preset becomes the reference later texts are spoken with."""
        mels = [out for out in outputs if out.output_id == MEL_OUTPUT]
        if len(mels) != len(self.config.presets):
            return False
        self.reference_request_id = mels[0].metadata["reference_id"]
        return True

    def _forwarded(self, metadata: dict, passthrough: dict | None) -> dict:
        """A text's metadata as forwarded: unchanged, but for the request_id a switching (or refused) text
        gets when it has no usable one (and request_id_generated), and REFERENCE_KEY."""
        forwarded = {k: v for k, v in metadata.items() if k not in DORA_KEYS and k != REFERENCE_KEY}
        if passthrough is not None and passthrough.get("request_id_generated"):
            forwarded.update(request_id=passthrough["request_id"], request_id_generated=True)
        if self.reference_request_id is not None:
            forwarded[REFERENCE_KEY] = self.reference_request_id
        return forwarded

    def _switch_request(self, switch: VoiceSwitch) -> Request:
        return self._custom_request(switch) if switch.ref_audio is not None else self._voice_request(switch.name)

    def _voice_request(self, name: str) -> Request:
        voice = self.store.voice(name)
        if not self.store.knows(voice, self.config.presets):
            raise ReferenceMelError(
                "unknown_voice", f"voice {shown(name)} is not in {self.store.library.path} (VOICES_CONFIG) and has no "
                f"precomputed spectrogram in {self.store.codes_dir} (CODES_DIR); add it to voices.json or send "
                "reference_audio", voice=name)
        return Request(voice, audio_path=voice.ref_audio, about=_about(voice))

    def _custom_request(self, switch: VoiceSwitch) -> Request:
        """A VOICE:CUSTOM or VOICE:TRAINED reference: its path arrives in an event, so the store confines it to
        REF_AUDIO_ROOTS here, before any cache or file is consulted (the same answer whatever was served before).
        TRAINED's SoVITS weights path goes along as sent, and its codes are computed with those weights."""
        real = self.store.event_path(switch.ref_audio, f"VOICE:{switch.name} ref_audio")
        about = [("voice", switch.name), ("ref_text", switch.ref_text)]
        about += [("prompt_lang", switch.lang)] if switch.lang else []
        about += [("sovits_weights", switch.sovits_weights)] if switch.sovits_weights else []
        return Request(None, audio_path=real, about=tuple(about), roots=self.store.event_roots(),
                       sovits_weights=switch.sovits_weights)

    def _audio_request(self, value, metadata: dict) -> Request:
        sample_rate = int_metadata(metadata, "sample_rate", required=True)
        channels = int_metadata(metadata, "channels", default=1)
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
        if not 1 <= channels <= MAX_CHANNELS:
            raise ReferenceMelError("bad_channels", f"channels={shown(channels)} must be between 1 and {MAX_CHANNELS}")
        flat = pcm_from_arrow(value)
        if flat.size % channels:
            raise ReferenceMelError(
                "bad_channels", f"{flat.size} samples do not split into channels={channels}; "
                "send interleaved frames, all channels of each")
        request = Request(voice, about=_about(voice) if voice else (), warnings=tuple(warnings))
        samples = flat.reshape(-1, channels)
        # float32 is already canonical: hash first, and skip the checks for audio that passed them before
        digest = samples_digest(samples, sample_rate) if samples.dtype == np.float32 and samples.size else None
        checked = self._checked_audio.get(digest) if digest else None
        if checked is not None:
            return request.with_samples(samples, sample_rate, checked, digest=digest)
        samples = pcm.check_samples(samples, sample_rate)
        if samples.dtype != np.float32:  # canonical float32 PCM: the same audio hashes the same however sent
            samples = pcm.pcm_to_float32(samples)
        warnings = tuple(audio_warnings(samples, sample_rate, self.config.max_ref_seconds))
        request = request.with_samples(samples, sample_rate, warnings, digest=digest)
        self._checked_audio.put(request.digest, warnings, 1)
        return request

    # -- outputs --------------------------------------------------------------------------------

    def _mel_output(self, resolved: Resolved, preset: Preset, passthrough: dict, reference_id: str,
                    start: float, codes: Codes) -> Output:
        request = resolved.request
        named = request.voice is not None or bool(request.about)  # unnamed audio without codes: no status to tell
        metadata = mel_metadata(
            passthrough, preset.metadata(), reference_id=reference_id, shape=resolved.served.shape,
            dtype=self.config.mel_dtype, source=resolved.source, about=request.about, codes=codes.data,
            codes_status=codes.status if named or codes.data is not None else None, write_back=resolved.write_back,
            warnings=request.warnings + codes.warnings,
            elapsed_ms=(time.perf_counter() - start) * 1e3)
        note = (f"mel voice={metadata.get('voice')} preset={preset.name} source={resolved.source} "
                f"shape={metadata['shape']} request_id={metadata['request_id']} reference_id={reference_id} "
                f"elapsed_ms={metadata['elapsed_ms']:.2f} codes={codes.status}")
        return Output(MEL_OUTPUT, pa.array(resolved.served.data), metadata, note)  # no copy: the cached array

    def _error(self, err: ReferenceMelError, passthrough: dict, voice, preset: Preset | None = None) -> list[Output]:
        voice = err.voice or (voice if isinstance(voice, str) else None)
        metadata = dict(passthrough, error=err.code)
        if preset is not None:
            metadata["preset"] = preset.name
        log.warning("error code=%s request_id=%s: %s", err.code, passthrough.get("request_id"), err.message)
        return [Output(ERROR_OUTPUT, error_value(err.code, err.message, voice, preset and preset.name), metadata),
                self._log("ERROR", f"[{err.code}] {err.message}")]

    def _log(self, level: str, message: str) -> Output:
        return Output(LOG_OUTPUT, log_value(level, message, self.node_name), {})


def _about(voice: Voice) -> tuple[tuple[str, object], ...]:
    """What a `mel` event says of its voice: the name, then voices.json's ref_text, speed_factor (a float
    on the wire) and language keys."""
    return (("voice", voice.name),) + tuple((k, float(v) if k == "speed_factor" else v) for k, v in voice.info)


def _passthrough(metadata: dict) -> dict:
    """The input's metadata minus this node's own keys, with a request_id (generated when absent)."""
    passthrough = {k: v for k, v in metadata.items() if k not in OWN_KEYS and k not in DORA_KEYS}
    if not isinstance(passthrough.get("request_id"), str) or not passthrough["request_id"]:
        passthrough["request_id"] = uuid.uuid4().hex
        passthrough["request_id_generated"] = True
    return passthrough
