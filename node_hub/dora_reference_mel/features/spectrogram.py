"""GPT-SoVITS reference features on MLX: resample, frame, window, FFT, magnitude or power, mel, log.

Pure signal code: it imports neither dora nor pyarrow. The constant tables (tables.py) are built on
the host and uploaded once per (rate, preset); the resampler is resample.py. Everything that touches
samples is an MLX array operation on the default device (Metal, CUDA or CPU).

Precision: MLX runs float32 matmuls and convolutions as TF32 on NVIDIA and Apple M5 GPUs by default
(docs/recipe.md, "Precision on GPUs"), which puts a matmul resampler 0.019 and a matmul filterbank 0.24 off upstream.
So the two products here are written as banded gather * weights -> sum: elementwise float32 work,
exact on every device whatever MLX_ENABLE_TF32 says, and cheaper too, since both tables are sparse.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence

import mlx.core as mx
import numpy as np

from ..errors import ReferenceMelError
from ..limits import DTYPES, FRAMES_BINS
from . import backend, cuda_kernels
from .pcm import INT_SCALE, check_long_enough, check_sample_rate, check_samples, pcm_to_float32
from .recipe import (
    FBANK,
    KALDI_LOG_FLOOR,
    KALDI_PREEMPHASIS,
    LINEAR,
    LOG_CLAMP_MIN,
    MAGNITUDE_EPS,
    SPEC_MAX,
    SPEC_MIN,
    Preset,
    get_preset,
)
from .resample import (
    cpu_streams,
    resample_sinc,
    resample_soxr_hq,
    resampling_pairs,
    uses_compiled_kernels,
    warm_pieces,
)
from .tables import device_filterbank, device_hann, device_povey

CPU_FRAMES_PER_GRAPH = 600  # ~12 s of v2 frames: the spectra of one graph stay in cache
# ~16 ten-second v2 clips: a batch runs as several graphs, so one graph's copies to and from the device
# overlap the next one's compute (H200, 64 clips: 1.1 to 1.3x the clips/s of one graph for all).
GPU_FRAMES_PER_GRAPH = 8_000
# Per-frame work (window, FFT, magnitude, mel) is spread over the CPU streams (resample.cpu_streams) for
# graphs with at least this many frame rows per stream: 3 s clips (150 to 300 rows) gain 4 to 8% split in
# two, 1 s clips are left whole. Two streams took 500 FFTs of 2048 from 3.86 to 2.40 ms on 2 cores
# (identical output).
MIN_ROWS_PER_STREAM = 64
OUTPUT_DTYPES = {name: getattr(mx, name) for name in DTYPES}  # the contract's dtypes, as MLX types

# ---------------------------------------------------------------------------------------------
# MLX steps
# ---------------------------------------------------------------------------------------------


def to_mono(clips: Sequence[np.ndarray]) -> list[mx.array]:
    """Checked [n, channels] PCM clips -> [n] float32 each on the device: ints scaled, channels averaged.

    All clips cross to the device as one array (on a CUDA GPU straight from where they lie:
    cuda_kernels.copy_to_device), as int16 when they all are (half the bytes), scaled to [-1, 1] there.
    """
    as_int16 = all(x.dtype == np.int16 for x in clips)
    # one common dtype for the copy: int16 when all are, else float32 (check_samples made floats float32)
    flat = [(x if as_int16 else pcm_to_float32(x)).reshape(-1) for x in clips]
    device = cuda_kernels.copy_to_device(flat)
    if as_int16:
        device = device.astype(mx.float32) / INT_SCALE[np.dtype(np.int16)]
    offsets = np.cumsum([0] + [f.size for f in flat]).tolist()
    mono = []
    for x, start, stop in zip(clips, offsets[:-1], offsets[1:], strict=True):
        part = device[start:stop]
        mono.append(part if x.shape[1] == 1 else mx.mean(part.reshape(-1, x.shape[1]), axis=1))
    return mono


@functools.partial(mx.compile, shapeless=True)  # three scalar steps, one launch on a GPU
def peak_divisor(peak: mx.array) -> mx.array:
    """Upstream's v2 rule, as the number to divide by: min(2, peak) if the peak max|y| is above 1, else 1."""
    return mx.where(peak > 1, mx.minimum(peak, 2.0), 1.0)


