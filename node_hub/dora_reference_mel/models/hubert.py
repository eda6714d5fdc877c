"""chinese-hubert-base on MLX: transformers' `HubertModel(wav)["last_hidden_state"]` for one 16 kHz clip, as
GPT-SoVITS runs it for the prompt's semantic codes (raw samples, no feature-extractor normalisation).

The architecture is HubertConfig's (and chinese-hubert-base's config.json): seven convolutions without bias
(kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2), a per-channel group norm after the first, exact (erf) GELU
after each; a feature projection (layer norm, linear); a positional convolution (kernel 128, 16 groups, weight
norm over dim 2, the last output dropped for the even kernel) with GELU, added, then the encoder's layer norm
(the post-norm layout, `do_stable_layer_norm=False`); then post-norm transformer layers. Widths, layer count
and the positional kernel are read off the weights, so a smaller model of the same architecture runs too.

Activations are time-major, `[T, channels]`. Every product (convolutions as unfolded frames times the
weight, attention, linears) goes through `matmul`: MLX's generic op on every backend, or NumPy's BLAS
between `mx.eval` boundaries where MLX runs on a Linux CPU (`mlx[cpu]`), whose own matmul is 25-44x slower
there. Both give float32 products, summed in different orders.

Precision on GPUs: MLX runs float32 products as TF32 on NVIDIA (CUDA backend) and Apple M5 GPUs unless
`MLX_ENABLE_TF32=0` is set before MLX starts; the hidden states then differ from float32 by about 1e-3
relative. The codebook search (codes_model.nearest_codes) runs on MLX's CPU stream whatever the device, so
TF32 never decides between two near codes there; for hidden states as float32 as upstream's, set the variable.
"""

from __future__ import annotations

import math
import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)  # chinese-hubert-base's conv_stride (not recoverable from the weights)
ATTENTION_HEADS = 12  # its num_attention_heads (neither)
LAYER_NORM_EPS = 1e-5  # its layer_norm_eps; GroupNorm's default eps is the same

MATMUL_BACKENDS = ("auto", "mlx", "blas")


class ModelError(ValueError):
    """Input the model cannot take: `code` is stable for the caller to map ("bad_weights": a weights file
    that is unreadable or lacks a tensor; "bad_ref_audio", "bad_ref_duration": see codes_model)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def blas_is_faster() -> bool:
    """Whether products should go through NumPy's BLAS: MLX computing on a Linux CPU (measured 3.5 GFLOP/s
    for a [530, 768] x [768, 3072] product against NumPy's 110 on the same 2 cores)."""
    return sys.platform.startswith("linux") and mx.default_device() == mx.cpu


def resolve_matmul(backend: str) -> str:
    """'mlx' or 'blas' for a requested backend ('auto' picks by blas_is_faster)."""
    if backend not in MATMUL_BACKENDS:
        raise ValueError(f"matmul backend {backend!r} is not one of {', '.join(MATMUL_BACKENDS)}")
    if backend == "auto":
        return "blas" if blas_is_faster() else "mlx"
    return backend


def matmul(a: mx.array, b: mx.array, backend: str, stream=None) -> mx.array:
    """a @ b (batched over leading dims) in float32: MLX's op, or NumPy's BLAS on the evaluated operands
    with the product handed back to MLX. The operands are made contiguous first: NumPy multiplies stacked
    strided views (attention's per-head slices) in its own loop, 6x slower than BLAS."""
    if backend == "blas":
        return mx.array(np.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b)))
    return mx.matmul(a, b, stream=stream)


def gelu(x: mx.array) -> mx.array:
    """torch's default (exact) GELU: x * Phi(x)."""
    return 0.5 * x * (1.0 + mx.erf(x * (1.0 / math.sqrt(2.0))))


def unfold(x: mx.array, kernel: int, stride: int, n_out: int) -> mx.array:
    """[T, C] -> [n_out, kernel * C]: the frames a convolution reads, tap-major (tap j at j*C .. j*C+C-1)."""
    span = stride * (n_out - 1) + 1
    return mx.concatenate([x[j : j + span : stride] for j in range(kernel)], axis=1)


def conv_matrix(weight: mx.array) -> mx.array:
    """torch's Conv1d weight [out, in, k] as the [k * in, out] matrix that multiplies unfolded frames."""
    out_ch, in_ch, kernel = weight.shape
    return mx.contiguous(weight.transpose(2, 1, 0).reshape(kernel * in_ch, out_ch))


