"""The two array backends the codes model runs on, each offering the few operations hubert.py composes, with
one meaning:

- `MlxOps`: MLX's generic ops (convolution, fused attention and layer norm), on whatever device MLX uses:
  Metal on Apple silicon, CUDA on NVIDIA, the CPU elsewhere.
- `NumpyOps`: NumPy in float32, every product through its BLAS. Chosen where MLX computes on a Linux CPU
  (`mlx[cpu]`), whose products are 25-44x slower than OpenBLAS's there and whose exp and erf are not
  vectorised: a 10 s clip's codes took 66.7 s on MLX's own CPU ops and about 2 s on NumPy
  (benchmarks/codes_speed.py; BENCHMARKS.md, "Prompt codes").

Activations are time-major, `[T, channels]`. Convolution weights arrive as torch stores them,
`[out, in / groups, kernel]`, and are prepared once by `conv_weight`.
"""

from __future__ import annotations

import math
import sys

import mlx.core as mx
import numpy as np

BACKENDS = ("auto", "mlx", "numpy")
SQRT_HALF = 1.0 / math.sqrt(2.0)


def numpy_is_faster() -> bool:
    """Whether the model should run on NumPy: MLX computing on a Linux CPU."""
    return sys.platform.startswith("linux") and mx.default_device() == mx.cpu