def reflect_pad(y: mx.array, preset: Preset) -> mx.array:
    """Reflect-pad by (n_fft - hop) // 2 on each side (numpy's reflect: the edge is not repeated)."""
    pad = preset.pad
    return mx.concatenate([y[pad:0:-1], y, y[-2:-pad - 2:-1]])


def frame_signals(signals: Sequence[mx.array], preset: Preset) -> tuple[mx.array, list[int]]:
    """[n_frames, frame_length] frames of several signals as one strided view, no copies.

    Each signal (reflect-padded for the STFT presets; as is for Kaldi's snip_edges) is zero-extended
    to a multiple of hop_length and all are laid end to end, so one view with stride hop_length frames
    them all; frames that straddle two signals are extra rows. Returns the frames and the first row of
    each signal (its n_frames rows follow).
    """
    hop = preset.hop_length
    parts, first_rows, rows = [], [], 0
    for y in signals:
        padded = reflect_pad(y, preset) if preset.pad else y
        extra = -padded.shape[0] % hop
        parts.append(mx.pad(padded, [(0, extra)]) if extra else padded)
        first_rows.append(rows)
        rows += parts[-1].shape[0] // hop
    joined = parts[0] if len(parts) == 1 else mx.concatenate(parts)
    n_rows = (joined.shape[0] - preset.frame_length) // hop + 1
    return mx.as_strided(joined, (n_rows, preset.frame_length), (hop, 1)), first_rows


@functools.partial(mx.compile, shapeless=True)  # one fused kernel, traced once for every clip length
def _magnitude(spectrum: mx.array) -> mx.array:
    real, imag = mx.real(spectrum), mx.imag(spectrum)
    return mx.sqrt(real * real + imag * imag + MAGNITUDE_EPS)


def stft_frames(prepared: Sequence[tuple[mx.array, mx.array | None]], preset: Preset) -> tuple[mx.array, list[int]]:
    """The STFT presets' frames of preprocessed signals (each with its peak still to divide by, or None):
    the frames and the first row of each signal.

    On a CUDA GPU one kernel pads, divides, frames and windows (cuda_kernels.stft_frames); elsewhere
    the division comes first and the frames are a strided view, windowed by `spectrum` (on the CPU,
    part by part on the CPU streams)."""
    if backend.current().cuda:
        if not preset.peak_normalize:
            peaks = mx.zeros((len(prepared),))  # divides by 1
        else:  # one signal: a view, not a copy
            peaks = prepared[0][1].reshape(1) if len(prepared) == 1 else mx.stack([peak for _, peak in prepared])
        counts = [preset.n_frames(y.shape[0]) for y, _ in prepared]
        frames, first_rows = cuda_kernels.stft_frames([y for y, _ in prepared], peaks, preset.n_fft,
                                                      preset.hop_length, preset.pad, counts)
        return frames, first_rows
    return frame_signals([y if peak is None else y / peak_divisor(peak) for y, peak in prepared], preset)


def spectrum(frames: mx.array, preset: Preset) -> mx.array:
    """rfft(frames * periodic hann) of stft_frames' frames: [n_frames, n_fft] -> [n_frames, n_fft / 2 + 1]
    complex (on a CUDA GPU its framing kernel has applied the window already)."""
    return mx.fft.rfft(frames if backend.current().cuda else frames * device_hann(preset.win_length), axis=-1)


def magnitude(frames: mx.array, preset: Preset, n_bins: int) -> mx.array:
    """|spectrum| with eps inside the root: [n_frames, n_fft] -> [n_bins, n_frames].

    The kept bins are cut and transposed before the fused kernel reads them, so one pass over the
    spectrum writes the result in its final layout."""
    return _magnitude(spectrum(frames, preset)[:, :n_bins].T)


def apply_filterbank(spectra_t: mx.array, preset: Preset, groups: int | None = None) -> mx.array:
    """The preset's filterbank over [n_freq, n_frames] spectra -> [n_mels, n_frames].

    Each band is a run of whole rows (frequency bins) times its weights, summed: MLX's CPU backend
    gathers whole rows far faster than single elements, and the sum is elementwise-exact everywhere.
    groups: runs of bands, each padded to its widest. By default a GPU takes all bands in one run (one
    launch each for the gather, product and sum), and a CPU, which pays per element, several.
    """
    mels = []
    if groups is None:
        groups = None if backend.current().cpu else 1
    for index, weights, n_bands, width in device_filterbank(preset, groups):
        rows = mx.take(spectra_t, index, axis=0).reshape(n_bands, width, -1)
        mels.append(mx.sum(rows * weights, axis=1))
    return mx.concatenate(mels)


