"""The node's tensors through GPT-SoVITS's own models, against the same models fed by upstream's own recipe.

The models are the classes of the gpt-sovits-cpufast wheel (module/models.py's SynthesizerTrn with its
MelStyleEncoder `ref_enc`, eres2net/ERes2NetV2.py, sv.py's SV with eres2net/kaldi.py), built from the
wheel's configs/s2.json and s2v2Pro.json with seeded random weights; the wheel is downloaded and unpacked
(oracle_codes.unpack_upstream), never installed, and only these modules are imported: models.py pulls in
module/* and text/symbols*.py, nothing of the text front end. Upstream's side is GPT-SoVITS main's
TTS._get_ref_spec: mono, torchaudio's resampling to 32 kHz (torchaudio where it is installed, else its
float32 run as tests/oracle.py models it: the wheel resamples with PyAV, which main does not), peak
normalisation, the wheel's own spectrogram_torch, and for v2Pro the 16 kHz audio that SV.compute_embedding3
turns into a kaldi fbank and an embedding. The node's side is reference_mel's `v2` refer and `sv` fbank.
The v3/v4 prompt mel is compared as the CFM receives it (the CFM itself, with f5_tts, is not in the wheel:
docs/consumers.md has the manual check against an upstream checkout).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from oracle_codes import unpack_upstream

import oracle
from dora_reference_mel import reference_mel
from helpers import VOICES, speech

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

MODEL_FILES = tuple(f"module/{name}.py" for name in (
    "__init__", "models", "modules", "commons", "attentions", "mrte_model", "transforms", "quantize", "core_vq",
    "distrib", "ddp_utils", "mel_processing")) + tuple(f"text/{name}.py" for name in ("__init__", "symbols", "symbols2")) \
    + tuple(f"eres2net/{name}.py" for name in ("ERes2NetV2", "pooling_layers", "fusion", "kaldi")) \
    + ("sv.py", "configs/s2.json", "configs/s2v2Pro.json")
# measured: the recipe <= 2.4e-6 relative on ge and on the speaker embedding; a wrong recipe >= 3.9e-4
RELATIVE_BOUND = 1e-5
CLIPS = [("mono", 16000), ("stereo", 22050), ("mono", 44100), ("stereo", 48000), ("aria", 48000)]
# ERes2NetV2 at full size takes seconds a clip on a CPU: the speaker model sees the first second of three
SV_CLIPS, SV_SECONDS = [CLIPS[0], CLIPS[1], CLIPS[3]], 1.0
SV_WEIGHTS = "GPT_SoVITS/pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt"  # where sv.py loads them


def clip(name: str, rate: int, seconds: float | None = None) -> np.ndarray:
    if name == "aria":  # a 10 s voice of the shipped library
        import soundfile

        samples, sr = soundfile.read(str(VOICES / "aria.wav"), dtype="float32")
        assert sr == rate
    else:
        samples = speech(name, rate)[0]
    return samples if seconds is None else samples[: int(seconds * rate)]


def relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The unpacked GPT_SoVITS folder on sys.path, with seeded random ERes2NetV2 weights where sv.py reads them."""
    data = tmp_path_factory.mktemp("gpt_sovits_data")
    folder = unpack_upstream(tmp_path_factory.mktemp("upstream"), MODEL_FILES)
    if folder is None:
        pytest.skip("the package index is out of reach: cannot download gpt-sovits-cpufast for its models")
    for path in (str(folder), str(folder / "eres2net")):
        if path not in sys.path:
            sys.path.insert(0, path)
    for name in [n for n in sys.modules if n == "module" or n.startswith("module.")]:
        del sys.modules[name]  # another test's unpacked subset of the wheel: this one has every module
    from ERes2NetV2 import ERes2NetV2

    torch.manual_seed(1)
    weights = data / SV_WEIGHTS
    weights.parent.mkdir(parents=True)
    torch.save(ERes2NetV2(baseWidth=24, scale=4, expansion=4).state_dict(), weights)
    os.environ["GPT_SOVITS_DATA_DIR"] = str(data)  # read once, when sv.py is imported
    try:
        import sv
    finally:
        del os.environ["GPT_SOVITS_DATA_DIR"]
    return folder, sv.SV("cpu", False)


