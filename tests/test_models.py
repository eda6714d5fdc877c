"""The prompt-codes model (dora_reference_mel.models) against GPT-SoVITS's recipe in torch (oracle_codes.py):
transformers' HubertModel and the upstream quantizer, on seeded random weights written as the MLX line's
safetensors, on real speech at several rates."""

from __future__ import annotations

import json
import os
import sys

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from oracle_codes import UpstreamCodes, small_config
from safetensors.numpy import save_file
from transformers import HubertConfig

from dora_reference_mel.models import ModelError, load_codes_model, prompt_samples, to_16k_mono, weights_digest
from dora_reference_mel.models.backends import NumpyOps, resolve_backend
from helpers import ROOT

SPEECH = ROOT / "tests" / "fixtures" / "speech"
VOICES = ROOT / "models" / "voices"

# TencentGameMate/chinese-hubert-base's config.json (what GPT-SoVITS ships in
# GPT_SoVITS/pretrained_models/chinese-hubert-base/), the keys that shape the forward pass.
CHINESE_HUBERT_BASE = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_bias": False, "feat_extract_norm": "group",
    "feat_extract_activation": "gelu", "feat_proj_layer_norm": True, "do_stable_layer_norm": False,
    "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "num_feat_extract_layers": 7,
}


@pytest.fixture(scope="session")
def small(upstream, tmp_path_factory):
    """(torch reference, hubert.safetensors, sovits.safetensors) of a small model of the architecture."""
    reference = UpstreamCodes(small_config(), upstream)
    return (reference, *reference.save(tmp_path_factory.mktemp("small")))


@pytest.fixture(scope="session")
def full(upstream, tmp_path_factory):
    """The same at chinese-hubert-base's size."""
    reference = UpstreamCodes(HubertConfig(), upstream)
    return (reference, *reference.save(tmp_path_factory.mktemp("full")))


def clip16k(name: str, repeat: int = 1) -> np.ndarray:
    """A speech file as librosa.load(sr=16000) gives it (to_16k_mono, checked against librosa below), the
    file's samples repeated to make a 3-10 s reference of the 2.5 s fixtures."""
    samples, rate = sf.read(name, dtype="float32")
    return to_16k_mono(np.concatenate([samples] * repeat), rate)


def compare(reference: UpstreamCodes, model, wav16k: np.ndarray) -> tuple[float, float, int]:
    """(share of equal codes, hidden states' max abs difference, distinct codes) against the torch recipe."""
    hidden, codes = reference.hidden_and_codes(wav16k)
    ours_hidden = model.hidden_states(wav16k)
    ours = model.codes_of_hidden(ours_hidden)
    assert ours.dtype == np.int32 and ours.shape == codes.shape
    return float(np.mean(ours == codes)), float(np.abs(np.array(ours_hidden) - hidden).max()), len(np.unique(codes))


def test_hubert_config_defaults_are_chinese_hubert_base(upstream):
    shipped = json.loads((upstream / "pretrained_models" / "chinese-hubert-base" / "config.json").read_text())
    defaults = HubertConfig()
    for key, value in CHINESE_HUBERT_BASE.items():
        assert shipped[key] == value, key
        assert (list(getattr(defaults, key)) if isinstance(value, list) else getattr(defaults, key)) == value, key


@pytest.mark.parametrize("name", ["mono_16000", "mono_22050", "stereo_24000", "mono_32000", "stereo_44100", "stereo_48000"])
def test_to_16k_mono_is_librosa_load(name):
    import librosa  # the test extra's, not on every GPU machine

    path = SPEECH / f"{name}.wav"
    expected, _ = librosa.load(path, sr=16000)
    got = to_16k_mono(*sf.read(path, dtype="float32"))
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert np.array_equal(to_16k_mono(*sf.read(path, dtype="int16")), expected)  # PCM as a dora event carries it


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_small_model_codes_match_upstream(small, backend):
    reference, hubert, sovits = small
    model = load_codes_model(hubert, sovits, backend=backend, attention_heads=4)
    assert model.hubert.backend == backend
    clips = {"basil 16 kHz": clip16k(VOICES / "basil.wav"), "22.05 kHz": clip16k(SPEECH / "mono_22050.wav", 2),
             "stereo 32 kHz": clip16k(SPEECH / "stereo_32000.wav", 3), "cleo 44.1 kHz stereo": clip16k(VOICES / "cleo.wav")}
    for name, wav in clips.items():
        agree, diff, distinct = compare(reference, model, wav)
        print(f"small {backend} {name}: {agree:.1%} of codes equal, hidden max diff {diff:.2e}, {distinct} codes")
        assert agree >= 0.99 and diff < 1e-3, name
        assert distinct >= 20, f"{name}: the random weights give degenerate codes"