@functools.partial(mx.compile, shapeless=True)  # one fused kernel for the five elementwise steps
def _normalized_log(mel: mx.array) -> mx.array:
    return (mx.log(mx.maximum(mel, LOG_CLAMP_MIN)) - SPEC_MIN) / (SPEC_MAX - SPEC_MIN) * 2 - 1


def log_mel(mag_t: mx.array, preset: Preset) -> mx.array:
    """Slaney filterbank, natural log of clamp(x, 1e-5), norm_spec: [n_freq, n_frames] -> [n_mels, n_frames]."""
    return _normalized_log(apply_filterbank(mag_t, preset))


def pairwise_row_mean(rows: mx.array) -> mx.array:
    """The mean of each row [n, width] -> [n, 1], summed pairwise: the row zero-padded to a power of two,
    then halves added until one column is left. torch and numpy sum pairwise too; MLX's CPU `mx.mean`
    adds sequentially in float32, whose error (up to width * eps * |mean|) a large DC offset carries
    into every sample. Elementwise adds only, so the same sums on every device (no TF32 matmul)."""
    width = rows.shape[1]
    summed = mx.pad(rows, [(0, 0), (0, (1 << (width - 1).bit_length()) - width)])
    while summed.shape[1] > 1:
        half = summed.shape[1] // 2
        summed = summed[:, :half] + summed[:, half:]
    return summed / width


def _preemphasized(frames: mx.array) -> mx.array:
    """Kaldi's per-frame DC removal, then x[j] - 0.97 x[j - 1] with x[-1] = x[0]."""
    frames = frames - pairwise_row_mean(frames)
    previous = mx.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    return frames - KALDI_PREEMPHASIS * previous


def kaldi_fbank(frames: mx.array, preset: Preset) -> mx.array:
    """torchaudio.compliance.kaldi.fbank over [n_frames, win_length] frames -> [n_frames, n_mels]:
    DC removal, pre-emphasis, Povey window, zero-padded to n_fft, power spectrum, mel bands, log."""
    windowed = _preemphasized(frames) * device_povey(preset.win_length)
    spectrum = mx.fft.rfft(windowed, n=preset.n_fft, axis=-1)
    power = mx.real(spectrum) * mx.real(spectrum) + mx.imag(spectrum) * mx.imag(spectrum)
    mel = apply_filterbank(mx.contiguous(power.T), preset)
    return mx.log(mx.maximum(mel, KALDI_LOG_FLOOR)).T


def preprocess(x: mx.array, sample_rate: int, preset: Preset) -> tuple[mx.array, mx.array | None]:
    """Mono [n] on the device -> the signal at the preset rate [n_resampled], and its peak max|y| when it
    is still to be normalised by it (None: nothing left to divide). The division is left to the framing,
    which a CUDA GPU fuses with it."""
    resample = resample_soxr_hq if preset.resampler == "soxr_hq" else resample_sinc
    y = resample(x, sample_rate, preset.input_rate)
    peak = mx.max(mx.abs(y)) if preset.peak_normalize else None
    if preset.input_rate == preset.sample_rate:
        return y, peak
    # sv: normalised at v2's rate, then resampled to its own
    return resample_sinc(y if peak is None else y / peak_divisor(peak), preset.input_rate, preset.sample_rate), None


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def reference_mel_batch_mx(
    clips: Sequence[np.ndarray], sample_rates: Sequence[int], preset: Preset
) -> tuple[mx.array, list[int]]:
    """Lazy MLX graph for many checked clips: one copy in, one FFT (and mel product) over all their
    frames. Returns the features of every frame row in the preset's layout ([n_bins, n_rows], or
    [n_rows, n_bins] for frames_bins) and the first row of each clip (its n_frames rows follow)."""
    return features_mx(to_mono(clips), sample_rates, preset)


