"""An independent float64 NumPy implementation of the recipe (docs/recipe.md), for the tests.

Written from the recipe text, not from the package: a dense sinc convolution (every tap, no bands),
an explicit frame loop, numpy's FFT, a triangle-by-triangle Slaney filterbank. Slow and plain on
purpose. soxr_hq is the one step it shares with the package (libsoxr has no second implementation).
"""

from __future__ import annotations

import math

import numpy as np


def mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.dtype == np.int16:
        x = x / 32768.0
    elif x.dtype == np.int32:
        x = x / 2147483648.0
    x = x.astype(np.float64)
    return x if x.ndim == 1 else x.mean(axis=1)


def sinc_resample(x: np.ndarray, orig_sr: int, new_sr: int, dtype=np.float64) -> np.ndarray:
    """torchaudio's sinc resampling. dtype=np.float32 is torchaudio's float32 run: each phase offset k / new
    rounded to float32 (torchaudio builds the kernel in the waveform's dtype) and every dense tap summed in
    float32; returned as float64."""
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    cutoff = min(orig, new) * 0.99
    width = math.ceil(6 * orig / cutoff)
    out_len = math.ceil(len(x) * new / orig)
    padded = np.concatenate([np.zeros(width), x, np.zeros(width + orig)])
    y = np.empty(out_len)
    taps = np.arange(-width, width + orig)
    for k in range(new):  # output phase k: y[j*new + k] = sum_m padded[j*orig + m] * h_k[m]
        phase = float(np.float32(k) / np.float32(new)) if dtype == np.float32 else k / new
        t = np.clip((taps / orig - phase) * cutoff, -6, 6)
        h = np.sinc(t) * np.cos(t * math.pi / 12) ** 2 * cutoff / orig
        n_j = len(range(k, out_len, new))
        frames = np.lib.stride_tricks.sliding_window_view(padded, len(taps))[::orig][:n_j]
        y[k::new] = frames.astype(dtype) @ h.astype(dtype)
    return y


def soxr_resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    import soxr

    if orig_sr == new_sr:
        return x
    out_len = math.ceil(len(x) * new_sr / orig_sr)
    y = soxr.resample(x.astype(np.float32), orig_sr, new_sr, quality="HQ").astype(np.float64)
    return np.pad(y, (0, max(0, out_len - len(y))))[:out_len]


def magnitude(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    pad = (n_fft - hop) // 2
    padded = np.pad(y, pad, mode="reflect")
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    n_frames = (len(padded) - n_fft) // hop + 1
    spec = np.stack([np.fft.rfft(padded[i * hop:i * hop + n_fft] * window) for i in range(n_frames)], axis=1)
    return np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-8)  # [n_fft // 2 + 1, n_frames]


def slaney_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))


def slaney_hz(m):
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = slaney_hz(np.linspace(slaney_mel(0.0), slaney_mel(sr / 2), n_mels + 2))
    bank = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        bank[m] = np.clip(np.minimum(up, down), 0, None) * 2 / (hi - lo)
    return bank.astype(np.float32).astype(np.float64)  # librosa hands upstream float32 weights


def kaldi_fbank(y: np.ndarray) -> np.ndarray:
    """Kaldi's compute-fbank-feats as v2Pro's speaker model is fed (16 kHz, 80 bins, dither 0, the rest at
    their defaults), frame by frame in float64: [n_frames, 80]."""
    frame, shift, n_fft, n_mels = 400, 160, 512, 80
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / (frame - 1))) ** 0.85
    hz_to_mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    low, high = hz_to_mel(20.0), hz_to_mel(8000.0)
    delta = (high - low) / (n_mels + 1)
    bin_mel = hz_to_mel(np.arange(n_fft // 2 + 1) * 16000 / n_fft)
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, center, right = low + m * delta, low + (m + 1) * delta, low + (m + 2) * delta
        for k in range(n_fft // 2):  # Kaldi's bank covers bins 0 .. n_fft/2 - 1; Nyquist stays 0
            if left < bin_mel[k] < right:
                bank[m, k] = (bin_mel[k] - left) / (center - left) if bin_mel[k] <= center else \
                    (right - bin_mel[k]) / (right - center)
    rows = []
    for i in range(1 + (len(y) - frame) // shift):
        x = y[i * shift:i * shift + frame].copy()
        x -= x.mean()
        x = x - 0.97 * np.concatenate([x[:1], x[:-1]])
        power = np.abs(np.fft.rfft(x * window, n=n_fft)) ** 2
        rows.append(np.log(np.maximum(bank @ power, np.finfo(np.float32).eps)))
    return np.array(rows)


PRESETS = {
    "v2": dict(sr=32000, n_fft=2048, hop=640, bins=704, n_mels=None, peak=True),
    "v3": dict(sr=24000, n_fft=1024, hop=256, bins=100, n_mels=100, peak=False),
    "v4": dict(sr=32000, n_fft=1280, hop=320, bins=100, n_mels=100, peak=False),
    "sv": dict(sr=32000, peak=True),  # v2's peak-normalised 32 kHz audio, then 16 kHz, then Kaldi fbank
}


def reference_feature(samples, sample_rate, preset="v2", resampler="torchaudio", bins=None,
                      resample_dtype=np.float64) -> np.ndarray:
    """The recipe in float64; resample_dtype=np.float32 resamples as upstream's float32 run does."""
    p = PRESETS[preset]
    x = mono(samples)
    # soxr_hq (librosa.load) resampled v2's refer only; every other feature went through torchaudio
    if resampler == "soxr_hq" and preset == "v2":
        y = soxr_resample(x, sample_rate, p["sr"])
    else:
        y = sinc_resample(x, sample_rate, p["sr"], resample_dtype)
    if p["peak"]:
        peak = np.abs(y).max()
        if peak > 1:
            y = y / min(2.0, peak)
    if preset == "sv":
        return kaldi_fbank(sinc_resample(y, 32000, 16000, resample_dtype))[None]
    mag = magnitude(y, p["n_fft"], p["hop"])
    if p["n_mels"] is None:
        return mag[None, : (bins or p["bins"])]
    mel = mel_filterbank(p["sr"], p["n_fft"], p["n_mels"]) @ mag
    return ((np.log(np.maximum(mel, 1e-5)) + 12) / 14 * 2 - 1)[None]