def resolve_backend(backend: str) -> str:
    """'mlx' or 'numpy' for a requested backend ('auto' picks by numpy_is_faster)."""
    if backend not in BACKENDS:
        raise ValueError(f"model backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "numpy" if numpy_is_faster() else "mlx"
    return backend


def ops_for(backend: str) -> MlxOps | NumpyOps:
    return NumpyOps() if resolve_backend(backend) == "numpy" else MlxOps()


class MlxOps:
    name = "mlx"

    @staticmethod
    def array(x) -> mx.array:
        return mx.array(x).astype(mx.float32)

    @staticmethod
    def evaluate(*arrays) -> None:
        mx.eval(*arrays)

    @staticmethod
    def conv_weight(weight: mx.array, groups: int = 1) -> mx.array:
        return mx.contiguous(weight.transpose(0, 2, 1))  # MLX's [out, kernel, in / groups]

    @staticmethod
    def conv1d(x: mx.array, weight: mx.array, stride: int, padding: int = 0, groups: int = 1) -> mx.array:
        return mx.conv1d(x[None], weight, stride=stride, padding=padding, groups=groups)[0]

    @staticmethod
    def linear_weight(weight: mx.array) -> mx.array:
        return mx.contiguous(weight.T)

    @staticmethod
    def linear(x: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
        return mx.addmm(bias, x, weight)

    @staticmethod
    def gelu(x: mx.array) -> mx.array:
        """torch's default (exact) GELU: x * Phi(x)."""
        return 0.5 * x * (1.0 + mx.erf(x * SQRT_HALF))

    @staticmethod
    def layer_norm(x: mx.array, weight: mx.array, bias: mx.array, eps: float) -> mx.array:
        return mx.fast.layer_norm(x, weight, bias, eps)

    @classmethod
    def conv1d_channel_norm(cls, x: mx.array, weight: mx.array, stride: int, norm_weight: mx.array,
                            norm_bias: mx.array, eps: float) -> mx.array:
        """A Conv1d without bias, then GroupNorm with one group per channel: each channel normalised over time."""
        x = cls.conv1d(x, weight, stride)
        mean = mx.mean(x, axis=0, keepdims=True)
        var = mx.mean(mx.square(x - mean), axis=0, keepdims=True)
        return (x - mean) * mx.rsqrt(var + eps) * norm_weight + norm_bias

    @staticmethod
    def attention(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        """softmax(q k^T / sqrt(d)) v over [heads, T, d]."""
        return mx.fast.scaled_dot_product_attention(q[None], k[None], v[None], scale=q.shape[-1] ** -0.5)[0]


# erf(z) = 1 - t * poly(t) * exp(-z^2), t = 1 / (1 + P z), z >= 0: Abramowitz & Stegun 7.1.26, absolute error
# below 1.5e-7 (as close to torch's GELU in float64 as torch's own float32 GELU, checked in tests/test_models.py).
# GELU(x) = max(x, 0) - |x| erfc(|x| / sqrt 2) / 2, so with a = |x|: t = 1 / (1 + P a / sqrt 2) and
# GELU(x) = max(x, 0) - a * poly(t) / 2 * t * exp(-a^2 / 2); the constants below fold in the 1 / sqrt 2 and 1 / 2.
ERF_P = 0.3275911
ERF_POLY = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)  # highest power first
GELU_P = np.float32(ERF_P * SQRT_HALF)
GELU_POLY = tuple(np.float32(c / 2) for c in ERF_POLY)
BLOCK = 1 << 15  # elements per elementwise pass: a block's few temporaries stay in a core's L2 cache


class NumpyOps:
    name = "numpy"

    @staticmethod
    def array(x) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32))

    @staticmethod
    def evaluate(*arrays) -> None:
        pass  # NumPy computes eagerly

    @staticmethod
    def conv_weight(weight, groups: int = 1) -> np.ndarray:
        """[out, in / groups, kernel] -> [groups, kernel * in / groups, out / groups], tap-major rows: each
        group's matrix over its unfolded frames."""
        out_ch, per_group, kernel = weight.shape
        w = np.asarray(weight, dtype=np.float32).reshape(groups, out_ch // groups, per_group, kernel)
        return np.ascontiguousarray(w.transpose(0, 3, 2, 1).reshape(groups, kernel * per_group, out_ch // groups))

    @staticmethod
    def conv1d(x: np.ndarray, weight: np.ndarray, stride: int, padding: int = 0, groups: int = 1) -> np.ndarray:
        if padding:
            x = np.pad(x, ((padding, padding), (0, 0)))
        if groups == 1:
            return _conv1d_strided(x, weight[0], weight.shape[1] // x.shape[1], stride)
        return _conv1d_grouped(x, weight, groups, stride)

    @staticmethod
    def linear_weight(weight) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)

    @staticmethod
    def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        out = np.matmul(x, weight)
        out += bias
        return out

    @staticmethod
    def gelu(x: np.ndarray) -> np.ndarray:
        """torch's exact GELU, x * (1 + erf(x / sqrt 2)) / 2, with erf as ERF_POLY gives it."""
        flat, out = np.ascontiguousarray(x).reshape(-1), np.empty(x.size, dtype=np.float32)
        _in_blocks(flat.size, lambda span: _gelu_block(flat[span], out[span]))
        return out.reshape(x.shape)

    @staticmethod
    def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        scale = 1.0 / np.sqrt(np.mean(np.square(centred), axis=-1, keepdims=True) + np.float32(eps))
        return centred * scale * weight + bias

    @staticmethod
    def conv1d_channel_norm(x: np.ndarray, weight: np.ndarray, stride: int, norm_weight: np.ndarray,
                            norm_bias: np.ndarray, eps: float) -> np.ndarray:
        """A Conv1d without bias over one channel, then GroupNorm with one group per channel, as one product.

        Each output channel is frames @ w, so its mean over time is mean(frames) @ w and its variance
        w^T cov(frames) w: the statistics come from the frames' small covariance (in float64), and the norm's
        scale and shift fold into the product's weight and bias. The output is written once, where a product,
        a statistics pass and a normalising pass would read and write it three times."""
        if x.shape[1] != 1:
            raise ValueError(f"the folded channel norm takes one input channel, not {x.shape[1]}")
        frames = _frames(np.ascontiguousarray(x[:, 0]), weight.shape[1], stride)
        wide = frames.astype(np.float64)
        mean = wide.mean(axis=0)
        centred = wide - mean
        covariance = centred.T @ centred / len(frames)
        matrix = weight[0].astype(np.float64)
        scale = norm_weight / np.sqrt(np.einsum("ij,ik,kj->j", matrix, covariance, matrix) + eps)
        return NumpyOps.linear(frames, (matrix * scale).astype(np.float32),
                               (norm_bias - (mean @ matrix) * scale).astype(np.float32))

    @staticmethod
    def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Contiguous operands: NumPy multiplies stacked strided views in its own loop, 6x slower than BLAS.
        q, v = q * np.float32(q.shape[-1] ** -0.5), np.ascontiguousarray(v)
        scores = np.matmul(q, np.ascontiguousarray(k.transpose(0, 2, 1)))
        rows = scores.reshape(-1, scores.shape[-1])
        _in_blocks(len(rows), lambda span: _softmax(rows[span]), max(1, BLOCK // rows.shape[1]))
        return np.matmul(scores, v)


def _conv1d_strided(x: np.ndarray, matrix: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """A Conv1d without padding over x [T, C] as ceil(kernel / stride) products on views, no frames copied:
    x seen as rows of `stride` frames, [T / stride, stride * C], output i reads row i + b for taps
    b * stride .. b * stride + stride - 1."""
    n_in, channels = x.shape
    if channels == 1:  # raw samples: the frames themselves are small, and one product writes the output once
        return _frames(np.ascontiguousarray(x[:, 0]), kernel, stride) @ matrix
    n_out = _output_length(n_in, kernel, stride)
    blocks = -(-kernel // stride)
    rows = n_out + blocks - 1
    if n_in < rows * stride:  # the last row's unread taps
        x = np.concatenate([x, np.zeros((rows * stride - n_in, channels), dtype=np.float32)])
    wide = np.ascontiguousarray(x[: rows * stride]).reshape(rows, stride * channels)
    out = None
    for b in range(blocks):
        taps = min(stride, kernel - b * stride)
        part = wide[b : b + n_out, : taps * channels] @ matrix[b * stride * channels : (b * stride + taps) * channels]
        out = part if out is None else np.add(out, part, out=out)
    return out


def _output_length(n_in: int, kernel: int, stride: int) -> int:
    """The frames a Conv1d without padding gives over n_in, or ValueError when there are none."""
    n_out = (n_in - kernel) // stride + 1
    if n_out < 1:
        raise ValueError(f"{n_in} frames are too few for a convolution of kernel {kernel}")
    return n_out


def _frames(samples: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """[n_out, kernel]: the windows a Conv1d without padding reads from one channel."""
    n_out = _output_length(len(samples), kernel, stride)
    step = samples.strides[0]
    return np.ascontiguousarray(np.lib.stride_tricks.as_strided(samples, (n_out, kernel), (step * stride, step)))


def _conv1d_grouped(x: np.ndarray, weight: np.ndarray, groups: int, stride: int) -> np.ndarray:
    """A grouped Conv1d without padding over x [T, C]: each group's unfolded frames times its matrix."""
    n_in, channels = x.shape
    per_group = channels // groups
    kernel = weight.shape[1] // per_group
    n_out = _output_length(n_in, kernel, stride)
    out = np.empty((n_out, weight.shape[0] * weight.shape[2]), dtype=np.float32)
    width = weight.shape[2]
    for g in range(groups):
        channel_rows = np.ascontiguousarray(x[:, g * per_group : (g + 1) * per_group])
        # Frame i is channel_rows[i * stride : i * stride + kernel] read as one row: a strided view, copied once.
        frames = np.lib.stride_tricks.as_strided(
            channel_rows, (n_out, kernel * per_group), (channel_rows.strides[0] * stride, channel_rows.strides[1]))
        out[:, g * width : (g + 1) * width] = np.ascontiguousarray(frames) @ weight[g]
    return out


def _in_blocks(n: int, work, block: int = BLOCK) -> None:
    """work(slice) over 0..n in blocks, one after another. Not on a thread pool: each block's passes take a few
    microseconds, and two threads handing the GIL to each other at every pass were slower than one."""
    for start in range(0, n, block):
        work(slice(start, start + block))


def _softmax(scores: np.ndarray) -> None:
    """softmax over the last axis, in place."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)


def _gelu_block(x: np.ndarray, out: np.ndarray) -> None:
    """out = GELU(x) by GELU_P and GELU_POLY: one pass per operation over a block that stays in cache."""
    a = np.abs(x)
    t = a * GELU_P
    t += np.float32(1)
    np.divide(np.float32(1), t, out=t)
    q = t * GELU_POLY[0]
    q += GELU_POLY[1]
    for coefficient in GELU_POLY[2:]:
        q *= t
        q += coefficient
    q *= t
    gauss = np.square(a)
    gauss *= np.float32(-0.5)
    np.exp(gauss, out=gauss)
    q *= gauss
    q *= a
    np.maximum(x, np.float32(0), out=out)
    out -= q