def features_mx(mono: Sequence[mx.array], sample_rates: Sequence[int], preset: Preset) -> tuple[mx.array, list[int]]:
    """reference_mel_batch_mx from mono signals already on the device (to_mono's)."""
    prepared = [preprocess(x, sr, preset) for x, sr in zip(mono, sample_rates, strict=True)]
    if preset.kind == FBANK:  # Kaldi's framing: no padding, and the window comes after pre-emphasis
        frames, first_rows = frame_signals([y for y, _ in prepared], preset)
    else:
        frames, first_rows = stft_frames(prepared, preset)
    streams = cpu_streams() if backend.current().cpu else ()
    if len(streams) < 2 or frames.shape[0] < len(streams) * MIN_ROWS_PER_STREAM:
        return frame_features(frames, preset), first_rows
    # Every step from here on is per frame, so the rows can be cut into parts, each part's graph on its
    # own CPU stream: MLX runs each stream on its own thread, and its CPU FFT (pocketfft) is
    # single-threaded. The parts are the same float32 operations on the same rows: identical output.
    edges = np.linspace(0, frames.shape[0], len(streams) + 1).astype(int).tolist()
    parts = []
    for stream, start, stop in zip(streams, edges[:-1], edges[1:], strict=True):
        with mx.stream(stream):
            parts.append(frame_features(frames[start:stop], preset))
    return mx.concatenate(parts, axis=0 if preset.layout == FRAMES_BINS else 1), first_rows


