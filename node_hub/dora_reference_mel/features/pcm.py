"""Input checks of PCM samples, shared by the node, the tools and the public functions: rates, dtypes,
shapes, finite values, and whether a clip is long enough for a preset. Host-side numpy only."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ReferenceMelError
from ..limits import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .recipe import Preset
from .resample import MAX_KERNEL_TAPS, resampled_length
from .tables import sinc_geometry

INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}  # torchaudio.load's scaling


def check_sample_rate(sample_rate) -> int:
    """The rate in Hz as an int: an integer, or a float with an integral value (24000.0, as soundfile
    and librosa users may hold it); `bad_sample_rate` naming the value otherwise."""
    if isinstance(sample_rate, (float, np.floating)) and float(sample_rate).is_integer():
        sample_rate = int(sample_rate)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ReferenceMelError("bad_sample_rate", f"sample_rate={sample_rate!r} must be a positive integer in Hz")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ReferenceMelError(
            "bad_sample_rate", f"sample_rate={sample_rate} must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} "
            "Hz; resample the audio to a standard rate such as 16000, 24000, 32000 or 48000 Hz")
    return int(sample_rate)


def check_samples(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate PCM and return it as [n, channels] (float32, or int16/int32 PCM, unscaled)."""
    check_sample_rate(sample_rate)
    samples = np.asarray(samples)
    if samples.dtype not in (np.float32, np.float64, np.int16, np.int32):
        raise ReferenceMelError(
            "bad_dtype", f"samples of dtype {samples.dtype} are not PCM; send float32, float64, int16 or int32")
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ReferenceMelError(
            "bad_shape", f"samples of shape {samples.shape} must be [n] or [n, channels]")
    if samples.shape[0] <= MAX_CHANNELS < samples.shape[1]:  # torchaudio.load's layout: far more columns than rows
        raise ReferenceMelError(
            "bad_shape", f"samples of shape {samples.shape} look like [channels, n] (torchaudio's layout); pass [n] "
            "or [n, channels]: transpose them (samples.T)")
    if samples.shape[0] == 0:
        raise ReferenceMelError("empty_audio", "the reference audio has no samples; send 3 to 10 s of speech")
    if samples.dtype.kind == "f":
        if not np.isfinite(samples).all():
            bad = int((~np.isfinite(samples)).sum())
            raise ReferenceMelError(
                "non_finite_audio", f"{bad} samples are NaN or Inf; send finite PCM in [-1, 1]")
        if samples.dtype == np.float64:
            peak = max(float(samples.max()), -float(samples.min()))
            if peak > float(np.finfo(np.float32).max):
                raise ReferenceMelError(
                    "non_finite_audio", f"float64 samples reach {peak:.3g}, beyond float32's range (the recipe "
                    "computes in float32); send PCM in [-1, 1]")
        samples = samples.astype(np.float32, copy=False)
    return samples


def pcm_to_float32(samples: np.ndarray) -> np.ndarray:
    """Checked [n, channels] PCM as float32: int16 / int32 scaled to [-1, 1] (by 2^15 / 2^31, as
    torchaudio.load scales), float32 as is."""
    if samples.dtype == np.float32:
        return samples
    return samples.astype(np.float32) / np.float32(INT_SCALE[samples.dtype])


def check_long_enough(n_samples: int, sample_rate: int, preset: Preset) -> int:
    """Raise `too_short` when the clip gives no frame, `bad_sample_rate` when its rate has no practical
    ratio to the preset's; return the resampled length."""
    if sample_rate != preset.input_rate:
        orig, new, width = sinc_geometry(sample_rate, preset.input_rate)
        taps = 2 * width + orig
        if new * taps > MAX_KERNEL_TAPS:  # torchaudio would build the same table: [new, taps] floats
            raise ReferenceMelError(
                "bad_sample_rate", f"sample_rate={sample_rate} has no small ratio to {preset.input_rate} Hz "
                f"({orig}:{new}; the resampling kernel would hold {new} x {taps} taps); resample the audio to a "
                "standard rate such as 16000, 22050, 24000, 32000, 44100 or 48000 Hz")
    n_resampled = resampled_length(n_samples, sample_rate, preset.sample_rate)
    if n_resampled < preset.min_samples:
        need = math.ceil(preset.min_samples * sample_rate / preset.sample_rate)
        raise ReferenceMelError(
            "too_short",
            f"{n_samples} samples at {sample_rate} Hz are shorter than one {preset.name} frame "
            f"(at least {need} samples); send 3 to 10 s of speech")
    return n_resampled
