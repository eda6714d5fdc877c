"""GPT-SoVITS reference features on MLX: resample, frame, window, FFT, magnitude or power, mel, log.

Pure signal code: it imports neither dora nor pyarrow, and the only host code is building the
constant tables (resampling taps, window, mel bands) once per (rate, preset). Everything that
touches samples is an MLX array operation on the default device (Metal, CUDA or CPU).

Precision: MLX runs float32 matmuls and convolutions as TF32 on NVIDIA and Apple M5 GPUs by default
(docs/recipe.md, "Precision on GPUs"), which puts a matmul resampler 0.019 and a matmul filterbank 0.24 off upstream.
So the two products here are written as banded gather * weights -> sum: elementwise float32 work,
exact on every device whatever MLX_ENABLE_TF32 says, and cheaper too, since both tables are sparse.
"""

from __future__ import annotations

import functools
import math
import operator
import shutil
from collections.abc import Iterator, Sequence

import mlx.core as mx
import numpy as np

from .contract import DTYPES, FRAMES_BINS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .errors import ReferenceMelError
from .recipe import (
    FBANK,
    KALDI_LOG_FLOOR,
    KALDI_POVEY_POWER,
    KALDI_PREEMPHASIS,
    LINEAR,
    LOG_CLAMP_MIN,
    MAGNITUDE_EPS,
    SINC_LOWPASS_FILTER_WIDTH,
    SINC_ROLLOFF,
    SPEC_MAX,
    SPEC_MIN,
    Preset,
    get_preset,
)

MAX_KERNEL_TAPS = 4_000_000  # 16 MB of kernel; standard rates need at most 0.3M (22.05 kHz -> 32 kHz)
CPU_FRAMES_PER_GRAPH = 600  # ~12 s of v2 frames: the spectra of one graph stay in cache
# ~16 ten-second v2 clips: a batch runs as several graphs, so one graph's copies to and from the device
# overlap the next one's compute (H200, 64 clips: 1.1 to 1.3x the clips/s of one graph for all).
GPU_FRAMES_PER_GRAPH = 8_000
# On the CPU, rate pairs with few phases (48k, 24k, 16k <-> 32k, 24k, 16k) resample through compiled
# kernels; the hundreds of phases of 44.1k and 22.05k would make too many to build, and keep the strided
# form. A GPU keeps the strided form: there compiled pieces were 2.3 to 6x slower (H200, an earlier
# one-kernel-per-piece form, benchmarks/resampler_compile.py): each is a launch, and the strided
# products are already fast.
MAX_COMPILED_PHASES = 8
FILTERBANK_GROUPS = 4  # runs of consecutive mel bands, each padded to its own width (2 to 3x less work)
RESAMPLE_BLOCKS = 32768  # output blocks per compiled piece (65536 samples at 3:2): ~2 s of 32 kHz audio
# MLX fuses a chain of at most 11 operations into one kernel (mlx/compile.cpp, max_compile_depth); past
# that it runs the rest op by op. A phase's taps are therefore summed 8 at a time (8 products, 8 adds
# with the running sum), each group one compiled kernel.
TAPS_PER_KERNEL = 8
# Rate pairs (orig, new) whose compiled resampling kernels may be built when first met; None: any. A
# build takes seconds, so the node builds its pairs at start and restricts compiling to them
# (`compile_only`): a clip at any other rate resamples through the strided form, same output, no stall.
_COMPILED_PAIRS: frozenset[tuple[int, int]] | None = None
OUTPUT_DTYPES = {name: getattr(mx, name) for name in DTYPES}  # the contract's dtypes, as MLX types
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


# ---------------------------------------------------------------------------------------------
# Constant tables (host, float64 where upstream builds them in float64; cached, read-only)
# ---------------------------------------------------------------------------------------------


def sinc_geometry(orig_freq: int, new_freq: int) -> tuple[int, int, int]:
    """(orig, new, width) of torchaudio's kernel: rates reduced by their gcd, and its half-width in
    input samples. The full kernel table is [new, 2 * width + orig]."""
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    return orig, new, math.ceil(SINC_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * SINC_ROLLOFF))