def frame_features(frames: mx.array, preset: Preset) -> mx.array:
    """The preset's feature of each frame row [n_rows, frame_length]: [n_bins, n_rows], or [n_rows, n_bins]
    for frames_bins (sv): the STFT presets' from stft_frames, sv's from frame_signals."""
    if preset.kind == FBANK:
        return kaldi_fbank(frames, preset)
    if preset.kind != LINEAR and backend.current().cuda:  # magnitudes, filterbank and log in one kernel
        return cuda_kernels.log_mel(spectrum(frames, preset), preset)
    features = magnitude(frames, preset, preset.n_bins if preset.kind == LINEAR else preset.n_fft // 2 + 1)
    return features if preset.kind == LINEAR else log_mel(mx.contiguous(features), preset)


def reference_mel_batch(
    clips: Sequence[np.ndarray],
    sample_rate: int | Sequence[int],
    *,
    preset: str | Preset = "v2",
    resampler: str | None = None,
    dtype: str = "float32",
) -> list[np.ndarray]:
    """Reference features of many clips (any lengths, any rates) in few MLX evaluations.

    clips: each [n] or [n, channels]; sample_rate: one rate for all, or one per clip.
    dtype: "float32", or "float16": computed in float32, rounded once on the device, so half the
    bytes cross back (GPT-SoVITS's half-precision path rounds the same float32 values).
    Returns one [1, n_bins, n_frames] array per clip ([1, n_frames, n_bins] for the sv preset),
    equal to `reference_mel` of each (clips computed in one graph come back as views of one host array:
    no copy per clip).
    """
    preset = get_preset(preset, resampler=resampler)
    if dtype not in OUTPUT_DTYPES:
        raise ReferenceMelError("bad_config", f"dtype={dtype!r} must be one of {', '.join(OUTPUT_DTYPES)}")
    one_rate = isinstance(sample_rate, (str, bytes)) or np.ndim(sample_rate) == 0
    rates = [sample_rate] * len(clips) if one_rate else list(sample_rate)
    if len(rates) != len(clips):
        raise ReferenceMelError(
            "bad_sample_rate", f"{len(rates)} sample rates for {len(clips)} clips; give one rate or one per clip")
    if not clips:
        return []
    checked, counts = [], []
    for index, (clip, rate) in enumerate(zip(clips, rates, strict=True)):
        try:
            rates[index] = check_sample_rate(rate)
            checked.append(check_samples(clip, rates[index]))
            counts.append(preset.n_frames(check_long_enough(checked[-1].shape[0], rates[index], preset)))
        except ReferenceMelError as err:
            if len(clips) == 1:
                raise
            raise ReferenceMelError(err.code, f"clip {index} of {len(clips)}: {err.message}") from None
    # Frames per MLX graph: a GPU wants big launches; MLX's CPU kernels slow down once a graph's spectra
    # leave the cache (benchmarks/inprocess.py: the FFT of 4000 frames costs about 8.5x that of 500).
    budget = CPU_FRAMES_PER_GRAPH if backend.current().cpu else GPU_FRAMES_PER_GRAPH
    results, previous = [], None
    for start, stop in graph_spans(counts, budget):
        features, first_rows = reference_mel_batch_mx(checked[start:stop], rates[start:stop], preset)
        features = features.astype(OUTPUT_DTYPES[dtype])
        # Evaluate in the background: the next graph's samples are copied in, and this one's result
        # copied out, while the device computes.
        mx.async_eval(features)
        if previous is not None:
            results += split_rows(*previous, preset)
        previous = (features, first_rows, counts[start:stop])
    return results + split_rows(*previous, preset)


def graph_spans(counts: Sequence[int], budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive clips [start, stop) whose frame counts fit one graph of `budget` frames (at least one clip)."""
    start = 0
    while start < len(counts):
        stop, frames = start + 1, counts[start]
        while stop < len(counts) and frames + counts[stop] <= budget:
            frames += counts[stop]
            stop += 1
        yield start, stop
        start = stop


def split_rows(features: mx.array, first_rows: list[int], counts: Sequence[int], preset: Preset) -> list[np.ndarray]:
    """One graph's result, copied out once, as a [1, ...] view per clip."""
    host = cuda_kernels.copy_to_host(features)
    frames_first = preset.layout == FRAMES_BINS
    return [(host[a:a + n] if frames_first else host[:, a:a + n])[None]
            for a, n in zip(first_rows, counts, strict=True)]


def reference_mel(
    samples: np.ndarray, sample_rate: int, *, preset: str | Preset = "v2", resampler: str | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """GPT-SoVITS's reference feature of one clip, computed with MLX.

    samples: [n] or [n, channels], float PCM or int16/int32 PCM (scaled to [-1, 1]).
    preset: "v2" -> linear spectrogram [1, 704, n_frames] at 32 kHz; "v3"/"v4" -> prompt log-mel
    [1, 100, n_frames] at 24/32 kHz (n_frames = n_resampled // hop_length); "sv" -> v2Pro's speaker
    fbank [1, n_frames, 80] at 16 kHz, frames first (n_frames = 1 + (n_resampled - 400) // 160).
    """
    return reference_mel_batch([samples], sample_rate, preset=preset, resampler=resampler, dtype=dtype)[0]


WARM_RATES = (16000, 24000, 48000)  # recording rates warmed at start (44.1k/22.05k resample uncompiled)
WARM_UP_ATTEMPTS = 30  # a second apart: another process's build of one kernel takes seconds
WARM_UP_SECONDS = 10  # upstream's longest reference


def warm_up(presets: Sequence[Preset]) -> set[tuple[int, int]]:
    """Run every preset once on 10 s of audio at its own rates and at the common recording rates, with
    the backend's compile policy extended to the resampling pairs among them that compile here: MLX
    builds those kernels (seconds, the first time on a machine; then from its disk cache), traces them
    for every piece size, and fills MLX's buffer cache where it keeps one. Returns the pairs built."""
    rng = np.random.default_rng(0)
    rates = {preset: sorted({preset.sample_rate, preset.input_rate, *WARM_RATES}) for preset in presets}
    built = {pair for preset in presets for rate in rates[preset] for pair in resampling_pairs(rate, preset)
             if uses_compiled_kernels(*pair)}
    backend.compile_pairs(backend.current().compiled_pairs | built)
    for preset in presets:
        for rate in rates[preset]:
            samples = (rng.standard_normal((rate * WARM_UP_SECONDS, 1)) * 0.1).astype(np.float32)
            for attempt in range(WARM_UP_ATTEMPTS):
                try:
                    reference_mel(samples, rate, preset=preset)
                    break
                except RuntimeError as err:
                    # MLX's kernel cache on disk is shared by every process on the machine, and it is not
                    # written atomically: a node starting beside another that is building the same kernel
                    # can find a half-written library. Once the other is done, it loads.
                    if attempt == WARM_UP_ATTEMPTS - 1:
                        raise
                    logging.getLogger(__name__).warning("warm-up of %s at %d Hz: %s; retrying", preset.name, rate,
                                                        str(err)[:200])
                    time.sleep(1.0)
    for pair in built:
        warm_pieces(*pair)
    return built