@pytest.fixture(scope="module")
def models(upstream):
    """The v2 and v2Pro SynthesizerTrn, built once."""
    return {config: synthesizer(upstream[0], config) for config in ("s2.json", "s2v2Pro.json")}


def synthesizer(folder, config: str):
    """SynthesizerTrn as TTS.init_vits_weights builds it from a SoVITS checkpoint's config, seeded."""
    from module.models import SynthesizerTrn

    hps = json.loads((folder / "configs" / config).read_text())
    torch.manual_seed(0)
    model = SynthesizerTrn(hps["data"]["filter_length"] // 2 + 1, hps["train"]["segment_size"] // hps["data"]["hop_length"],
                           n_speakers=hps["data"]["n_speakers"], **hps["model"],
                           version="v2Pro" if "v2Pro" in config else "v2")
    return model.eval()


def resample_float32(audio: np.ndarray, rate: int, target: int = 32000) -> np.ndarray:
    """[n] float32 at `rate` -> `target` as torchaudio.functional.resample runs in float32."""
    if rate == target:
        return audio
    try:
        import torchaudio
    except ImportError:
        return oracle.sinc_resample(audio.astype(np.float64), rate, target, np.float32).astype(np.float32)
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, target).numpy()


def upstream_refer_and_16k(samples: np.ndarray, rate: int):
    """GPT-SoVITS main's TTS._get_ref_spec: (refer [1, 1025, T], v2Pro's 16 kHz audio [1, n])."""
    from module.mel_processing import spectrogram_torch

    audio = samples.mean(axis=1) if samples.ndim == 2 else samples  # [n, channels] here, [channels, n] there
    audio = torch.from_numpy(resample_float32(audio.astype(np.float32), rate))[None]
    peak = audio.abs().max()
    if peak > 1:
        audio /= min(2, peak)
    spec = spectrogram_torch(audio, 2048, 32000, 640, 2048, center=False)
    audio16k = oracle.sinc_resample(audio[0].double().numpy(), 32000, 16000, np.float32).astype(np.float32)
    return spec, torch.from_numpy(audio16k)[None]


def ge_of(model, refer) -> torch.Tensor:
    """The reference encoder's vector, as SynthesizerTrn's decode computes it for one refer: ref_enc on the first
    704 bins under an all-ones mask."""
    mask = torch.ones((1, 1, refer.shape[2]), dtype=refer.dtype)
    with torch.no_grad():
        return model.ref_enc(refer[:, :704] * mask, mask)


@pytest.mark.parametrize("name, rate", CLIPS)
def test_v2_ge_from_the_node_is_upstreams(models, name, rate):
    model = models["s2.json"]
    samples = clip(name, rate)
    theirs, _ = upstream_refer_and_16k(samples, rate)
    ours = torch.from_numpy(reference_mel(samples, rate))
    assert ours.shape == (1, 704, theirs.shape[2])
    error = relative(ge_of(model, ours), ge_of(model, theirs))
    wrong = relative(ge_of(model, torch.from_numpy(reference_mel(samples, rate, resampler="soxr_hq"))),
                     ge_of(model, theirs))
    print(f"v2 ge {name} {rate}: relative {error:.2e} (soxr_hq, another recipe: {wrong:.2e})")
    assert error <= RELATIVE_BOUND
    if rate != 32000:
        assert wrong > 10 * RELATIVE_BOUND  # the comparison tells recipes apart


