"""What MLX's CUDA backend gets beyond MLX's generic ops: three custom kernels (mx.fast.cuda_kernel: the
resampler, the STFT framing, the log-mel filterbank) and DMA copies (cuMemcpy) to and from the GPU.

Each kernel does what a chain of generic MLX ops does on every other device, with the same float32
operations in the same order (no fused multiply-add: `__fmul_rn`, `__fadd_rn`, `__fdiv_rn`), in one launch
instead of several. They are used only where MLX has a CUDA GPU (`available()`); Metal and the CPU run the
generic ops, which every test covers. The kernels and the copies were tested on an NVIDIA H200 only
(tests/test_cuda_kernels.py, skipped elsewhere).

Every size reaches a kernel at run time (an input's `_shape`, or a small int32 array cached per rate pair
or preset): MLX compiles a kernel once per source and template, and one compile took 2.6 s on the H200, so
no clip length may be a template argument.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import mlx.core as mx
import numpy as np

from . import backend
from .recipe import LOG_CLAMP_MIN, MAGNITUDE_EPS, SPEC_MAX, SPEC_MIN, Preset
from .tables import device_hann, device_sinc_taps, device_sinc_weights, filterbank_bands, sinc_geometry

log = logging.getLogger(__name__)


def _kernel(name: str, inputs: list[str], source: str):
    return mx.fast.cuda_kernel(name=name, input_names=inputs, output_names=["out"], source=source)


# Output sample j * new + k of torchaudio's resampler: block j, phase k sums its taps in tap order, each
# product and each sum rounded on its own, as resample._phases_strided does. The clip is read unpadded: a
# tap outside it reads the zero torchaudio pads with. geometry: orig and the width of that padding.
RESAMPLE_SOURCE = """
    long index = cooperative_groups::this_grid().thread_rank();
    int orig = geometry[0], width = geometry[1], n_new = weights_shape[0], taps = weights_shape[1];
    long n = x_shape[0];
    long n_blocks = (n + orig - 1) / orig;
    if (index >= n_blocks * n_new) return;
    long block = index / n_new;
    int phase = index % n_new;
    long first = block * orig + starts[phase] - width;
    const float* w = weights + (long)phase * taps;
    float acc = 0.0f;
    for (int i = 0; i < taps; ++i) {
        long p = first + i;
        acc = __fadd_rn(acc, __fmul_rn(p >= 0 && p < n ? x[p] : 0.0f, w[i]));
    }
    out[index] = acc;
