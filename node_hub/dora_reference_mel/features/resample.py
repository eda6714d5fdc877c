"""torchaudio's sinc resampling on MLX, in the form that is fastest where it runs, every form giving the
same float32 sums in the same order: compiled kernels over contiguous phase rows on a CPU (for rate
pairs with few phases), one custom kernel on CUDA GPUs (cuda_kernels.resample_phases), strided views per
phase elsewhere, one banded gather for other GPUs with hundreds of phases. Also soxr_hq (librosa's
resampler of early-2025 GPT-SoVITS), which runs on the host.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import os
import shutil

import mlx.core as mx
import numpy as np

from . import backend, cuda_kernels
from .recipe import Preset
from .tables import device_sinc_taps, device_sinc_weights, sinc_geometry, sinc_resample_taps

MAX_KERNEL_TAPS = 4_000_000  # 16 MB of kernel; standard rates need at most 0.3M (22.05 kHz -> 32 kHz)
# On the CPU, rate pairs with few phases (48k, 24k, 16k <-> 32k, 24k, 16k) resample through compiled
# kernels; the hundreds of phases of 44.1k and 22.05k would make too many to build, and keep the strided
# form. A GPU keeps the strided form: there compiled pieces were 2.3 to 6x slower (H200, an earlier
# one-kernel-per-piece form, benchmarks/resampler_compile.py): each is a launch, and the strided
# products are already fast. The same bound picks strided views over one gather on a GPU.
MAX_COMPILED_PHASES = 8
RESAMPLE_BLOCKS = 32768  # output blocks per compiled piece (65536 samples at 3:2): ~2 s of 32 kHz audio
# The last piece is the rest rounded up to a multiple of this: 3 s at 48 kHz -> 24 kHz computes 73728
# blocks, not the 98304 of three whole pieces (72000 needed). Every piece size is traced once (warm_pieces).
TAIL_BLOCKS = 8192
# MLX fuses a chain of at most 11 operations into one kernel (mlx/compile.cpp, max_compile_depth); past
# that it runs the rest op by op. A phase's taps are therefore summed 8 at a time (8 products, 8 adds
# with the running sum), each group one compiled kernel.
TAPS_PER_KERNEL = 8
MAX_CPU_STREAMS = 4  # CPU streams (threads) that independent parts of a graph are spread over


def resampled_length(n_samples: int, sample_rate: int, target_rate: int) -> int:
    """torchaudio's output length: ceil(n * new / orig) with rates reduced by their gcd."""
    if sample_rate == target_rate:
        return n_samples
    gcd = math.gcd(sample_rate, target_rate)
    return -(-n_samples * (target_rate // gcd) // (sample_rate // gcd))


def resample_sinc(x: mx.array, orig_freq: int, new_freq: int) -> mx.array:
    """torchaudio.functional.resample(x, orig, new) with its defaults: [n] -> [ceil(n * new / orig)]."""
    if orig_freq == new_freq:
        return x
    orig, new, width, starts, weights = sinc_resample_taps(orig_freq, new_freq)
    n_out = resampled_length(x.shape[0], orig_freq, new_freq)
    n_blocks = -(-n_out // new)
    here = backend.current()  # compiled only for the pairs the backend's policy names: no build unasked
    if (orig_freq, new_freq) in here.compiled_pairs and uses_compiled_kernels(orig_freq, new_freq):
        return _phases_compiled(x, orig_freq, new_freq, n_blocks).reshape(-1)[:n_out]
    if here.cuda:
        return cuda_kernels.resample_phases(x, orig_freq, new_freq)[:n_out]
    padded = mx.pad(x, [(width, width + orig)])
    device_starts, device_weights = device_sinc_taps(orig_freq, new_freq)
    # One strided view per phase avoids gathers, which MLX's CPU backend runs at ~6 ns an element; on a
    # GPU, hundreds of phases (44.1k, 22.05k inputs) are better as one banded gather: one launch.
    strided = new <= MAX_COMPILED_PHASES or here.cpu
    if strided:
        out = _phases_strided(padded, orig, n_blocks, starts, device_weights)
    else:
        out = _phases_gathered(padded, orig, n_blocks, device_starts, device_sinc_weights(orig_freq, new_freq))
    return out.reshape(-1)[:n_out]


def uses_compiled_kernels(orig_freq: int, new_freq: int) -> bool:
    """Whether resampling orig -> new can run through compiled kernels here (on the CPU, few phases, a
    compiler); it does once the backend's compile policy names the pair (backend.compile_pairs)."""
    _, new, _ = sinc_geometry(orig_freq, new_freq)
    return orig_freq != new_freq and new <= MAX_COMPILED_PHASES and backend.current().cpu and compiler_works()


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
        logging.getLogger(__name__).warning("mx.compile is unavailable (%s); resampling uncompiled", err)
        return False


def _phases_compiled(x: mx.array, orig_freq: int, new_freq: int, n_blocks: int) -> mx.array:
    """[>= n_blocks, new]: the signal cut into pieces (piece_sizes) with the input each reaches, each
    through the compiled kernels. A few piece sizes keep the traced graphs per rate pair few (one per
    size) for every clip length; a clip pays less than TAIL_BLOCKS blocks of padding."""
    orig, _, width, _, _ = sinc_resample_taps(orig_freq, new_freq)
    sizes, margin = piece_sizes(n_blocks), _piece_margin(orig_freq, new_freq)
    padded = mx.pad(x, [(width, max(0, (sum(sizes) + margin) * orig - width - x.shape[0]))])
    piece_phases = _piece_kernels(orig_freq, new_freq)
    streams = cpu_streams()
    pieces, first = [], 0
    for j, size in enumerate(sizes):  # pieces are independent: round robin over the CPU streams, one thread each
        with mx.stream(streams[j % len(streams)]):
            pieces.append(piece_phases(padded[first * orig: (first + size + margin) * orig]))
        first += size
    return pieces[0] if len(pieces) == 1 else mx.concatenate(pieces)


def piece_sizes(n_blocks: int) -> list[int]:
    """Output blocks per piece: whole pieces of RESAMPLE_BLOCKS, then the rest rounded up to TAIL_BLOCKS."""
    whole, rest = divmod(n_blocks, RESAMPLE_BLOCKS)
    return [RESAMPLE_BLOCKS] * whole + ([-(-rest // TAIL_BLOCKS) * TAIL_BLOCKS] if rest else [])


def _piece_margin(orig_freq: int, new_freq: int) -> int:
    """Input rows (of `orig` samples) a piece reads beyond its own blocks: the taps of its last block."""
    orig, _, _, starts, weights = sinc_resample_taps(orig_freq, new_freq)
    return (int(starts.max()) + weights.shape[1] - 1) // orig


def warm_pieces(orig_freq: int, new_freq: int) -> None:
    """Trace the compiled kernels for every piece size (a few ms each), so that no clip length traces
    them on the event path."""
    orig, margin = sinc_resample_taps(orig_freq, new_freq)[0], _piece_margin(orig_freq, new_freq)
    piece_phases = _piece_kernels(orig_freq, new_freq)
    mx.eval([piece_phases(mx.zeros(((size + margin) * orig,)))
             for size in range(TAIL_BLOCKS, RESAMPLE_BLOCKS + 1, TAIL_BLOCKS)])


@functools.cache
def cpu_streams() -> tuple:
    """One MLX CPU stream per core, up to MAX_CPU_STREAMS (made once: each stream is a thread). MLX runs
    each stream on its own thread, and its CPU kernels (the FFT, compiled kernels) on one thread each, so
    independent parts of a graph put on different streams run in parallel on a multi-core CPU."""
    return tuple(mx.new_stream(mx.cpu) for _ in range(min(os.cpu_count() or 1, MAX_CPU_STREAMS)))


@functools.lru_cache(maxsize=64)
def _piece_kernels(orig_freq: int, new_freq: int):
    """One piece [(blocks + margin) * orig] -> [blocks, new]. The piece is first split into its `orig` input
    phases (row r holds samples r, r + orig, ...), so that each tap reads a contiguous slice of one row
    (MLX's compiled CPU kernels are far slower on strided inputs). Each output phase sums its taps in tap
    order, TAPS_PER_KERNEL at a time, each group one compiled kernel adding to the running sum: the same
    float32 additions, in the same order, as the strided form."""
    orig, _, _, starts, weights = sinc_resample_taps(orig_freq, new_freq)
    margin = _piece_margin(orig_freq, new_freq)

    def group_kernel(taps: list[tuple[int, float]]):  # (offset into the piece, weight) of each tap
        def add_taps(rows: mx.array, *running: mx.array) -> mx.array:
            columns = rows.shape[1]
            blocks = columns - margin
            # one view per tap (a slice of a row would be two ops: the slice and the squeeze of its row axis)
            terms = [mx.as_strided(rows, (blocks,), (1,), (offset % orig) * columns + offset // orig) * weight
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


def _phases_strided(padded: mx.array, orig: int, n_blocks: int, starts, weights: list[mx.array]) -> mx.array:
    """[n_blocks, new]: output phase k is a strided view of `padded` times weights[k] [taps], summed."""
    taps = weights[0].shape[0]
    phases = [mx.sum(mx.as_strided(padded[int(start):], (n_blocks, taps), (orig, 1)) * weights[k], axis=-1)
              for k, start in enumerate(starts)]
    return mx.stack(phases, axis=1)


def _phases_gathered(padded: mx.array, orig: int, n_blocks: int, starts: mx.array, weights: mx.array) -> mx.array:
    """[n_blocks, new]: the same sums, every tap of every phase gathered at once (starts [new], weights
    [new, taps] on the device)."""
    index = (mx.arange(n_blocks, dtype=mx.int32)[:, None, None] * orig
             + starts[None, :, None] + mx.arange(weights.shape[1], dtype=mx.int32)[None, None, :])
    return mx.sum(padded[index] * weights, axis=-1)


def resample_soxr_hq(x: mx.array, orig_freq: int, new_freq: int) -> mx.array:
    """librosa.load's soxr_hq resampling (GPT-SoVITS early 2025). libsoxr runs on the CPU."""
    if orig_freq == new_freq:
        return x
    import soxr  # optional: only this resampler needs it

    n_out = resampled_length(x.shape[0], orig_freq, new_freq)
    y = soxr.resample(np.asarray(x, dtype=np.float32), orig_freq, new_freq, quality="HQ")
    y = np.pad(y, (0, max(0, n_out - y.shape[0])))[:n_out]  # librosa's fix_length
    return mx.array(y.astype(np.float32, copy=False))
