"""chinese-hubert-base on MLX: transformers' `HubertModel(wav)["last_hidden_state"]` for one 16 kHz clip, as
GPT-SoVITS runs it for the prompt's semantic codes (raw samples, no feature-extractor normalisation).

The architecture is HubertConfig's (and chinese-hubert-base's config.json): seven convolutions without bias
(kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2), a per-channel group norm after the first, exact (erf) GELU
after each; a feature projection (layer norm, linear); a positional convolution (kernel 128, 16 groups, weight
norm over dim 2, the last output dropped for the even kernel) with GELU, added, then the encoder's layer norm
(the post-norm layout, `do_stable_layer_norm=False`); then post-norm transformer layers. Widths, layer count
and the positional kernel are read off the weights, so a smaller model of the same architecture runs too.

Activations are time-major, `[T, channels]`, and every operation goes through one backend (backends.py):
MLX's generic ops on every device, or NumPy with BLAS products where MLX computes on a Linux CPU.

Precision on GPUs: MLX runs float32 products as TF32 on NVIDIA (CUDA backend) and Apple M5 GPUs unless
`MLX_ENABLE_TF32=0` is set before MLX starts; the hidden states then differ from float32 by about 1e-3
relative. The codebook search (codes_model.nearest_codes) runs in float32 on the host whatever the device,
so TF32 never decides between two near codes there; for hidden states as float32 as upstream's, set the
variable.
"""

from __future__ import annotations

import mlx.core as mx

from .backends import ops_for

CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)  # chinese-hubert-base's conv_stride (not recoverable from the weights)
ATTENTION_HEADS = 12  # its num_attention_heads (neither)
LAYER_NORM_EPS = 1e-5  # its layer_norm_eps; GroupNorm's default eps is the same