"""


@functools.cache
def _resampler():
    return _kernel("sinc_resample", ["x", "starts", "weights", "geometry"], RESAMPLE_SOURCE)


@functools.lru_cache(maxsize=64)
def _resample_geometry(orig_freq: int, new_freq: int) -> mx.array:
    orig, _, width = sinc_geometry(orig_freq, new_freq)
    return mx.array([orig, width], dtype=mx.int32)


def resample_phases(x: mx.array, orig_freq: int, new_freq: int) -> mx.array:
    """[ceil(n / orig) * new]: resample._phases_strided's sums over the clip x [n], one launch."""
    weights = device_sinc_weights(orig_freq, new_freq)
    orig, _, _ = sinc_geometry(orig_freq, new_freq)
    n_out = -(-x.shape[0] // orig) * weights.shape[0]
    (out,) = _resampler()(
        inputs=[x, device_sinc_taps(orig_freq, new_freq)[0], weights, _resample_geometry(orig_freq, new_freq)],
        grid=(n_out, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(n_out,)], output_dtypes=[mx.float32])
    return out


# Frame `row` of an STFT over signals laid end to end: spans[s] = (start in `signals`, length, first row) of
# signal s, found by binary search on the first rows; a length of -1 is the whole input (one signal: its
# spans never change, and a table made on the host costs a kernel 0.16 ms to read, copy_bandwidth.py).
# Frame sample i reads the signal at row * hop + i - pad, reflected into [0, n) as numpy's reflect pad does
# (the edge sample is not repeated), divides it by the signal's peak divisor (upstream's v2 rule, from
# peaks[s]; a peak of 0 divides by 1) and multiplies it by the window: the operations of
# signal.peak_divisor, reflect_pad, frame_signals, the division and the window product.
FRAMES_SOURCE = """
    long index = cooperative_groups::this_grid().thread_rank();
    int n_fft = window_shape[0], n_signals = spans_shape[0];
    int hop = steps[0], pad = steps[1];
    const int* last = spans + 3 * (n_signals - 1);
    long n_last = last[1] < 0 ? (long)signals_shape[0] : last[1];
    long n_rows = last[2] + (n_last + 2 * pad - n_fft) / hop + 1;
    if (index >= n_rows * n_fft) return;
    int row = index / n_fft, i = index % n_fft;
    int lo = 0, hi = n_signals - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (spans[3 * mid + 2] <= row) lo = mid; else hi = mid - 1;
    }
    const int* span = spans + 3 * lo;
    long n = span[1] < 0 ? (long)signals_shape[0] : span[1];
    long p = (long)(row - span[2]) * hop + i - pad;
    if (p < 0) p = -p; else if (p >= n) p = 2 * n - 2 - p;
    float peak = peaks[lo];
    float divisor = peak > 1.0f ? fminf(peak, 2.0f) : 1.0f;
    out[index] = __fmul_rn(__fdiv_rn(signals[span[0] + p], divisor), window[i]);
"""


@functools.cache
def _framer():
    return _kernel("stft_frames", ["signals", "spans", "peaks", "window", "steps"], FRAMES_SOURCE)


@functools.lru_cache(maxsize=16)
def _frame_steps(hop: int, pad: int) -> mx.array:
    return mx.array([hop, pad], dtype=mx.int32)


@functools.cache
def _whole_input() -> mx.array:
    return mx.array([[0, -1, 0]], dtype=mx.int32)


def stft_frames(signals: list[mx.array], peaks: mx.array, n_fft: int, hop: int, pad: int,
                counts: list[int]) -> tuple[mx.array, list[int]]:
    """Windowed frames [sum(counts), n_fft] of the signals (counts[s] frames each) and each signal's first
    row: one launch for the reflect padding, the peak division (peaks [n_signals], max |y| of each, or 0
    for none), the framing and the window."""
    lengths = [y.shape[0] for y in signals]
    first_rows = np.cumsum([0, *counts[:-1]]).tolist()
    if len(signals) == 1:
        spans, joined = _whole_input(), signals[0]
    else:
        starts = np.cumsum([0, *lengths[:-1]]).tolist()
        spans = mx.array(np.array([starts, lengths, first_rows], dtype=np.int32).T.copy())
        joined = mx.concatenate(signals)
    n_rows = sum(counts)
    (out,) = _framer()(inputs=[joined, spans, peaks, device_hann(n_fft), _frame_steps(hop, pad)],
                       grid=(n_rows * n_fft, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(n_rows, n_fft)],
                       output_dtypes=[mx.float32])
    return out, first_rows


# Mel band m of frame j from the rfft's complex spectrum [n_frames, n_fft / 2 + 1] (read as float pairs):
# each of the band's bins becomes signal._magnitude's sqrt(re * re + im * im + eps), then the magnitudes
# times the band's weights are summed in bin order, then signal.log_mel's log of the clamped sum and
# norm_spec; each step rounded on its own. The bands are one run padded to the widest
# (tables.filterbank_bands(preset, 1)): the padding adds zero products. One thread per (frame, band),
# bands fastest, so neighbouring threads read neighbouring bins of one frame.
# constants: MAGNITUDE_EPS, the log clamp, SPEC_MIN and SPEC_MAX.
MEL_SOURCE = """
    long index = cooperative_groups::this_grid().thread_rank();
    int n_mels = weights_shape[0], width = weights_shape[1];
    int n_frames = spectrum_shape[0], n_floats = spectrum_shape[1];
    if (index >= (long)n_mels * n_frames) return;
    int frame = index / n_mels, band = index % n_mels;
    const float* w = weights + (long)band * width;
    const float* bins = spectrum + (long)frame * n_floats + 2L * starts[band];
    float acc = 0.0f;
    for (int k = 0; k < width; ++k) {
        float re = bins[2 * k], im = bins[2 * k + 1];
        float power = __fadd_rn(__fadd_rn(__fmul_rn(re, re), __fmul_rn(im, im)), constants[0]);
        acc = __fadd_rn(acc, __fmul_rn(__fsqrt_rn(power), w[k]));
    }
    float logged = logf(fmaxf(acc, constants[1]));
    float span = __fsub_rn(constants[3], constants[2]);
    out[(long)band * n_frames + frame] = __fsub_rn(__fmul_rn(__fdiv_rn(__fsub_rn(logged, constants[2]), span), 2.0f), 1.0f);
"""


@functools.cache
def _mel_kernel():
    return _kernel("log_mel", ["spectrum", "starts", "weights", "constants"], MEL_SOURCE)


@functools.lru_cache(maxsize=16)
def _mel_tables(preset: Preset) -> tuple[mx.array, mx.array, mx.array]:
    ((starts, weights),) = filterbank_bands(preset, 1)
    constants = [MAGNITUDE_EPS, LOG_CLAMP_MIN, SPEC_MIN, SPEC_MAX]
    return mx.array(starts), mx.array(weights), mx.array(constants, dtype=mx.float32)


def log_mel(spectrum: mx.array, preset: Preset) -> mx.array:
    """signal.log_mel of signal.magnitude, from the rfft's spectrum [n_frames, n_fft / 2 + 1] (complex64)
    -> [n_mels, n_frames], one launch."""
    starts, weights, constants = _mel_tables(preset)
    floats = mx.view(mx.contiguous(spectrum), mx.float32)  # [n_frames, 2 * n_bins]: re, im, re, im, ...
    shape = (weights.shape[0], spectrum.shape[0])
    (out,) = _mel_kernel()(inputs=[floats, starts, weights, constants], grid=(shape[0] * shape[1], 1, 1),
                           threadgroup=(256, 1, 1), output_shapes=[shape], output_dtypes=[mx.float32])
    return out


# -- copies between the host and the GPU ----------------------------------------------------------------
# MLX's CUDA backend keeps arrays in managed memory (cudaMallocManaged, mlx/backend/cuda/allocator.cpp): an
# array made from host data is written on the host, and the GPU's first read migrates it page fault by page
# fault (1.9 MB in about 1 ms on the H200, benchmarks/copy_bandwidth.py); a result read on the host
# migrates back the same way. Pages that are already on the GPU take a DMA copy instead (cuMemcpy, the
# driver's path for torch's copies): a new array is made and filled on the GPU, so its pages are there,
# then the host's bytes are copied into it, a batch's clips each straight into its place (not joined on
# the host first); a result is copied out of its pages into a new numpy array. Copying through pinned host
# memory of our own instead was slower on the H200, for one clip and for 16. A copy moves the same bytes
# either way; if the driver refuses, it logs once and MLX copies as before.


@functools.cache
def _driver():
    """libcuda's copies and a private non-blocking stream, or None (then MLX copies as it does)."""
    if not backend.cuda_available():
        return None
    try:
        cuda = ctypes.CDLL("libcuda.so.1")  # the driver MLX's CUDA backend itself links
        device, context, stream = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
        for status in (cuda.cuDeviceGet(ctypes.byref(device), 0),
                       cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),  # the context MLX uses
                       cuda.cuCtxSetCurrent(context),
                       cuda.cuStreamCreate(ctypes.byref(stream), 1)):  # CU_STREAM_NON_BLOCKING
            if status != 0:
                raise OSError(f"CUDA driver error {status}")
        for name in ("cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2"):
            getattr(cuda, name).argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p]
        return cuda, context, stream
    except (OSError, AttributeError) as err:
        log.warning("no DMA copies (%s): copies to and from the GPU fault their pages in", err)
        return None


