"""The GPT-SoVITS reference recipes (presets), as frozen data.

Every number here is in docs/recipe.md, with the upstream function each follows. A preset's
`fingerprint` hashes every parameter, so a stored spectrogram made with another recipe (another
resampler, bin count or eps) is never served for this one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence

from ..errors import ReferenceMelError
from ..limits import BINS_FRAMES, FRAMES_BINS

RESAMPLERS = ("torchaudio", "soxr_hq")

# torchaudio.transforms.Resample defaults (sinc_interp_hann), what GPT-SoVITS main uses since mid-2025.
SINC_LOWPASS_FILTER_WIDTH = 6
SINC_ROLLOFF = 0.99

# Upstream's eps inside the square root of the magnitude (1e-6 before April 2025).
MAGNITUDE_EPS = 1e-8
# Natural-log floor and norm_spec range of the v3/v4 prompt mel.
LOG_CLAMP_MIN = 1e-5
SPEC_MIN, SPEC_MAX = -12.0, 2.0

V2_DEFAULT_BINS = 704  # v2, v2Pro, v3 and v4 models use refer[:, :704]; only v1 wants all 1025.

# Kaldi fbank (torchaudio.compliance.kaldi defaults, GPT-SoVITS's copy in eres2net/kaldi.py) for v2Pro's
# speaker model: per-frame DC removal, pre-emphasis, Povey window, power spectrum, log floored at
# float32's machine epsilon.
KALDI_PREEMPHASIS = 0.97
KALDI_POVEY_POWER = 0.85
KALDI_LOG_FLOOR = 1.1920928955078125e-07

# What a preset computes, and how its output is laid out.
LINEAR, LOG_MEL, FBANK = "linear", "log_mel", "fbank"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One reference feature: the linear spectrogram (v2), a log-mel prompt (v3/v4) or a Kaldi fbank (sv)."""

    name: str
    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_bins: int  # output bins: linear bins kept, or mel bands
    n_mels: int | None = None
    peak_normalize: bool = False
    resampler: str = "torchaudio"
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    kind: str = LINEAR
    # sv: the input goes to v2's 32 kHz first, is peak-normalised there, and only then to sample_rate (both
    # steps torchaudio's sinc), as GPT-SoVITS derives the speaker audio from v2's.
    peak_rate: int | None = None

    @property
    def input_rate(self) -> int:
        """The rate the input is resampled to first (and peak-normalised at, when the preset does)."""
        return self.peak_rate or self.sample_rate

    @property
    def layout(self) -> str:
        """bins_frames: [1, n_bins, n_frames]; frames_bins: [1, n_frames, n_bins] (the speaker model's input)."""
        return FRAMES_BINS if self.kind == FBANK else BINS_FRAMES

    @property
    def frame_length(self) -> int:
        """Samples per frame: n_fft for upstream's STFT framing, win_length for Kaldi's (zero-padded to n_fft)."""
        return self.win_length if self.kind == FBANK else self.n_fft

    @property
    def pad(self) -> int:
        """Reflect padding on each side: (n_fft - hop) // 2 for upstream's center=False STFT; Kaldi's
        snip_edges framing pads nothing."""
        return 0 if self.kind == FBANK else (self.n_fft - self.hop_length) // 2

    @property
    def min_samples(self) -> int:
        """Shortest resampled signal that gives one frame and that reflect padding accepts."""
        if self.kind == FBANK:
            return self.win_length
        return max(self.hop_length, self.pad + 1)

    def n_frames(self, n_resampled: int) -> int:
        """Frames from a signal of `n_resampled` samples at the preset rate: L // hop for the STFT presets,
        1 + (L - win_length) // hop for Kaldi's."""
        return (n_resampled + 2 * self.pad - self.frame_length) // self.hop_length + 1

    def seconds_of(self, n_frames: int) -> tuple[float, float]:
        """The shortest and longest audio, in seconds, whose spectrogram has `n_frames` frames: n_frames
        inverted, to within one hop (and one sample of resampling)."""
        first = (n_frames - 1) * self.hop_length + self.frame_length - 2 * self.pad
        return (first - 1) / self.sample_rate, (first + self.hop_length) / self.sample_rate

    def frames_in(self, shape: Sequence[int]) -> int | None:
        """n_frames of a feature matrix `shape` (no batch axis) if it has this preset's bins, else None."""
        if len(shape) != 2:
            return None
        bins, frames = (shape[1], shape[0]) if self.layout == FRAMES_BINS else (shape[0], shape[1])
        return frames if bins == self.n_bins else None

    def recipe(self) -> dict:
        params = dataclasses.asdict(self)
        params.update(sinc_lowpass_filter_width=SINC_LOWPASS_FILTER_WIDTH, sinc_rolloff=SINC_ROLLOFF)
        if self.kind == FBANK:
            # remove_dc_offset names how the mean is summed: files made with a sequential sum are stale
            params.update(window="povey", window_power=KALDI_POVEY_POWER, snip_edges=True, dither=0.0,
                          remove_dc_offset="pairwise_mean", preemphasis=KALDI_PREEMPHASIS, power=2,
                          mel_scale="htk_kaldi", log_floor=KALDI_LOG_FLOOR, layout=self.layout)
            return params
        # The STFT presets' recipes are what they were before sv existed: their fingerprints, and so every
        # file stored with them, stay valid.
        del params["kind"], params["peak_rate"]
        params.update(window="hann_periodic", center=False, pad_mode="reflect", magnitude_eps=MAGNITUDE_EPS)
        if self.kind == LOG_MEL:
            params.update(mel_scale="slaney", mel_norm="slaney", log_clamp_min=LOG_CLAMP_MIN,
                          spec_min=SPEC_MIN, spec_max=SPEC_MAX)
        return params

    def metadata(self) -> dict:
        """What a `mel` event says of its recipe (contract.MEL_METADATA)."""
        keys = dict(preset=self.name, layout=self.layout, sample_rate=self.sample_rate, n_fft=self.n_fft,
                    hop_length=self.hop_length, fingerprint=self.fingerprint)
        return {**keys, "n_mels": self.n_mels} if self.n_mels else keys

    @functools.cached_property  # hashed once per preset, not once per event
    def fingerprint(self) -> str:
        text = json.dumps(self.recipe(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_BASE = {
    "v2": dict(sample_rate=32000, n_fft=2048, hop_length=640, win_length=2048,
               n_bins=V2_DEFAULT_BINS, peak_normalize=True),
    "v3": dict(sample_rate=24000, n_fft=1024, hop_length=256, win_length=1024, n_bins=100, n_mels=100, kind=LOG_MEL),
    "v4": dict(sample_rate=32000, n_fft=1280, hop_length=320, win_length=1280, n_bins=100, n_mels=100, kind=LOG_MEL),
    # fbank(wav16k, num_mel_bins=80, sample_frequency=16000, dither=0): 25 ms frames (400), 10 ms hop (160),
    # FFT size rounded up to 512, mel bands from 20 Hz to Nyquist.
    "sv": dict(sample_rate=16000, n_fft=512, hop_length=160, win_length=400, n_bins=80, n_mels=80,
               peak_normalize=True, fmin=20.0, kind=FBANK, peak_rate=32000),
}
PRESET_NAMES = tuple(_BASE)


def get_preset(name: str | Preset, *, resampler: str | None = None, v2_bins: int | None = None) -> Preset:
    """The preset `name` ("v2", "v3", "v4" or "sv", or a Preset), with the resampler (default torchaudio, or the
    Preset's own; only v2 takes soxr_hq, the others always resample with torchaudio) and (v2 only) the bin
    count chosen."""
    if isinstance(name, Preset):
        if resampler in (None, name.resampler) and v2_bins in (None, name.n_bins if name.name == "v2" else None):
            return name
        return get_preset(name.name, resampler=resampler or name.resampler,
                          v2_bins=v2_bins if v2_bins is not None else (name.n_bins if name.name == "v2" else None))
    resampler = resampler or "torchaudio"
    if name not in _BASE:
        raise ReferenceMelError("bad_preset", f"preset={name!r} is not known; use one of {', '.join(PRESET_NAMES)}")
    if resampler not in RESAMPLERS:
        raise ReferenceMelError(
            "bad_config", f"resampler={resampler!r} (MEL_RESAMPLER) is not known; use one of {', '.join(RESAMPLERS)}")
    # GPT-SoVITS's librosa.load (soxr_hq) era resampled only v2's `refer`: its v3/v4 prompt mel went through
    # torchaudio, and the v2Pro releases (sv) load with torchaudio throughout (docs/recipe.md, section 1b).
    params = dict(_BASE[name], name=name, resampler=resampler if name == "v2" else "torchaudio")
    if v2_bins is not None and name == "v2":
        if not 1 <= v2_bins <= params["n_fft"] // 2 + 1:
            raise ReferenceMelError(
                "bad_config", f"MEL_BINS={v2_bins} must be between 1 and {params['n_fft'] // 2 + 1} "
                "(704 for v2 models, 1025 for v1)")
        params["n_bins"] = v2_bins
    return Preset(**params)