@pytest.mark.parametrize("name, rate", SV_CLIPS)
def test_v2pro_speaker_embedding_from_the_node_is_upstreams(upstream, models, name, rate):
    """sv.py's SV.compute_embedding3 on upstream's 16 kHz audio (its own kaldi fbank) against the same
    ERes2NetV2 on the node's sv fbank; then the v2Pro ge they give."""
    sv = upstream[1]
    samples = clip(name, rate, SV_SECONDS)
    refer, audio16k = upstream_refer_and_16k(samples, rate)
    with torch.no_grad():
        theirs = sv.compute_embedding3(audio16k)
        ours = sv.embedding_model.forward3(torch.from_numpy(reference_mel(samples, rate, preset="sv")))
    assert ours.shape == theirs.shape == (1, 20480)
    error = relative(ours, theirs)
    model = models["s2v2Pro.json"]
    with torch.no_grad():
        ge_ours = model.prelu(ge_of(model, torch.from_numpy(reference_mel(samples, rate))) + model.sv_emb(ours)[..., None])
        ge_theirs = model.prelu(ge_of(model, refer) + model.sv_emb(theirs)[..., None])
    ge_error = relative(ge_ours, ge_theirs)
    print(f"v2Pro {name} {rate}: embedding relative {error:.2e}, ge relative {ge_error:.2e}")
    assert error <= RELATIVE_BOUND and ge_error <= RELATIVE_BOUND


@pytest.mark.parametrize("config", ["s2.json", "s2v2Pro.json"])
def test_decoded_audio_from_the_node_is_upstreams(upstream, models, config):
    """SynthesizerTrn.decode, the same codes, phonemes and noise, with the node's refer (and embedding) or
    upstream's: the audio agrees to the same relative bound."""
    sv, model = upstream[1], models[config]
    samples, rate = clip("mono", 44100, SV_SECONDS), 44100
    refer, audio16k = upstream_refer_and_16k(samples, rate)
    pro = model.is_v2pro
    with torch.no_grad():
        sv_theirs = sv.compute_embedding3(audio16k) if pro else None
        sv_ours = sv.embedding_model.forward3(torch.from_numpy(reference_mel(samples, rate, preset="sv"))) if pro else None
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 1024, (1, 1, 10), generator=generator)  # 0.4 s of semantic codes (25 a second)
    phones = torch.randint(1, 300, (1, 6), generator=generator)
    audio = []
    for spec, embedding in ((torch.from_numpy(reference_mel(samples, rate)), sv_ours), (refer, sv_theirs)):
        torch.manual_seed(4)  # the same noise both ways
        audio.append(model.decode(codes, phones, [spec], sv_emb=[embedding] if pro else None)[0, 0].numpy())
    assert audio[0].shape == audio[1].shape == (10 * 2 * 640,)
    error = relative(*audio)
    print(f"decode {config}: audio relative {error:.2e}, peak {np.abs(audio[1]).max():.2e}")
    assert np.abs(audio[1]).max() > 0 and error <= RELATIVE_BOUND


@pytest.mark.parametrize("name, rate", CLIPS[:4])
@pytest.mark.parametrize("preset, sample_rate, n_fft, hop", [("v3", 24000, 1024, 256), ("v4", 32000, 1280, 320)])
def test_prompt_mel_from_the_node_is_upstreams(upstream, preset, sample_rate, n_fft, hop, name, rate):
    """The v3/v4 CFM's prompt mel `mel2`, as TTS.using_vocoder_synthesis makes it: the raw audio made mono,
    resampled by torchaudio, mel_fn / mel_fn_v4 (the wheel's mel_spectrogram_torch with TTS.py's parameters),
    norm_spec. Within the log-mel bounds of docs/recipe.md (max 1e-2, mean 1e-4)."""
    from module.mel_processing import mel_spectrogram_torch

    samples = clip(name, rate)
    audio = samples.mean(axis=1) if samples.ndim == 2 else samples
    audio = torch.from_numpy(resample_float32(audio.astype(np.float32), rate, sample_rate))[None]
    mel = mel_spectrogram_torch(audio, n_fft=n_fft, num_mels=100, sampling_rate=sample_rate, hop_size=hop,
                                win_size=n_fft, fmin=0, fmax=None, center=False)
    theirs = ((mel + 12) / 14 * 2 - 1).numpy()  # norm_spec
    ours = reference_mel(samples, rate, preset=preset)
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(np.float64) - theirs)
    print(f"{preset} prompt mel {name} {rate}: max {diff.max():.2e} mean {diff.mean():.2e}")
    assert diff.max() <= 1e-2 and diff.mean() <= 1e-4