def conv1d(x: mx.array, matrix: mx.array, kernel: int, stride: int, backend: str) -> mx.array:
    """A Conv1d without padding over time-major x [T, C] -> [T_out, out]."""
    n_out = (x.shape[0] - kernel) // stride + 1
    if n_out < 1:
        raise ValueError(f"{x.shape[0]} frames are too few for a convolution of kernel {kernel}")
    return matmul(unfold(x, kernel, stride, n_out), matrix, backend)


def weight_norm(g: mx.array, v: mx.array) -> mx.array:
    """torch's weight_norm(dim=2): v * (g / ||v||), the norm over every dim but 2."""
    norm = mx.sqrt(mx.sum(v * v, axis=(0, 1), keepdims=True))
    return v * (g / norm)


POS_CONV = "encoder.pos_conv_embed.conv."
# The positional convolution's weight as transformers saved it: weight_g/weight_v (torch.nn.utils.weight_norm,
# chinese-hubert-base's own file), parametrizations (transformers on torch >= 2.1), or already folded.
WEIGHT_NORM_NAMES = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def positional_weight(weights: dict[str, mx.array], source: str) -> mx.array:
    """The positional convolution's weight [hidden, hidden / groups, kernel], weight norm folded in."""
    if POS_CONV + "weight" in weights:
        return weights[POS_CONV + "weight"]
    for g_name, v_name in WEIGHT_NORM_NAMES:
        if POS_CONV + g_name in weights and POS_CONV + v_name in weights:
            return weight_norm(weights[POS_CONV + g_name], weights[POS_CONV + v_name])
    raise ModelError(
        "bad_weights",
        f"{source} has no positional convolution weight ({POS_CONV}weight, weight_g/weight_v or "
        "parametrizations.weight.original0/1): is it chinese-hubert-base's HubertModel state dict?"
    )


