"""The constant tables of the recipes, built once per (rate, preset) on the host: torchaudio's sinc
resampling taps, the windows, the Slaney and Kaldi mel filterbanks, each cut to its nonzero bands.

Host tables are float64 where upstream builds them in float64, returned float32 and read-only
(lru-cached and shared: no caller may poison them). `device_*` give the same tables as MLX arrays,
uploaded once and cached (mlx-examples whisper caches its filterbank the same way), so no event
uploads a table again.
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx
import numpy as np

from .recipe import FBANK, KALDI_POVEY_POWER, SINC_LOWPASS_FILTER_WIDTH, SINC_ROLLOFF, Preset

FILTERBANK_GROUPS = 4  # runs of consecutive mel bands, each padded to its own width (2 to 3x less work)


def sinc_geometry(orig_freq: int, new_freq: int) -> tuple[int, int, int]:
    """(orig, new, width) of torchaudio's kernel: rates reduced by their gcd, and its half-width in
    input samples. The full kernel table is [new, 2 * width + orig]."""
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    return orig, new, math.ceil(SINC_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * SINC_ROLLOFF))


def nonzero_bands(table: np.ndarray, nonzero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of a sparse table [rows, cols] as one band of equal width: starts [rows], weights
    [rows, width]. Rows whose nonzero run is narrower carry a few zeros: they add nothing to a sum."""
    has = nonzero.any(axis=1)
    first = np.where(has, nonzero.argmax(axis=1), 0)
    last = np.where(has, table.shape[1] - nonzero[:, ::-1].argmax(axis=1), 1)
    width = int((last - first).max())
    starts = np.minimum(first, table.shape[1] - width)
    weights = np.stack([table[row, start:start + width] for row, start in enumerate(starts)])
    return _frozen(starts.astype(np.int32)), _frozen(weights)