@pytest.mark.slow
def test_full_size_codes_match_upstream(full):
    reference, hubert, sovits = full
    numpy_path = load_codes_model(hubert, sovits, backend="numpy")
    mlx_path = load_codes_model(hubert, sovits, backend="mlx")
    # aria is 10.0 s at 48 kHz: exactly the 160,000 samples upstream still takes.
    runs = [(numpy_path, "aria 48 kHz", clip16k(VOICES / "aria.wav")),
            (numpy_path, "cleo 44.1 kHz stereo", clip16k(VOICES / "cleo.wav")),
            (mlx_path, "basil 16 kHz, first 3 s", clip16k(VOICES / "basil.wav")[:48_000])]
    for model, name, wav in runs:
        agree, diff, distinct = compare(reference, model, wav)
        print(f"full {model.hubert.backend} {name}: {agree:.1%} of codes equal, hidden max diff {diff:.2e}, "
              f"{distinct} codes")
        assert agree >= 0.99 and diff < 1e-3, name
        assert distinct >= 20, f"{name}: the random weights give degenerate codes"


@pytest.mark.parametrize("layout", ["weight_g", "parametrizations", "folded", "float16"])
def test_weight_layouts_of_the_mlx_line(upstream, tmp_path, layout):
    """The positional convolution as each transformers version saves it (weight norm folded or not), and
    half-precision files (chinese-hubert-base's own dtype), computed in float32 as upstream's fp32 mode does."""
    reference = UpstreamCodes(small_config(), upstream, seed=1)
    dtype = np.float32
    if layout == "float16":
        dtype = np.float16
        for module in (reference.hubert, reference.ssl_proj, reference.quantizer):
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.half().float()
    hubert, sovits = reference.save(tmp_path, "weight_g" if layout == "float16" else layout, dtype)
    model = load_codes_model(hubert, sovits, attention_heads=4)
    agree, diff, _ = compare(reference, model, clip16k(VOICES / "basil.wav"))
    assert agree >= 0.99 and diff < 1e-3


def test_reference_duration_bounds(small):
    _, hubert, sovits = small
    model = load_codes_model(hubert, sovits, attention_heads=4)
    for n in (47_999, 160_001, 0):
        with pytest.raises(ModelError) as refused:
            model.codes(np.zeros(n, dtype=np.float32))
        assert refused.value.code == "bad_ref_duration" and f"{n} samples" in str(refused.value)
    speech = clip16k(VOICES / "aria.wav")
    assert speech.shape == (160_000,)
    # 160,000 + 9,600 samples: 529 HuBERT frames, 264 codes; 48,000 + 9,600: 179 frames, 89 codes.
    assert model.codes(speech).shape == (264,)
    assert model.codes(speech[:48_000]).shape == (89,)
    assert prompt_samples(speech[:48_000], sovits_rate=24_000).shape == (48_000 + 7_200,)  # v3 models


@pytest.mark.parametrize("samples", [np.zeros((60_000, 2), np.float32), np.full(60_000, np.nan, np.float32),
                                     np.full(60_000, "a")], ids=["two channels", "nan", "strings"])
def test_bad_reference_audio(small, samples):
    _, hubert, sovits = small
    with pytest.raises(ModelError) as refused:
        load_codes_model(hubert, sovits, attention_heads=4).codes(samples)
    assert refused.value.code == "bad_ref_audio"


@pytest.mark.parametrize("samples", [np.zeros((60_000, 2, 2), np.float32), np.array(["a", "b"]), np.zeros(9, bool)],
                         ids=["three dims", "strings", "booleans"])
def test_to_16k_mono_refuses_what_is_not_audio(samples):
    with pytest.raises(ModelError) as refused:
        to_16k_mono(samples, 22050)
    assert refused.value.code == "bad_ref_audio"