class ModelError(ValueError):
    """Input the model cannot take: `code` is stable for the caller to map ("bad_weights": a weights file
    that is unreadable or lacks a tensor; "bad_ref_audio", "bad_ref_duration": see codes_model)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


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
    """HubertModel's forward pass (eval mode) over its state dict (`hubert.` prefix or not), on one backend
    ('auto', 'mlx' or 'numpy': backends.py)."""

    def __init__(self, weights: dict[str, mx.array], source: str = "the HuBERT weights",
                 attention_heads: int = ATTENTION_HEADS, backend: str = "auto"):
        weights = {name.removeprefix("hubert."): value.astype(mx.float32) for name, value in weights.items()}
        self.ops = ops = ops_for(backend)
        self.heads = attention_heads

        def take(name: str) -> mx.array:
            if name not in weights:
                raise ModelError("bad_weights", f"{source} has no tensor {name!r}: is it chinese-hubert-base's "
                                 "HubertModel state dict?")
            return weights[name]

        def vector(name: str):
            return ops.array(take(name))

        def linear(name: str) -> tuple:
            return ops.linear_weight(take(name + ".weight")), vector(name + ".bias")

        def norm(name: str) -> tuple:
            return vector(name + ".weight"), vector(name + ".bias")

        self.convs = []
        for i, stride in enumerate(CONV_STRIDES):
            self.convs.append((ops.conv_weight(take(f"feature_extractor.conv_layers.{i}.conv.weight")), stride))
        self.group_norm = norm("feature_extractor.conv_layers.0.layer_norm")
        self.projection_norm = norm("feature_projection.layer_norm")
        self.projection = linear("feature_projection.projection")
        pos = positional_weight(weights, source)
        hidden, per_group, self.pos_kernel = pos.shape
        self.pos_groups = hidden // per_group
        self.pos_weight, self.pos_bias = ops.conv_weight(pos, self.pos_groups), vector(POS_CONV + "bias")
        self.encoder_norm = norm("encoder.layer_norm")
        self.layers = []
        i = 0
        while f"encoder.layers.{i}.attention.q_proj.weight" in weights:
            p = f"encoder.layers.{i}.attention."
            # q, k and v as one product: [in, 3 * hidden]
            qkv = mx.concatenate([take(p + name + "_proj.weight") for name in "qkv"], axis=0)
            qkv_bias = mx.concatenate([take(p + name + "_proj.bias") for name in "qkv"])
            p = f"encoder.layers.{i}."
            self.layers.append({
                "qkv": (ops.linear_weight(qkv), ops.array(qkv_bias)),
                "out": linear(p + "attention.out_proj"),
                "norm": norm(p + "layer_norm"),
                "up": linear(p + "feed_forward.intermediate_dense"),
                "down": linear(p + "feed_forward.output_dense"),
                "final_norm": norm(p + "final_layer_norm"),
            })
            i += 1
        if not self.layers:
            raise ModelError("bad_weights", f"{source} has no transformer layers (encoder.layers.0.attention.q_proj.weight)")
        if hidden % attention_heads:
            raise ModelError("bad_weights", f"{source}: hidden size {hidden} is not a multiple of {attention_heads} "
                             "attention heads")
        ops.evaluate([weight for weight, _ in self.convs], self.group_norm, self.projection_norm, self.projection,
                     self.pos_weight, self.pos_bias, self.encoder_norm, self.layers)

    @property
    def backend(self) -> str:
        return self.ops.name

    @property
    def width(self) -> int:
        """The hidden size: what ssl_proj must take."""
        return self.projection[0].shape[1]

    def linear(self, x, layer: tuple):
        return self.ops.linear(x, layer[0], layer[1])

    def layer_norm(self, x, norm: tuple):
        return self.ops.layer_norm(x, norm[0], norm[1], LAYER_NORM_EPS)

    def features(self, samples):
        """The convolutional feature extractor: [n] samples -> [T, 512] (T = 49.9 per second)."""
        (weight, stride), *rest = self.convs
        x = self.ops.gelu(self.ops.conv1d_channel_norm(samples[:, None], weight, stride, *self.group_norm,
                                                       LAYER_NORM_EPS))
        for weight, stride in rest:
            x = self.ops.gelu(self.ops.conv1d(x, weight, stride))
        return x

    def positional(self, x):
        """The positional convolution (padding K // 2, grouped) with GELU: [T, hidden] -> [T, hidden]. An even
        kernel gives T + 1 outputs and HubertSamePadLayer drops the last."""
        out = self.ops.conv1d(x, self.pos_weight, 1, self.pos_kernel // 2, self.pos_groups)[: x.shape[0]]
        return self.ops.gelu(out + self.pos_bias)

    def attention(self, x, layer: dict):
        n, hidden = x.shape
        heads = self.linear(x, layer["qkv"]).reshape(n, 3, self.heads, hidden // self.heads).transpose(1, 2, 0, 3)
        context = self.ops.attention(heads[0], heads[1], heads[2])  # [heads, T, head]
        return self.linear(context.transpose(1, 0, 2).reshape(n, hidden), layer["out"])

    def encoder_input(self, features):
        """The feature projection, then the positional convolution added and the encoder's layer norm."""
        x = self.linear(self.layer_norm(features, self.projection_norm), self.projection)
        return self.layer_norm(x + self.positional(x), self.encoder_norm)

    def __call__(self, samples):
        """last_hidden_state[0] for one clip of 16 kHz samples [n] (float32 NumPy): [T, hidden], an array of
        the backend's."""
        return self.encoder(self.encoder_input(self.features(self.ops.array(samples))))

    def encoder(self, x):
        """The transformer layers (post-norm)."""
        for layer in self.layers:
            x = self.layer_norm(x + self.attention(x, layer), layer["norm"])
            feed_forward = self.linear(self.ops.gelu(self.linear(x, layer["up"])), layer["down"])
            x = self.layer_norm(x + feed_forward, layer["final_norm"])
        return x