@functools.lru_cache(maxsize=64)
def sinc_resample_taps(orig_freq: int, new_freq: int) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """torchaudio's `sinc_interp_hann` kernel for orig -> new, cut to its nonzero band per phase.

    Returns (orig, new, width, starts [new], weights [new, taps]) with orig/new reduced by their gcd.
    Output sample `j * new + k` is `sum_i padded[j * orig + starts[k] + i] * weights[k, i]`, where
    `padded` is the input with `width` zeros before and `width + orig` after: torchaudio's conv1d
    with stride orig, minus the taps that the clamped Hann window makes (numerically) zero.
    """
    orig, new, width = sinc_geometry(orig_freq, new_freq)
    base_freq = min(orig, new) * SINC_ROLLOFF
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    # torchaudio divides the phase index in the default dtype (float32) before adding idx.
    phase = (np.arange(0, -new, -1, dtype=np.float32) / np.float32(new)).astype(np.float64)[:, None]
    t = np.clip((phase + idx) * base_freq, -SINC_LOWPASS_FILTER_WIDTH, SINC_LOWPASS_FILTER_WIDTH)
    window = np.cos(t * math.pi / SINC_LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = (kernel * window * (base_freq / orig)).astype(np.float32)  # [new, 2 * width + orig]

    # The window is cos(pi/2)^2 ~ 4e-33 at the clamp: taps that small cannot change a float32 sum.
    starts, weights = nonzero_bands(kernel, np.abs(kernel) > 1e-20)
    return orig, new, width, starts, weights


@functools.lru_cache(maxsize=16)
def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window [n] (torch.hann_window's default), float32."""
    return _frozen((0.5 - 0.5 * np.cos(2.0 * math.pi * np.arange(n) / n)).astype(np.float32))


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    freq = np.asarray(freq, dtype=np.float64)
    linear = freq / f_sp
    return np.where(freq >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep,
                    linear)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


@functools.lru_cache(maxsize=16)
def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa.filters.mel defaults (htk=False, norm="slaney"): float32 [n_mels, n_fft // 2 + 1]."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    return _frozen(weights.astype(np.float32))


@functools.lru_cache(maxsize=4)
def povey_window(n: int) -> np.ndarray:
    """Kaldi's Povey window [n]: the symmetric Hann window (periodic=False) to the power 0.85, float32."""
    hann = 0.5 - 0.5 * np.cos(2.0 * math.pi * np.arange(n) / (n - 1))
    return _frozen((hann ** KALDI_POVEY_POWER).astype(np.float32))


@functools.lru_cache(maxsize=4)
def kaldi_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """torchaudio.compliance.kaldi.get_mel_banks (no VTLN warp): triangles on the mel scale
    1127 ln(1 + f / 700), unnormalised, evaluated at the first n_fft / 2 FFT bins; the Nyquist bin gets
    weight 0, as upstream pads it. float32 [n_mels, n_fft // 2 + 1]."""
    def mel(freq):
        return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)

    edges = mel(fmin) + np.arange(n_mels + 2)[:, None] * (mel(fmax) - mel(fmin)) / (n_mels + 1)
    bin_mels = mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    rising = (bin_mels - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - bin_mels) / (edges[2:] - edges[1:-1])
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return _frozen(np.pad(weights, [(0, 0), (0, 1)]).astype(np.float32))


@functools.lru_cache(maxsize=16)
def filterbank_bands(preset: Preset, groups: int | None = None) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The preset's filterbank as bands, in `groups` (default FILTERBANK_GROUPS) runs of consecutive bands:
    starts [n] and weights [n, width] of each run's nonzero runs. Mel bands widen with frequency (v4: 2 to
    46 bins), so each run is padded only to its own widest band, not all of them to the widest of all."""
    fmax = preset.fmax if preset.fmax is not None else preset.sample_rate / 2
    build = kaldi_mel_filterbank if preset.kind == FBANK else slaney_mel_filterbank
    bank = build(preset.sample_rate, preset.n_fft, preset.n_mels, preset.fmin, fmax)
    edges = np.linspace(0, preset.n_mels, (groups or FILTERBANK_GROUPS) + 1).astype(int)
    return tuple(nonzero_bands(bank[a:b], bank[a:b] != 0) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # cached tables are shared: no caller may poison them
    return array


# -- the same tables on the device, uploaded once -----------------------------------------------------


# An MLX array cannot be made read-only: `table[0] = x` and `table += x` rebind the very object. So each
# table is uploaded once and cached, and every call hands out its own arrays over the same device memory
# (mx.array of an MLX array: no copy), which a caller may write to without touching the cached one.


def _handed_out(table):
    if isinstance(table, mx.array):
        return mx.array(table)
    return type(table)(_handed_out(part) for part in table) if isinstance(table, (tuple, list)) else table


def _device_table(maxsize: int):
    def wrap(build):
        cached = functools.lru_cache(maxsize=maxsize)(build)
        return functools.wraps(build)(lambda *args: _handed_out(cached(*args)))
    return wrap


@_device_table(16)
def device_hann(n: int) -> mx.array:
    """hann_window(n) as an MLX array [n]."""
    return mx.array(hann_window(n))


@_device_table(4)
def device_povey(n: int) -> mx.array:
    """povey_window(n) as an MLX array [n]."""
    return mx.array(povey_window(n))


@_device_table(16)
def device_filterbank(preset: Preset, groups: int | None = None) -> tuple[tuple[mx.array, mx.array, int, int], ...]:
    """filterbank_bands(preset, groups) on the device: per run of bands, the flat row index [n * width], the
    weights [n, width, 1], the band count n and the width."""
    runs = []
    for starts, weights in filterbank_bands(preset, groups):
        n, width = weights.shape
        index = (starts[:, None] + np.arange(width, dtype=np.int32)[None, :]).reshape(-1)
        runs.append((mx.array(index), mx.array(weights)[:, :, None], n, width))
    return tuple(runs)


@_device_table(64)
def device_sinc_weights(orig_freq: int, new_freq: int) -> mx.array:
    """sinc_resample_taps's weights [new, taps] as one MLX array (the gathered and CUDA forms read it whole)."""
    return mx.array(sinc_resample_taps(orig_freq, new_freq)[4])


@_device_table(64)
def device_sinc_taps(orig_freq: int, new_freq: int) -> tuple[mx.array, list[mx.array]]:
    """sinc_resample_taps on the device: starts [new] (int32) and each phase's weights [taps]."""
    _, _, _, starts, weights = sinc_resample_taps(orig_freq, new_freq)
    return mx.array(starts), [mx.array(row) for row in weights]