def test_bad_weights_name_the_file(small, tmp_path):
    _, hubert, sovits = small
    not_tensors = tmp_path / "notes.safetensors"
    not_tensors.write_text("not a safetensors file")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(sovits.read_bytes()[:-5000])
    other_width = tmp_path / "other_width.safetensors"
    save_file({"ssl_proj.weight": np.zeros((8, 8, 2), np.float32), "ssl_proj.bias": np.zeros(8, np.float32),
               "quantizer.vq.layers.0._codebook.embed": np.zeros((1024, 8), np.float32)}, str(other_width))
    cases = [(tmp_path / "missing.safetensors", sovits, "missing.safetensors"),
             (not_tensors, sovits, "notes.safetensors"),
             (hubert, truncated, "truncated.safetensors"),
             (hubert, other_width, "rows of width 64, HuBERT's"),
             (hubert, hubert, "no ssl_proj.weight"),
             (sovits, sovits, "no tensor 'feature_extractor.conv_layers.0.conv.weight'")]
    for hubert_path, sovits_path, named in cases:
        with pytest.raises(ModelError) as refused:
            load_codes_model(hubert_path, sovits_path, attention_heads=4)
        assert refused.value.code == "bad_weights" and named in str(refused.value)


def test_weights_digest_follows_the_bytes(small, tmp_path):
    _, hubert, sovits = small
    model = load_codes_model(hubert, sovits, attention_heads=4)
    assert model.weights_digest == weights_digest(hubert, sovits) != weights_digest(sovits, hubert)
    changed = tmp_path / "sovits.safetensors"
    data = bytearray(sovits.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor's data
    changed.write_bytes(bytes(data))
    assert weights_digest(hubert, changed) != model.weights_digest
    assert len(model.weights_digest) == 32


def test_backend_choice():
    on_linux_cpu = sys.platform.startswith("linux") and mx.default_device() == mx.cpu
    assert resolve_backend("auto") == ("numpy" if on_linux_cpu else "mlx")
    assert resolve_backend("mlx") == "mlx"
    with pytest.raises(ValueError, match="'torch' is not one of auto, mlx, numpy"):
        resolve_backend("torch")


def test_numpy_gelu_is_as_close_to_exact_as_torchs():
    import torch

    x = np.concatenate([np.linspace(-12, 12, 200_001), np.random.default_rng(0).normal(0, 3, 300_000)]).astype(np.float32)
    exact = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    ours = NumpyOps.gelu(x)
    torchs = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.abs(ours - exact).max() <= 2 * np.abs(torchs - exact).max() + 1e-7


@pytest.mark.parametrize("kernel,stride,groups,padding", [(10, 5, 1, 0), (3, 2, 1, 0), (2, 2, 1, 0), (1, 1, 1, 0),
                                                          (7, 2, 1, 0), (16, 1, 4, 8), (5, 3, 2, 0)])
@pytest.mark.parametrize("ops", ["mlx", "numpy"])
def test_convolutions_are_torchs(kernel, stride, groups, padding, ops):
    import torch

    from dora_reference_mel.models.backends import ops_for

    rng = np.random.default_rng(kernel)
    channels = 1 if kernel == 10 else 8
    x = rng.normal(size=(203, channels)).astype(np.float32)
    weight = rng.normal(size=(12, channels // groups, kernel)).astype(np.float32)
    expected = torch.nn.functional.conv1d(torch.from_numpy(x.T[None]), torch.from_numpy(weight), stride=stride,
                                          padding=padding, groups=groups)[0].T.numpy()
    backend = ops_for(ops)
    got = np.array(backend.conv1d(backend.array(x), backend.conv_weight(mx.array(weight), groups), stride, padding, groups))
    assert got.shape == expected.shape
    # MLX on an NVIDIA GPU multiplies in TF32 unless told not to (models/hubert.py, "Precision on GPUs")
    tf32 = ops == "mlx" and mx.default_device() == mx.gpu and os.environ.get("MLX_ENABLE_TF32") != "0"
    np.testing.assert_allclose(got, expected, rtol=1e-2 if tf32 else 1e-5, atol=3e-2 if tf32 else 1e-4)