_copies = {"failed": False}  # one failed call turns the DMA copies off for the process
MIN_DMA_BYTES = 1 << 16  # smaller arrays: a few pages, not worth a driver call


@functools.cache
def _landing_stream() -> mx.Stream:
    return mx.new_stream(mx.gpu)


def _pages(array: mx.array) -> np.ndarray | None:
    """The evaluated array's own managed memory as a numpy view (not a copy), when its bytes are one run."""
    view = np.asarray(memoryview(array))  # evaluates it
    return view if view.flags.c_contiguous and view.nbytes == array.nbytes else None


def _dma(copy: str, pieces: list[tuple[int, int, int]]) -> bool:
    """Driver copies of (destination, source, bytes) on the private stream, waited for; False (and the
    copies off) if the driver refuses."""
    cuda, context, stream = _driver()
    cuda.cuCtxSetCurrent(context)  # this thread may not have used the driver yet
    if any(getattr(cuda, copy)(*piece, stream) for piece in pieces) or cuda.cuStreamSynchronize(stream):
        log.warning("%s failed: copies to and from the GPU fault their pages in", copy)
        _copies["failed"] = True
        return False
    return True


def _dma_usable(nbytes: int) -> bool:
    return backend.current().cuda and nbytes >= MIN_DMA_BYTES and not _copies["failed"] and _driver() is not None


def copy_to_device(parts: list[np.ndarray]) -> mx.array:
    """The host arrays' values end to end, as one flat MLX array of their common dtype, its pages on the GPU
    when MLX's device is a CUDA GPU."""
    flat = [np.ascontiguousarray(part).reshape(-1) for part in parts]
    if len({part.dtype for part in flat}) != 1:
        raise ValueError(f"copy_to_device takes parts of one dtype, not {sorted({p.dtype.name for p in flat})}")
    nbytes = sum(part.nbytes for part in flat)
    if _dma_usable(nbytes):
        # filled on the GPU, so its pages are there; on a stream of its own, so that the fill does not wait
        # for the graphs queued on MLX's default stream (a batch copies graph k + 1's clips in meanwhile)
        with mx.stream(_landing_stream()):
            array = mx.zeros((nbytes // flat[0].itemsize,), dtype=getattr(mx, flat[0].dtype.name))
            mx.eval(array)
        pages = _pages(array)
        if pages is not None:
            offsets = np.cumsum([0] + [part.nbytes for part in flat]).tolist()
            pieces = [(pages.ctypes.data + offset, part.ctypes.data, part.nbytes)
                      for part, offset in zip(flat, offsets[:-1], strict=True) if part.nbytes]
            if _dma("cuMemcpyHtoDAsync_v2", pieces):
                return array
    return mx.array(flat[0] if len(flat) == 1 else np.concatenate(flat))


def copy_to_host(array: mx.array) -> np.ndarray:
    """An MLX array's values in a numpy array of its own."""
    if _dma_usable(array.nbytes):
        pages = _pages(array)
        if pages is not None:
            host = np.empty_like(pages)
            if _dma("cuMemcpyDtoHAsync_v2", [(host.ctypes.data, pages.ctypes.data, host.nbytes)]):
                return host
    return np.array(array)
