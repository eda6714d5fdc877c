"""The kinds of artifact the store holds and the resolver serves. A kind says how one artifact is computed
(one clip, or a batch in few device calls), what identifies its recipe (the fingerprint), where it lies
(the file stem in the codes directory, the voices.json key that may name another file) and how a stored
one is checked (its shape and size, finite values).

Two kinds: one preset's spectrogram (MelKind), and the prompt's semantic codes (CodesKind: computed by a
model whose weights digest is part of its fingerprint, stored as `<voice>_codes.bin`, int32 LE, with a
sidecar). The store and the resolver use only what ArtifactKind declares.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ReferenceMelError
from ..features.recipe import PRESET_NAMES, V2_DEFAULT_BINS, Preset, get_preset
from ..limits import CODE_RANGE, CODES_PER_SECOND, FRAMES_BINS

log = logging.getLogger(__name__)


class ArtifactKind:
    """The interface: what the store and the resolver may ask of a kind."""

    name: str  # short, in file names and messages
    fingerprint: str  # changes whenever what compute returns would change
    file_suffix: str  # <voice><file_suffix>.bin (data) and .json (its sidecar) in the codes directory
    dtype: str  # the numpy dtype of the stored data, little-endian
    what: str  # the artifact in words, for messages
    layout: str  # how the data is laid out (its sidecar says it)
    legacy_is_owners = False  # whether a data file without sidecar is the owner's: served as it is, never replaced

    def voice_path_key(self) -> str:
        """The voices.json key that may name this artifact's file for a voice."""
        raise NotImplementedError

    def recipe(self) -> dict:
        raise NotImplementedError

    def max_bytes(self, max_ref_seconds: float) -> int:
        """The largest stored data of a clip of at most `max_ref_seconds`."""
        raise NotImplementedError

    def shape_problem(self, shape, max_ref_seconds: float) -> str | None:
        """Why a sidecar's `shape` cannot be this kind's, or None."""
        raise NotImplementedError

    def legacy(self, blob: bytes) -> np.ndarray | str:
        """The data of a stored file without sidecar, or why such a file cannot serve."""
        raise NotImplementedError

    def check_length(self, n_samples: int, sample_rate: int) -> None:
        """`too_short` (or `bad_sample_rate`) when a clip cannot give this artifact."""
        raise NotImplementedError

    def compute(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def compute_batch(self, clips: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        raise NotImplementedError

    def problem(self, data: np.ndarray) -> str | None:
        """Why data (computed or read) cannot serve, or None: the one finiteness check."""
        raise NotImplementedError

    def file_stem(self, voice: str) -> str:
        return f"{voice}{self.file_suffix}"


@dataclasses.dataclass(frozen=True)
class MelKind(ArtifactKind):
    """One preset's reference feature matrix (float32, in the preset's layout, without the batch axis)."""

    preset: Preset
    dtype = "<f4"
    what = "spectrogram"

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def fingerprint(self) -> str:
        return self.preset.fingerprint

    @property
    def layout(self) -> str:
        return self.preset.layout

    @property
    def file_suffix(self) -> str:
        return "_mel" if self.preset.name == "v2" else f"_mel_{self.preset.name}"

    def voice_path_key(self) -> str:
        return "mel_path" if self.preset.name == "v2" else f"mel_{self.preset.name}_path"

    def recipe(self) -> dict:
        return self.preset.recipe()

    def max_frames(self, max_ref_seconds: float) -> int:
        preset = self.preset
        return preset.n_frames(int(max_ref_seconds * preset.sample_rate) + preset.sample_rate) + 1

    def max_bytes(self, max_ref_seconds: float) -> int:
        return self.preset.n_bins * self.max_frames(max_ref_seconds) * 4

    def shape_problem(self, shape, max_ref_seconds: float) -> str | None:
        preset, max_frames = self.preset, self.max_frames(max_ref_seconds)
        whole = isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        frames = preset.frames_in(shape) if whole else None
        if frames is not None and 0 < frames <= max_frames:
            return None
        frames_bins = preset.layout == FRAMES_BINS
        wanted = f"[1..{max_frames}, {preset.n_bins}]" if frames_bins else f"[{preset.n_bins}, 1..{max_frames}]"
        return f"shape={str(shape)[:60]} is not {wanted}"

    def legacy(self, blob: bytes) -> np.ndarray | str:
        """A .bin without sidecar (the layout the Rust port planned): [704, n_frames] float32, v2 only."""
        if self.preset.name != "v2" or self.preset.n_bins != V2_DEFAULT_BINS:
            return "has no sidecar; only 704-bin v2 files may lack one"
        if not blob or len(blob) % (V2_DEFAULT_BINS * 4):
            return f"has no sidecar and {len(blob)} bytes, not a multiple of 704 * 4"
        return np.frombuffer(blob, dtype=self.dtype).reshape(V2_DEFAULT_BINS, -1)

    def check_length(self, n_samples: int, sample_rate: int) -> None:
        from ..features.pcm import check_long_enough

        check_long_enough(n_samples, sample_rate, self.preset)

    def compute(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        from ..features.spectrogram import reference_mel

        return self._checked(reference_mel(samples, sample_rate, preset=self.preset)[0], samples)

    def compute_batch(self, clips: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """One device call for many clips; a clip whose result overflows raises like `compute`."""
        from ..features.spectrogram import reference_mel_batch

        mels = reference_mel_batch(list(clips), list(sample_rates), preset=self.preset)
        return [self._checked(mel[0], clip) for mel, clip in zip(mels, clips, strict=True)]

    def problem(self, data: np.ndarray) -> str | None:
        return None if np.isfinite(data).all() else "contains NaN or Inf"

    def _checked(self, data: np.ndarray, samples: np.ndarray) -> np.ndarray:
        if self.problem(data) is not None:
            raise ReferenceMelError(
                "non_finite_audio", f"the {self.name} spectrogram overflows float32: the samples reach "
                f"{float(np.abs(samples).max()):.3g}; send PCM scaled to [-1, 1]")
        return data


WARMUP_SAMPLES = 48_000  # the shortest reference upstream takes: 3 s at 16 kHz
CODES_RECIPE = "codes1"  # part of the codes' fingerprint: changes whenever CodesKind.compute's steps do
SETUP_SCRIPT = "OminiX-MLX's scripts/setup_models.py"


@dataclasses.dataclass(frozen=True, eq=False)
class CodesKind(ArtifactKind):
    """The prompt's semantic codes, int32 [N] at 25 a second, as GPT-SoVITS computes them from a clip at any rate
    (models.codes_model: 16 kHz mono, 3 to 10 s, HuBERT, ssl_proj, the codebook). The weights' digest is part of
    the fingerprint, so codes of other weights are stale. A codes file without sidecar is the owner's
    (ReferenceStore.owner_codes serves it as it is)."""

    model: object  # models.CodesModel
    name = "codes"
    file_suffix = "_codes"
    dtype = "<i4"
    what = "semantic codes"
    layout = "[n_codes], 25 a second"
    legacy_is_owners = True

    @property
    def fingerprint(self) -> str:
        return f"{CODES_RECIPE}-{self.model.weights_digest}"

    def voice_path_key(self) -> str:
        return "codes_path"

    def recipe(self) -> dict:
        return {"kind": "codes", "version": CODES_RECIPE, "weights_digest": self.model.weights_digest,
                "steps": "librosa.load(sr=16000) (soxr_hq, mono mean), 3-10 s, + int(32000 * 0.3) zeros, "
                         "chinese-hubert-base last_hidden_state, ssl_proj, codebook layer 0"}

    def max_codes(self, max_ref_seconds: float) -> int:
        return int(max(max_ref_seconds, 10.5) * CODES_PER_SECOND) + 1

    def max_bytes(self, max_ref_seconds: float) -> int:
        return self.max_codes(max_ref_seconds) * 4

    def shape_problem(self, shape, max_ref_seconds: float) -> str | None:
        most = self.max_codes(max_ref_seconds)
        if isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and 0 < shape[0] <= most:
            return None
        return f"shape={str(shape)[:60]} is not [1..{most}]"

    def legacy(self, blob: bytes) -> np.ndarray | str:
        from .codes import parse_codes

        try:
            return parse_codes(blob, ".bin").astype(self.dtype)
        except ValueError as err:
            return f"has no sidecar and is unusable ({err})"

    def check_length(self, n_samples: int, sample_rate: int) -> None:
        from ..models import check_duration, length_at_16k

        _model_call(check_duration, length_at_16k(n_samples, sample_rate))

    def compute(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        from ..models import to_16k_mono

        return _model_call(lambda: self.model.codes(to_16k_mono(samples, sample_rate)))

    def compute_batch(self, clips: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """One clip after the other: HuBERT runs a clip at a time."""
        return [self.compute(clip, rate) for clip, rate in zip(clips, sample_rates, strict=True)]

    def problem(self, data: np.ndarray) -> str | None:
        if data.size and CODE_RANGE[0] <= data.min() and data.max() <= CODE_RANGE[1]:
            return None
        return f"holds no codes, or codes outside {CODE_RANGE[0]}..{CODE_RANGE[1]}"


def _model_call(call, *args):
    """call(*args), with the model's errors as the package's (same code and message)."""
    from ..models import ModelError

    try:
        return call(*args)
    except ModelError as err:
        raise ReferenceMelError(err.code, str(err)) from None


def load_codes_kind(hubert: Path | None, sovits: Path | None, *, say_why_not: bool = True) -> CodesKind | None:
    """The codes kind with its model loaded from the two weights files; None when codes are off (both None) or
    cannot be computed here (a file missing, soxr not installed: said, with how to get it, unless not
    say_why_not). `bad_weights` when a file is there but is not usable weights."""
    if hubert is None or sovits is None:
        return None
    level = logging.WARNING if say_why_not else logging.DEBUG
    missing = [str(path) for path in (hubert, sovits) if not path.is_file()]
    if missing:
        log.log(level, "semantic codes are only read from codes files, not computed: %s not found; %s writes "
                "hubert.safetensors and doubao_mixed_sovits_new.safetensors into ~/.dora/models/primespeech/gpt-sovits-mlx/ "
                "(or set HUBERT_WEIGHTS and SOVITS_WEIGHTS; MEL_CODES=off says nothing)", " and ".join(missing),
                SETUP_SCRIPT)
        return None
    try:
        import soxr  # noqa: F401  # the resampler of the codes' 16 kHz audio
    except ImportError:
        log.log(level, "semantic codes are only read from codes files, not computed: the soxr package is not installed; "
                "pip install soxr (or the `soxr` extra)")
        return None
    from ..models import load_codes_model

    start = time.perf_counter()
    model = _model_call(load_codes_model, hubert, sovits)
    loaded = time.perf_counter()
    detail = f"on {model.hubert.backend}"
    if model.hubert.backend == "mlx":  # a GPU compiles its kernels on first use: here, not on a voice switch
        model.codes(np.zeros(WARMUP_SAMPLES, dtype=np.float32))
        detail += f"; a first run, which compiles its kernels, {time.perf_counter() - loaded:.1f} s"
    log.info("codes model loaded from %s and %s in %.1f s (%s)", hubert, sovits, loaded - start, detail)
    return CodesKind(model)


def trained_codes_kind(base: CodesKind, fd: int, source: str) -> CodesKind:
    """The codes kind of a VOICE:TRAINED voice's own SoVITS weights (a safetensors file open on `fd`), as the
    primespeech nodes extract its prompt codes with them: the file's ssl_proj and codebook, each one it lacks
    the base model's (dora-primespeech-mlx loads a fine-tune saved as an overlay over its base SoVITS
    weights). `bad_weights` for anything else: a torch checkpoint (MoFA's dora-primespeech trains .pth
    files) cannot be read without torch, so its codes are left to the TTS node."""
    model = _model_call(base.model.with_sovits, fd, source)
    return base if model is base.model else CodesKind(model)


@functools.cache
def _mel_kind(preset: Preset) -> MelKind:
    return MelKind(preset)


def kind_of(what: ArtifactKind | Preset | str) -> ArtifactKind:
    """The kind a caller means: a kind as it is, a preset (or its name) as its spectrogram."""
    if isinstance(what, ArtifactKind):
        return what
    return _mel_kind(get_preset(what))


# Every file suffix a stored spectrogram may have, whatever the configured presets (the store's one scan).
MEL_SUFFIXES = {name: kind_of(name).file_suffix for name in PRESET_NAMES}