class Hubert:
    """HubertModel's forward pass (eval mode) over MLX arrays of its state dict, `hubert.` prefix or not."""

    def __init__(self, weights: dict[str, mx.array], source: str = "the HuBERT weights",
                 attention_heads: int = ATTENTION_HEADS, matmul_backend: str = "auto"):
        weights = {name.removeprefix("hubert."): value.astype(mx.float32) for name, value in weights.items()}
        self.backend = resolve_matmul(matmul_backend)
        self.heads = attention_heads

        def take(name: str) -> mx.array:
            if name not in weights:
                raise ModelError("bad_weights", f"{source} has no tensor {name!r}: is it chinese-hubert-base's "
                                 "HubertModel state dict?")
            return weights[name]

        self.convs = []
        for i, stride in enumerate(CONV_STRIDES):
            w = take(f"feature_extractor.conv_layers.{i}.conv.weight")
            self.convs.append((conv_matrix(w), w.shape[2], stride))
        self.group_norm = (take("feature_extractor.conv_layers.0.layer_norm.weight"),
                           take("feature_extractor.conv_layers.0.layer_norm.bias"))
        self.projection_norm = (take("feature_projection.layer_norm.weight"), take("feature_projection.layer_norm.bias"))
        self.projection = self._linear(take, "feature_projection.projection")
        pos = positional_weight(weights, source)
        hidden, per_group, kernel = pos.shape
        self.pos_groups, self.pos_kernel = hidden // per_group, kernel
        # [hidden, in/G, K] -> [G, K * in/G, out/G]: each group's matrix over its unfolded frames (tap-major).
        grouped = pos.reshape(self.pos_groups, per_group, per_group, kernel).transpose(0, 3, 2, 1)
        self.pos_matrix = mx.contiguous(grouped.reshape(self.pos_groups, kernel * per_group, per_group))
        self.pos_bias = take(POS_CONV + "bias")
        self.encoder_norm = (take("encoder.layer_norm.weight"), take("encoder.layer_norm.bias"))
        self.layers = []
        i = 0
        while f"encoder.layers.{i}.attention.q_proj.weight" in weights:
            p = f"encoder.layers.{i}."
            self.layers.append({
                "q": self._linear(take, p + "attention.q_proj"),
                "k": self._linear(take, p + "attention.k_proj"),
                "v": self._linear(take, p + "attention.v_proj"),
                "out": self._linear(take, p + "attention.out_proj"),
                "norm": (take(p + "layer_norm.weight"), take(p + "layer_norm.bias")),
                "up": self._linear(take, p + "feed_forward.intermediate_dense"),
                "down": self._linear(take, p + "feed_forward.output_dense"),
                "final_norm": (take(p + "final_layer_norm.weight"), take(p + "final_layer_norm.bias")),
            })
            i += 1
        if not self.layers:
            raise ModelError("bad_weights", f"{source} has no transformer layers (encoder.layers.0.attention.q_proj.weight)")
        if hidden % attention_heads:
            raise ModelError("bad_weights", f"{source}: hidden size {hidden} is not a multiple of {attention_heads} "
                             "attention heads")
        mx.eval([leaf for _, leaf in tree_flatten(self.__dict__) if isinstance(leaf, mx.array)])

    @staticmethod
    def _linear(take, name: str) -> tuple[mx.array, mx.array]:
        """A torch Linear as (weight transposed to [in, out], contiguous, bias)."""
        return mx.contiguous(take(name + ".weight").T), take(name + ".bias")

    def linear(self, x: mx.array, layer: tuple[mx.array, mx.array]) -> mx.array:
        return matmul(x, layer[0], self.backend) + layer[1]

    @staticmethod
    def layer_norm(x: mx.array, norm: tuple[mx.array, mx.array]) -> mx.array:
        return mx.fast.layer_norm(x, norm[0], norm[1], LAYER_NORM_EPS)

    def features(self, samples: mx.array) -> mx.array:
        """The convolutional feature extractor: [n] samples -> [T, 512] (T = 49.9 per second)."""
        x = samples.astype(mx.float32)[:, None]
        for i, (matrix, kernel, stride) in enumerate(self.convs):
            x = conv1d(x, matrix, kernel, stride, self.backend)
            if i == 0:  # GroupNorm with one group per channel: each channel normalised over time
                mean = mx.mean(x, axis=0, keepdims=True)
                var = mx.mean(mx.square(x - mean), axis=0, keepdims=True)
                x = (x - mean) * mx.rsqrt(var + LAYER_NORM_EPS) * self.group_norm[0] + self.group_norm[1]
            x = gelu(x)
        return x

    def positional(self, x: mx.array) -> mx.array:
        """The positional convolution (padding K // 2, grouped) with GELU: [T, hidden] -> [T, hidden]."""
        n, hidden = x.shape
        kernel, groups = self.pos_kernel, self.pos_groups
        padded = mx.pad(x, [(kernel // 2, kernel // 2), (0, 0)])
        # An even kernel gives T + 1 outputs and HubertSamePadLayer drops the last: compute only the first T.
        frames = mx.stack([padded[j : j + n] for j in range(kernel)], axis=1)  # [T, K, hidden]
        frames = frames.reshape(n, kernel, groups, hidden // groups).transpose(2, 0, 1, 3)
        out = matmul(frames.reshape(groups, n, kernel * (hidden // groups)), self.pos_matrix, self.backend)
        return gelu(out.transpose(1, 0, 2).reshape(n, hidden) + self.pos_bias)

    def attention(self, x: mx.array, layer: dict) -> mx.array:
        n, hidden = x.shape
        head = hidden // self.heads
        q, k, v = (self.linear(x, layer[name]).reshape(n, self.heads, head).transpose(1, 0, 2) for name in "qkv")
        scores = matmul(q * (head**-0.5), k.transpose(0, 2, 1), self.backend)  # [heads, T, T]
        context = matmul(mx.softmax(scores, axis=-1), v, self.backend)
        return self.linear(context.transpose(1, 0, 2).reshape(n, hidden), layer["out"])

    def __call__(self, samples: mx.array) -> mx.array:
        """last_hidden_state[0] for one clip of 16 kHz samples [n]: [T, hidden]."""
        x = self.linear(self.layer_norm(self.features(samples), self.projection_norm), self.projection)
        x = self.layer_norm(x + self.positional(x), self.encoder_norm)
        for layer in self.layers:
            x = self.layer_norm(x + self.attention(x, layer), layer["norm"])
            x = self.layer_norm(x + self.linear(gelu(self.linear(x, layer["up"])), layer["down"]), layer["final_norm"])
        return x
