"""The peer: what GPT-SoVITS does with torch, written for the benchmark (torch only, no torchaudio,
which has no CPU build on the registry here): torchaudio's sinc resampler as torch.conv1d, then
torch.stft, magnitude with eps inside the root, and for v3/v4 the mel matmul, log and norm_spec.
Same recipe, same numbers (bench.py prints the difference), different engine.
"""

from __future__ import annotations

import functools
import math

import torch

PRESETS = {
    "v2": dict(sr=32000, n_fft=2048, hop=640, bins=704, mels=False, peak=True),
    "v3": dict(sr=24000, n_fft=1024, hop=256, bins=100, mels=True, peak=False),
    "v4": dict(sr=32000, n_fft=1280, hop=320, bins=100, mels=True, peak=False),
}


@functools.lru_cache(maxsize=32)
def sinc_kernel(orig_sr: int, new_sr: int, device: str):
    """torchaudio's sinc_interp_hann kernel [new, 1, taps] (float64 math, float32 result)."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * 0.99
    width = math.ceil(6 * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1)[:, None, None] / new + idx) * base
    t = t.clamp(-6, 6)
    window = torch.cos(t * math.pi / 12) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), t.sin() / t) * window * (base / orig)
    return kernel.to(torch.float32).to(device), width, orig, new


@functools.lru_cache(maxsize=8)
def hann(n: int, device: str):
    return torch.hann_window(n, device=device)


@functools.lru_cache(maxsize=8)
def mel_basis(sr: int, n_fft: int, device: str):
    import numpy as np

    from dora_reference_mel.features.tables import slaney_mel_filterbank  # librosa's filterbank, as upstream loads it

    return torch.from_numpy(np.array(slaney_mel_filterbank(sr, n_fft, 100, 0.0, sr / 2))).to(device)


def resample(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    if orig_sr == new_sr:
        return x
    kernel, width, orig, new = sinc_kernel(orig_sr, new_sr, str(x.device))
    n = x.shape[-1]
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(x[None, None], (width, width + orig)), kernel, stride=orig)
    return y[0].transpose(0, 1).reshape(-1)[: math.ceil(new * n / orig)]


def reference_feature(samples: torch.Tensor, sample_rate: int, preset: str = "v2") -> torch.Tensor:
    """samples [n] or [n, channels] float32 on any device -> [1, n_bins, n_frames]."""
    p = PRESETS[preset]
    x = samples if samples.ndim == 1 else samples.mean(dim=1)
    y = resample(x, sample_rate, p["sr"])
    if p["peak"]:
        peak = y.abs().max()
        y = torch.where(peak > 1, y / torch.clamp(peak, max=2.0), y)
    pad = (p["n_fft"] - p["hop"]) // 2
    y = torch.nn.functional.pad(y[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(y, p["n_fft"], hop_length=p["hop"], win_length=p["n_fft"], window=hann(p["n_fft"], str(y.device)),
                      center=False, return_complex=True)
    mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-8)
    if not p["mels"]:
        return mag[None, : p["bins"]]
    mel = mel_basis(p["sr"], p["n_fft"], str(y.device)) @ mag
    return ((torch.log(torch.clamp(mel, min=1e-5)) + 12) / 14 * 2 - 1)[None]