def _nonzero_bands(table: np.ndarray, nonzero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    starts, weights = _nonzero_bands(kernel, np.abs(kernel) > 1e-20)
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
def filterbank_bands(preset: Preset) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The preset's filterbank as bands, in FILTERBANK_GROUPS runs of consecutive bands: starts [n] and
    weights [n, width] of each run's nonzero runs. Mel bands widen with frequency (v4: 2 to 46 bins),
    so each run is padded only to its own widest band, not all of them to the widest of all."""
    fmax = preset.fmax if preset.fmax is not None else preset.sample_rate / 2
    build = kaldi_mel_filterbank if preset.kind == FBANK else slaney_mel_filterbank
    bank = build(preset.sample_rate, preset.n_fft, preset.n_mels, preset.fmin, fmax)
    edges = np.linspace(0, preset.n_mels, FILTERBANK_GROUPS + 1).astype(int)
    return tuple(_nonzero_bands(bank[a:b], bank[a:b] != 0) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # cached tables are shared: no caller may poison them
    return array


# ---------------------------------------------------------------------------------------------
# Input checks (shared by the node, the CLI and the public functions)
# ---------------------------------------------------------------------------------------------


def check_samples(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate PCM and return it as [n, channels] (float32, or int16/int32 PCM, unscaled)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ReferenceMelError("bad_sample_rate", f"sample_rate={sample_rate!r} must be a positive integer in Hz")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ReferenceMelError(
            "bad_sample_rate", f"sample_rate={sample_rate} must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} "
            "Hz; resample the audio to a standard rate such as 16000, 24000, 32000 or 48000 Hz")
    samples = np.asarray(samples)
    if samples.dtype not in (np.float32, np.float64, np.int16, np.int32):
        raise ReferenceMelError(
            "bad_dtype", f"samples of dtype {samples.dtype} are not PCM; send float32, float64, int16 or int32")
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ReferenceMelError(
            "bad_shape", f"samples of shape {samples.shape} must be [n] or [n, channels]")
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
    return samples.astype(np.float32) / np.float32(_INT_SCALE[samples.dtype])


def resampled_length(n_samples: int, sample_rate: int, target_rate: int) -> int:
    """torchaudio's output length: ceil(n * new / orig) with rates reduced by their gcd."""
    if sample_rate == target_rate:
        return n_samples
    gcd = math.gcd(sample_rate, target_rate)
    return -(-n_samples * (target_rate // gcd) // (sample_rate // gcd))


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


# ---------------------------------------------------------------------------------------------
# MLX steps
# ---------------------------------------------------------------------------------------------


def to_mono(clips: Sequence[np.ndarray]) -> list[mx.array]:
    """Checked [n, channels] PCM clips -> [n] float32 each on the device: ints scaled, channels averaged.

    All clips cross to the device in one copy (MLX's CUDA backend copies at ~2 GB/s plus a fixed
    cost per copy), as int16 when they all are (half the bytes), scaled to [-1, 1] on the device.
    """
    as_int16 = all(x.dtype == np.int16 for x in clips)
    # one common dtype for the copy: int16 when all are, else float32 (check_samples made floats float32)
    flat = [(x if as_int16 else pcm_to_float32(x)).reshape(-1) for x in clips]
    device = mx.array(flat[0] if len(flat) == 1 else np.concatenate(flat))
    if as_int16:
        device = device.astype(mx.float32) / _INT_SCALE[np.dtype(np.int16)]
    offsets = np.cumsum([0] + [f.size for f in flat]).tolist()
    mono = []
    for x, start, stop in zip(clips, offsets[:-1], offsets[1:], strict=True):
        part = device[start:stop]
        mono.append(part if x.shape[1] == 1 else mx.mean(part.reshape(-1, x.shape[1]), axis=1))
    return mono


def resample_sinc(x: mx.array, orig_freq: int, new_freq: int) -> mx.array:
    """torchaudio.functional.resample(x, orig, new) with its defaults: [n] -> [ceil(n * new / orig)]."""
    if orig_freq == new_freq:
        return x
    orig, new, width, starts, weights = sinc_resample_taps(orig_freq, new_freq)
    n_out = resampled_length(x.shape[0], orig_freq, new_freq)
    n_blocks = -(-n_out // new)
    if uses_compiled_kernels(orig_freq, new_freq) and (_COMPILED_PAIRS is None or (orig_freq, new_freq) in _COMPILED_PAIRS):
        return _phases_compiled(x, orig_freq, new_freq, n_blocks).reshape(-1)[:n_out]
    padded = mx.pad(x, [(width, width + orig)])
    # One strided view per phase avoids gathers, which MLX's CPU backend runs at ~6 ns an element; on a
    # GPU, hundreds of phases (44.1k, 22.05k inputs) are better as one banded gather: one launch.
    strided = new <= MAX_COMPILED_PHASES or mx.default_device() == mx.cpu
    out = (_phases_strided if strided else _phases_gathered)(padded, orig, n_blocks, starts, weights)
    return out.reshape(-1)[:n_out]


def uses_compiled_kernels(orig_freq: int, new_freq: int) -> bool:
    """Whether resampling orig -> new runs through compiled kernels here (on the CPU, few phases, a compiler)."""
    _, new, _ = sinc_geometry(orig_freq, new_freq)
    return orig_freq != new_freq and new <= MAX_COMPILED_PHASES and mx.default_device() == mx.cpu and compiler_works()


def compile_only(pairs) -> None:
    """Build compiled resampling kernels only for these (orig, new) rate pairs (None: for any pair)."""
    global _COMPILED_PAIRS
    _COMPILED_PAIRS = None if pairs is None else frozenset(pairs)


def resampling_pairs(sample_rate: int, preset: Preset) -> list[tuple[int, int]]:
    """The (orig, new) sinc resampling steps a clip at `sample_rate` takes through the preset."""
    steps = [(sample_rate, preset.input_rate)] if preset.resampler == "torchaudio" else []
    steps.append((preset.input_rate, preset.sample_rate))
    return [(a, b) for a, b in steps if a != b]


@functools.cache
def compiler_works() -> bool:
    """Whether mx.compile builds CPU kernels here. MLX builds them with `g++` from PATH and, where
    `g++ --version` fails, runs compiled functions op by op without a word (mlx/backend/cpu/jit_compiler.cpp,
    `JitCompiler::available`); the pieces run that way were slower than the strided form (twice as
    slow, measured with an earlier one-kernel form), so without g++ the strided form is used. A
    compiler that is there but fails is caught here too."""
    if shutil.which("g++") is None:
        return False
    try:
        mx.eval(mx.compile(lambda a: a * 2.0 + 1.0)(mx.zeros((4,), stream=mx.cpu)))
        return True
    except (RuntimeError, ValueError) as err:
        import logging

        logging.getLogger(__name__).warning("mx.compile is unavailable (%s); resampling uncompiled", err)
        return False


def _phases_compiled(x: mx.array, orig_freq: int, new_freq: int, n_blocks: int) -> mx.array:
    """[>= n_blocks, new]: the signal cut into pieces of RESAMPLE_BLOCKS output blocks (and the input
    they reach), each through the same compiled kernels. Fixed-size pieces keep one traced graph per
    rate pair for every clip length; a clip pays at most one piece of padding."""
    orig, _, width, starts, weights = sinc_resample_taps(orig_freq, new_freq)
    n_pieces = -(-n_blocks // RESAMPLE_BLOCKS)
    step = RESAMPLE_BLOCKS * orig
    reach = (RESAMPLE_BLOCKS - 1) * orig + int(starts.max()) + weights.shape[1]
    length = -(-reach // orig) * orig  # whole blocks of `orig` input samples
    padded = mx.pad(x, [(width, max(0, (n_pieces - 1) * step + length - width - x.shape[0]))])
    piece_phases = _piece_kernels(orig_freq, new_freq)
    return mx.concatenate([piece_phases(padded[j * step: j * step + length]) for j in range(n_pieces)])


@functools.lru_cache(maxsize=64)
def _piece_kernels(orig_freq: int, new_freq: int):
    """One piece [length] -> [RESAMPLE_BLOCKS, new]. The piece is first split into its `orig` input
    phases (row r holds samples r, r + orig, ...), so that each tap reads a contiguous slice of one row
    (MLX's compiled CPU kernels are far slower on strided inputs). Each output phase sums its taps in tap
    order, TAPS_PER_KERNEL at a time, each group one compiled kernel adding to the running sum: the same
    float32 additions, in the same order, as the strided form."""
    orig, _, _, starts, weights = sinc_resample_taps(orig_freq, new_freq)

    def group_kernel(taps: list[tuple[int, float]]):  # (offset into the piece, weight) of each tap
        def add_taps(rows: mx.array, *running: mx.array) -> mx.array:
            terms = [rows[offset % orig, offset // orig: offset // orig + RESAMPLE_BLOCKS] * weight
                     for offset, weight in taps]
            return functools.reduce(operator.add, [*running, *terms])

        return mx.compile(add_taps)

    phases = []
    for start, row in zip(starts.tolist(), weights.tolist(), strict=True):
        taps = [(start + i, weight) for i, weight in enumerate(row)]
        phases.append([group_kernel(taps[g:g + TAPS_PER_KERNEL]) for g in range(0, len(taps), TAPS_PER_KERNEL)])

    def piece_phases(piece: mx.array) -> mx.array:
        rows = mx.contiguous(piece.reshape(-1, orig).T)  # [orig, length / orig]
        out = []
        for groups in phases:
            running = ()
            for add_taps in groups:
                running = (add_taps(rows, *running),)
            out.append(running[0])
        return mx.stack(out, axis=-1)

    return piece_phases


def _phases_strided(padded: mx.array, orig: int, n_blocks: int, starts, weights) -> mx.array:
    """[n_blocks, new]: output phase k is a strided view of `padded` times weights[k], summed."""
    taps = weights.shape[1]
    phases = [mx.sum(mx.as_strided(padded[int(start):], (n_blocks, taps), (orig, 1)) * mx.array(weights[k]), axis=-1)
              for k, start in enumerate(starts)]
    return mx.stack(phases, axis=1)


def _phases_gathered(padded: mx.array, orig: int, n_blocks: int, starts, weights) -> mx.array:
    """[n_blocks, new]: the same sums, every tap of every phase gathered at once."""
    index = (mx.arange(n_blocks, dtype=mx.int32)[:, None, None] * orig
             + mx.array(starts)[None, :, None] + mx.arange(weights.shape[1], dtype=mx.int32)[None, None, :])
    return mx.sum(padded[index] * mx.array(weights), axis=-1)


def resample_soxr_hq(x: mx.array, orig_freq: int, new_freq: int) -> mx.array:
    """librosa.load's soxr_hq resampling (GPT-SoVITS early 2025). libsoxr runs on the CPU."""
    if orig_freq == new_freq:
        return x
    import soxr  # optional: only this resampler needs it

    n_out = resampled_length(x.shape[0], orig_freq, new_freq)
    y = soxr.resample(np.asarray(x, dtype=np.float32), orig_freq, new_freq, quality="HQ")
    y = np.pad(y, (0, max(0, n_out - y.shape[0])))[:n_out]  # librosa's fix_length
    return mx.array(y.astype(np.float32, copy=False))


def peak_normalize(y: mx.array) -> mx.array:
    """Upstream's v2 rule: if max|y| > 1, divide by min(2, max|y|)."""
    peak = mx.max(mx.abs(y))
    return y / mx.where(peak > 1, mx.minimum(peak, 2.0), 1.0)


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


def magnitude(frames: mx.array, preset: Preset, n_bins: int) -> mx.array:
    """|rfft(frames * periodic hann)| with eps inside the root: [n_frames, n_fft] -> [n_bins, n_frames].

    The kept bins are cut and transposed before the fused kernel reads them, so one pass over the
    spectrum writes the result in its final layout."""
    spectrum = mx.fft.rfft(frames * mx.array(hann_window(preset.win_length)), axis=-1)
    return _magnitude(spectrum[:, :n_bins].T)


def apply_filterbank(spectra_t: mx.array, preset: Preset) -> mx.array:
    """The preset's filterbank over [n_freq, n_frames] spectra -> [n_mels, n_frames].

    Each band is a run of whole rows (frequency bins) times its weights, summed: MLX's CPU backend
    gathers whole rows far faster than single elements, and the sum is elementwise-exact everywhere.
    """
    mels = []
    for starts, weights in filterbank_bands(preset):
        index = (mx.array(starts)[:, None] + mx.arange(weights.shape[1], dtype=mx.int32)[None, :]).reshape(-1)
        rows = mx.take(spectra_t, index, axis=0).reshape(len(starts), weights.shape[1], -1)
        mels.append(mx.sum(rows * mx.array(weights)[:, :, None], axis=1))
    return mx.concatenate(mels)


def log_mel(mag_t: mx.array, preset: Preset) -> mx.array:
    """Slaney filterbank, natural log of clamp(x, 1e-5), norm_spec: [n_freq, n_frames] -> [n_mels, n_frames]."""
    mel = apply_filterbank(mag_t, preset)
    return (mx.log(mx.maximum(mel, LOG_CLAMP_MIN)) - SPEC_MIN) / (SPEC_MAX - SPEC_MIN) * 2 - 1


def _preemphasized(frames: mx.array) -> mx.array:
    """Kaldi's per-frame DC removal, then x[j] - 0.97 x[j - 1] with x[-1] = x[0]."""
    frames = frames - mx.mean(frames, axis=1, keepdims=True)
    previous = mx.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    return frames - KALDI_PREEMPHASIS * previous


def kaldi_fbank(frames: mx.array, preset: Preset) -> mx.array:
    """torchaudio.compliance.kaldi.fbank over [n_frames, win_length] frames -> [n_frames, n_mels]:
    DC removal, pre-emphasis, Povey window, zero-padded to n_fft, power spectrum, mel bands, log."""
    windowed = _preemphasized(frames) * mx.array(povey_window(preset.win_length))
    spectrum = mx.fft.rfft(windowed, n=preset.n_fft, axis=-1)
    power = mx.real(spectrum) * mx.real(spectrum) + mx.imag(spectrum) * mx.imag(spectrum)
    mel = apply_filterbank(mx.contiguous(power.T), preset)
    return mx.log(mx.maximum(mel, KALDI_LOG_FLOOR)).T


def preprocess(x: mx.array, sample_rate: int, preset: Preset) -> mx.array:
    """Mono [n] on the device -> the signal at the preset rate, ready to frame: [n_resampled]."""
    resample = resample_soxr_hq if preset.resampler == "soxr_hq" else resample_sinc
    y = resample(x, sample_rate, preset.input_rate)
    if preset.peak_normalize:
        y = peak_normalize(y)
    return resample_sinc(y, preset.input_rate, preset.sample_rate)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def reference_mel_batch_mx(
    clips: Sequence[np.ndarray], sample_rates: Sequence[int], preset: Preset
) -> tuple[mx.array, list[int]]:
    """Lazy MLX graph for many checked clips: one copy in, one FFT (and mel product) over all their
    frames. Returns the features of every frame row in the preset's layout ([n_bins, n_rows], or
    [n_rows, n_bins] for frames_bins) and the first row of each clip (its n_frames rows follow)."""
    signals = [preprocess(x, sr, preset) for x, sr in zip(to_mono(clips), sample_rates, strict=True)]
    frames, first_rows = frame_signals(signals, preset)
    if preset.kind == FBANK:
        return kaldi_fbank(frames, preset), first_rows
    features = magnitude(frames, preset, preset.n_bins if preset.kind == LINEAR else preset.n_fft // 2 + 1)
    return (features if preset.kind == LINEAR else log_mel(mx.contiguous(features), preset)), first_rows


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
    rates = [sample_rate] * len(clips) if isinstance(sample_rate, (int, np.integer)) else list(sample_rate)
    if len(rates) != len(clips):
        raise ReferenceMelError(
            "bad_sample_rate", f"{len(rates)} sample rates for {len(clips)} clips; give one rate or one per clip")
    if not clips:
        return []
    checked = [check_samples(x, sr) for x, sr in zip(clips, rates, strict=True)]
    counts = [preset.n_frames(check_long_enough(x.shape[0], sr, preset)) for x, sr in zip(checked, rates, strict=True)]
    # Frames per MLX graph: a GPU wants big launches; MLX's CPU kernels slow down once a graph's spectra
    # leave the cache (benchmarks/inprocess.py: the FFT of 4000 frames costs about 8.5x that of 500).
    budget = CPU_FRAMES_PER_GRAPH if mx.default_device() == mx.cpu else GPU_FRAMES_PER_GRAPH
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
    host = np.array(features)
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
