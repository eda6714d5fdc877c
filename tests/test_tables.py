"""The constant tables (tables.py): windows and filterbanks as upstream builds them, and cached copies
no caller can change."""

import numpy as np
import pytest

from dora_reference_mel import reference_mel
from dora_reference_mel.features.tables import (
    hann_window,
    kaldi_mel_filterbank,
    povey_window,
    sinc_resample_taps,
    slaney_mel_filterbank,
)
from helpers import LINEAR_MAX_ABS, speech


def test_sv_fbank_tables_are_kaldis():
    """Povey window = symmetric Hann ** 0.85 (zero at both ends); the mel bank's bands are unnormalised
    triangles (height 1 at their centre) and its Nyquist column is empty."""
    window = povey_window(400)
    assert window[0] == 0 and window[-1] == 0 and abs(float(window[200]) - 1) < 1e-4
    bank = kaldi_mel_filterbank(16000, 512, 80, 20.0, 8000.0)
    assert bank.shape == (80, 257) and not bank[:, 256].any() and not bank[:, 0].any()
    peaks = bank.max(axis=1)  # narrow low bands fall between bins; wide high ones reach ~1 (no area norm)
    assert np.all(peaks > 0.4) and np.all(peaks <= 1) and np.all(peaks[60:] > 0.8)


def test_cached_tables_cannot_be_poisoned():
    for table in (hann_window(2048), slaney_mel_filterbank(32000, 1280, 100, 0.0, 16000.0),
                  sinc_resample_taps(44100, 32000)[4], povey_window(400),
                  kaldi_mel_filterbank(16000, 512, 80, 20.0, 8000.0)):
        with pytest.raises(ValueError):
            table *= 0


def test_device_tables_cannot_be_poisoned():
    """MLX arrays cannot be frozen: each call hands out its own arrays, so writing to one leaves every
    later call's table (and so every later spectrogram) as it was."""
    import mlx.core as mx

    from dora_reference_mel import get_preset
    from dora_reference_mel.features.tables import device_filterbank, device_hann, device_sinc_taps

    clip = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    before = reference_mel(clip, 48000, preset="v3")
    hann = device_hann(1280)
    hann[0] = 99
    hann += 1
    index, weights, _, _ = device_filterbank(get_preset("v3"))[0]
    weights *= 0
    device_sinc_taps(48000, 24000)[1][0][:] = 0
    assert float(device_hann(1280)[0]) == 0.0 and float(mx.max(device_filterbank(get_preset("v3"))[0][1])) > 0
    np.testing.assert_array_equal(reference_mel(clip, 48000, preset="v3"), before)


def stft_magnitude(y: np.ndarray, pad: int, window: np.ndarray, hop: int = 640) -> np.ndarray:
    """|rfft| of reflect-padded frames [n_fft // 2 + 1, n_frames], float64: a recipe to hold ours against."""
    padded = np.pad(y.astype(np.float64), pad, mode="reflect")
    n = window.size
    frames = np.stack([padded[i:i + n] for i in range(0, padded.size - n + 1, hop)])
    return np.sqrt(np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 + 1e-8).T


def test_periodic_window_and_reflect_padding_are_upstreams():
    """Two mistakes of earlier ports (docs/recipe.md, "Mistakes earlier ports made") would each move the
    output off: a symmetric Hann window, and center=True padding (n_fft // 2: one frame more, every
    frame 320 samples early). Ours is upstream's recipe and neither of those."""
    np.testing.assert_allclose(hann_window(8), 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8), atol=1e-7)
    samples, sr = speech("mono", 32000)
    y = samples / max(1.0, min(2.0, float(np.abs(samples).max())))  # v2's peak normalisation
    ours = reference_mel(samples, sr)[0].astype(np.float64)
    periodic = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)
    upstream = stft_magnitude(y, 704, periodic)[:704]
    np.testing.assert_allclose(ours, upstream, atol=LINEAR_MAX_ABS)
    symmetric = stft_magnitude(y, 704, np.hanning(2048))[:704]
    centered = stft_magnitude(y, 1024, periodic)[:704]
    assert np.abs(symmetric - ours).max() > 10 * LINEAR_MAX_ABS  # 0.088 here: far outside the tolerance
    assert centered.shape[1] == ours.shape[1] + 1
    assert np.abs(centered[:, :ours.shape[1]] - ours).mean() > 1e-2
