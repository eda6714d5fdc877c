"""MLX's CUDA backend's own paths (cuda_kernels.py) against the generic ops every other device runs.

Skipped where MLX has no CUDA GPU (here: the CPU, and Metal): there the generic ops serve, and the other
tests cover them. Run on an NVIDIA H200 by benchmarks/gpu_run.sh, with the whole recipe's parity tests.
"""

import mlx.core as mx
import numpy as np
import pytest

from dora_reference_mel import get_preset
from dora_reference_mel.features import backend, cuda_kernels, resample, spectrogram
from dora_reference_mel.features.tables import device_hann, device_sinc_taps, sinc_resample_taps
from helpers import speech

pytestmark = pytest.mark.skipif(not backend.cuda_available(), reason="MLX has no CUDA GPU here: the generic ops serve")


@pytest.fixture(autouse=True)
def on_the_gpu():
    with mx.stream(mx.gpu):
        yield


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100, 48000, 96000])
def test_the_resampling_kernel_gives_the_generic_sums(rate):
    orig, new, width, starts, _ = sinc_resample_taps(rate, 32000)
    x = mx.array(speech("mono", 48000)[0][: rate * 3] if rate <= 48000 else np.resize(speech("mono", 48000)[0], rate))
    padded = mx.pad(x, [(width, width + orig)])
    n_blocks = -(-resample.resampled_length(x.shape[0], rate, 32000) // new)
    ours = np.array(cuda_kernels.resample_phases(x, rate, 32000))
    generic = np.array(resample._phases_strided(padded, orig, n_blocks, starts, device_sinc_taps(rate, 32000)[1]))
    np.testing.assert_allclose(ours, generic.reshape(-1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("preset", ["v2", "v3", "v4"])
def test_the_framing_kernel_gives_the_generic_frames(preset):
    """Several signals of different lengths in one launch, with peaks that divide by 1, by 1.7 and by the
    cap of 2: each signal's rows equal the generic divisor, reflect pad, division, strided frames and
    window product."""
    p = get_preset(preset)
    voice = speech("mono", 48000)[0]
    signals = [mx.array(voice[:n]) for n in (96_000, 31_337, p.n_fft)]
    peaks = mx.array([0.9, 1.7, 2.5])
    counts = [p.n_frames(y.shape[0]) for y in signals]
    frames, first_rows = cuda_kernels.stft_frames(signals, peaks, p.n_fft, p.hop_length, p.pad, counts)
    frames = np.array(frames)
    assert frames.shape == (sum(counts), p.n_fft)
    for k, (y, first, n) in enumerate(zip(signals, first_rows, counts, strict=True)):
        generic, _ = spectrogram.frame_signals([y / spectrogram.peak_divisor(peaks[k])], p)
        expected = np.array(generic[:n] * device_hann(p.n_fft))
        np.testing.assert_allclose(frames[first:first + n], expected, rtol=0, atol=1e-6)  # values up to ~1


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float16])
def test_dma_copies_keep_the_bytes_and_work(dtype):
    """Copied to the GPU and back by the driver: the same values, and the driver took both copies."""
    host = (np.random.default_rng(0).standard_normal(1 << 20) * 1000).astype(dtype)
    device = cuda_kernels.copy_to_device([host])
    assert device.dtype == getattr(mx, np.dtype(dtype).name) and device.shape == host.shape
    back = cuda_kernels.copy_to_host(mx.contiguous(device * 2))
    assert not cuda_kernels._copies["failed"] and cuda_kernels._driver() is not None
    assert back.dtype == host.dtype
    np.testing.assert_array_equal(back, np.array(mx.array(host) * 2))


def test_parts_land_end_to_end():
    """Parts of any size, an empty one among them, each copied into its place: the device holds them end to
    end, and a result of several MB comes back whole."""
    rng = np.random.default_rng(1)
    sizes = [786_449, 5, 0, 262_144, 20_000, 262_143, 524_294]  # 7 divides the sum
    parts = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    joined = np.concatenate(parts)
    device = cuda_kernels.copy_to_device(parts)
    np.testing.assert_array_equal(np.array(device), joined)
    result = mx.contiguous(device.reshape(-1, 7)[:, :5] * 3)  # a fresh result
    np.testing.assert_array_equal(cuda_kernels.copy_to_host(result), joined.reshape(-1, 7)[:, :5] * 3)
    assert not cuda_kernels._copies["failed"]
    with pytest.raises(ValueError, match="one dtype"):
        cuda_kernels.copy_to_device([parts[0], parts[1].astype(np.float16)])


def test_small_and_strided_arrays_copy_through_mlx():
    """Below MIN_DMA_BYTES, or a strided view: MLX's own copy, the same values."""
    small = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(np.array(cuda_kernels.copy_to_device([small])), small)
    big = mx.arange(1 << 18, dtype=mx.float32).reshape(512, 512)
    np.testing.assert_array_equal(cuda_kernels.copy_to_host(big.T), np.array(big).T)


def test_one_signal_frames_from_its_own_length():
    """One signal takes a constant spans table (its length read from the input): the same frames."""
    p = get_preset("v2")
    y = mx.array(speech("mono", 48000)[0][:64_000])
    n = p.n_frames(y.shape[0])
    alone, _ = cuda_kernels.stft_frames([y], mx.zeros((1,)), p.n_fft, p.hop_length, p.pad, [n])
    twice, _ = cuda_kernels.stft_frames([y, y], mx.zeros((2,)), p.n_fft, p.hop_length, p.pad, [n, n])
    np.testing.assert_array_equal(np.array(alone), np.array(twice)[:n])


@pytest.mark.parametrize("preset", ["v3", "v4"])
def test_the_mel_kernel_gives_the_generic_log_mel(preset):
    """The spectrum of real speech through the one-launch magnitude, filterbank and log against the
    generic ops (magnitudes, then the grouped filterbank, then the log)."""
    from dora_reference_mel.features.spectrogram import _normalized_log, apply_filterbank

    p = get_preset(preset)
    y = mx.array(speech("mono", 48000)[0][:p.sample_rate * 3])
    frames, _ = spectrogram.stft_frames([(y, None)], p)  # windowed by the framing kernel, as the node frames
    ours = np.array(cuda_kernels.log_mel(spectrogram.spectrum(frames, p), p))
    spectra = mx.contiguous(spectrogram.magnitude(frames, p, p.n_fft // 2 + 1))
    generic = np.array(_normalized_log(apply_filterbank(spectra, p, groups=4)))
    assert ours.shape == generic.shape == (p.n_mels, spectra.shape[1])
    np.testing.assert_allclose(ours, generic, rtol=0, atol=2e-5)  # log-mel in [-1, ~1]: a few float32 steps
