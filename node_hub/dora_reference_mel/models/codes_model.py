"""GPT-SoVITS's prompt semantic codes on MLX, as `TTS._set_prompt_semantic` computes them (GPT-SoVITS main,
GPT_SoVITS/TTS_infer_pack/TTS.py):

1. `librosa.load(path, sr=16000)`: mono as the mean of the channels, soxr_hq resampling, the length fixed to
   ceil(n * 16000 / rate) (`to_16k_mono` does it from samples; reading the file is the caller's);
2. a reference outside 48,000..160,000 samples (3 to 10 s) is refused (`bad_ref_duration`);
3. int(sampling_rate * 0.3) zeros are appended, sampling_rate being the SoVITS model's (32 kHz for v1, v2,
   v2Pro and v4: 9600 zeros; 24 kHz for v3);
4. chinese-hubert-base's `last_hidden_state` on the raw samples (hubert.Hubert);
5. `SynthesizerTrn.extract_latent`: `ssl_proj` (Conv1d 768->768, kernel 2, stride 2 for 25 Hz models), then
   layer 0 of the residual vector quantizer: the nearest codebook row by upstream's distance,
   argmax of -(|x|^2 - 2 x.e + |e|^2), giving 25 codes a second.

Weights are the MLX line's safetensors (~/.dora/models/primespeech/gpt-sovits-mlx/): `hubert.safetensors`
(HubertModel's state dict, `hubert.` prefix stripped) and the SoVITS file with torch's names
(`ssl_proj.weight`, `ssl_proj.bias`, `quantizer.vq.layers.0._codebook.embed`). Half-precision files are
computed in float32, as upstream does when not in half mode.

The codebook search runs in float32 on the host on every device, so TF32 products on a GPU (hubert.py,
"Precision on GPUs") never pick between two near codes; the hidden states before it follow MLX_ENABLE_TF32.
"""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import xxhash

from .hubert import ATTENTION_HEADS, Hubert, ModelError
from .weights_file import read_tensors

TARGET_RATE = 16_000
MIN_REF_SAMPLES = 48_000  # 3 s at 16 kHz: upstream's bounds, before the zeros are appended
MAX_REF_SAMPLES = 160_000  # 10 s
SOVITS_RATE = 32_000  # hps.data.sampling_rate of v1, v2, v2Pro and v4 SoVITS models (v3: 24000)
TAIL_SECONDS = 0.3
SSL_PROJ = "ssl_proj."
CODEBOOK = "quantizer.vq.layers.0._codebook.embed"
SOVITS_TENSORS = (SSL_PROJ + "weight", SSL_PROJ + "bias", CODEBOOK)
CODEBOOK_ROWS = 1024  # GPT-SoVITS's bins: codes 0..1023 (1024 is the GPT's end-of-sequence token)
MAX_SOVITS_TENSOR = 4 * 1024 * 1024  # values a tensor read from a TRAINED voice's file may hold (ssl_proj: 1.2 M)


# Integer PCM as soundfile reads it into float32 (what librosa.load gets): divided by 2^15 or 2^31.
PCM_SCALE = {np.dtype(np.int16): 1 / 32768, np.dtype(np.int32): 1 / 2147483648}


def float_samples(samples: np.ndarray) -> np.ndarray:
    """float32 samples from float or int16/int32 PCM; anything else is bad_ref_audio."""
    samples = np.asarray(samples)
    if samples.dtype in PCM_SCALE:
        return samples * np.float32(PCM_SCALE[samples.dtype])
    if samples.dtype.kind != "f":
        raise ModelError("bad_ref_audio", f"reference samples of dtype {samples.dtype}: expected float, int16 or int32 PCM")
    return samples.astype(np.float32, copy=False)


def to_16k_mono(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """What librosa.load(path, sr=16000) returns, from the samples soundfile reads ([n] or [n, channels];
    float, or int16/int32 PCM) at their rate: float32 mono (the mean of the channels), resampled with soxr's
    HQ quality, cut or zero-padded to ceil(n * 16000 / rate) computed in floating point as librosa does."""
    import soxr  # optional dependency (the `soxr` extra): only resampling needs it

    y = float_samples(samples)
    if y.ndim == 2:
        y = np.mean(y.T, axis=0)  # librosa.to_mono over soundfile's [n, channels] read, transposed
    if y.ndim != 1:
        raise ModelError("bad_ref_audio", f"reference samples of shape {y.shape}: expected [n] or [n, channels]")
    if sample_rate == TARGET_RATE:
        return y
    n_out = length_at_16k(y.shape[0], sample_rate)
    resampled = soxr.resample(y, sample_rate, TARGET_RATE, quality="soxr_hq")
    return np.asarray(np.pad(resampled, (0, max(0, n_out - resampled.shape[0])))[:n_out], dtype=np.float32)


def length_at_16k(n: int, sample_rate: int) -> int:
    """How many samples librosa.load(sr=16000) gives for n samples at sample_rate (to_16k_mono's length)."""
    return n if sample_rate == TARGET_RATE else int(np.ceil(n * (float(TARGET_RATE) / sample_rate)))


def check_duration(n: int) -> None:
    """bad_ref_duration unless n samples at 16 kHz are within upstream's 3 to 10 s."""
    if not MIN_REF_SAMPLES <= n <= MAX_REF_SAMPLES:
        raise ModelError(
            "bad_ref_duration",
            f"the reference is {n / TARGET_RATE:.2f} s ({n} samples at 16 kHz); GPT-SoVITS takes 3 to 10 s "
            f"({MIN_REF_SAMPLES} to {MAX_REF_SAMPLES} samples): record or cut a reference of that length",
        )


def prompt_samples(wav16k: np.ndarray, sovits_rate: int = SOVITS_RATE) -> np.ndarray:
    """The 16 kHz reference checked for upstream's 3-10 s and followed by int(sovits_rate * 0.3) zeros."""
    wav16k = float_samples(wav16k)
    if wav16k.ndim != 1:
        raise ModelError("bad_ref_audio", f"16 kHz reference samples of shape {wav16k.shape}: expected one channel [n]")
    check_duration(wav16k.shape[0])
    if not np.isfinite(wav16k).all():
        raise ModelError("bad_ref_audio", "the reference holds NaN or infinite samples: re-export the audio")
    return np.concatenate([wav16k, np.zeros(int(sovits_rate * TAIL_SECONDS), dtype=np.float32)])


def nearest_codes(x: np.ndarray, embed: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook row for each row of x [N, D], by upstream's expression
    (EuclideanCodebook.quantize), in float32 on the host: a GPU's TF32 products never decide it."""
    dots = x @ embed.T
    dist = -((np.sum(x * x, axis=1, keepdims=True) - 2 * dots) + np.sum(embed * embed, axis=1)[None])
    return np.argmax(dist, axis=1).astype(np.int32)


def _float32(tensor) -> np.ndarray:
    """A tensor of a weights file (MLX's, any float dtype; or NumPy's) as float32 NumPy."""
    return np.array(tensor.astype(mx.float32)) if isinstance(tensor, mx.array) else np.asarray(tensor, np.float32)


def weights_digest(*paths: str | os.PathLike) -> str:
    """xxh3-128 over the files' xxh3-128 digests, in order: changes when any byte of any file does."""
    combined = xxhash.xxh3_128()
    for path in paths:
        one = xxhash.xxh3_128()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                one.update(chunk)
        combined.update(one.digest())
    return combined.hexdigest()


def read_safetensors(path: str | os.PathLike) -> dict[str, mx.array]:
    """A safetensors file's tensors (read lazily by MLX), or bad_weights naming the file."""
    try:
        return mx.load(os.fspath(path), format="safetensors")
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelError("bad_weights", f"cannot read {os.fspath(path)!r} as safetensors ({err}): run the MLX line's "
                         "scripts/setup_models.py to write it") from err


class CodesModel:
    """chinese-hubert-base and one SoVITS model's ssl_proj + codebook: `codes(samples_16k)`."""

    def __init__(self, hubert: Hubert, sovits: dict, source: str, weights_digest: str, sovits_rate: int = SOVITS_RATE):
        missing = [name for name in SOVITS_TENSORS if name not in sovits]
        if missing:
            raise ModelError("bad_weights", f"{source} has no {', '.join(missing)}: is it a GPT-SoVITS SoVITS (s2G) model?")
        self.hubert = hubert
        self.sovits = {name: _float32(sovits[name]) for name in SOVITS_TENSORS}  # as torch lays them out
        proj, bias, codebook = (self.sovits[name] for name in SOVITS_TENSORS)
        width = hubert.width
        if proj.shape not in ((width, width, 1), (width, width, 2)) or bias.shape != (width,) \
                or codebook.ndim != 2 or not 1 <= codebook.shape[0] <= CODEBOOK_ROWS or codebook.shape[1] != width:
            raise ModelError("bad_weights", f"{source}: ssl_proj {proj.shape} + {bias.shape} and the codebook "
                             f"{codebook.shape} are not a [{width}, {width}, 1 or 2] convolution and at most "
                             f"{CODEBOOK_ROWS} rows of width {width}, HuBERT's: are both files of one GPT-SoVITS version?")
        if not all(np.isfinite(tensor).all() for tensor in (proj, bias, codebook)):
            raise ModelError("bad_weights", f"{source}: ssl_proj or the codebook holds NaN or infinite values")
        self.proj_kernel = proj.shape[2]  # 2 (stride 2) for 25 Hz models, 1 for 50 Hz ones
        self.proj_weight, self.proj_bias = hubert.ops.conv_weight(mx.array(proj)), hubert.ops.array(bias)
        self.codebook = codebook
        self.weights_digest = weights_digest
        self.sovits_rate = sovits_rate
        hubert.ops.evaluate(self.proj_weight, self.proj_bias)

    def with_sovits(self, fd: int, source: str) -> CodesModel:
        """This HuBERT with the ssl_proj and codebook of another SoVITS safetensors file (open on `fd`: a
        fine-tuned voice's, whose training may move ssl_proj), each tensor the file lacks kept from this model,
        as the MLX line loads a fine-tune saved as an overlay over its base SoVITS weights; this model itself
        when the file has none of them."""
        tensors, digest = read_tensors(fd, SOVITS_TENSORS, source, MAX_SOVITS_TENSOR)
        if not tensors:
            return self
        combined = xxhash.xxh3_128(f"{self.weights_digest}:{digest}".encode()).hexdigest()
        return CodesModel(self.hubert, {**self.sovits, **tensors}, source, combined, self.sovits_rate)

    def hidden_states(self, samples_16k: np.ndarray):
        """HuBERT's last_hidden_state [T, 768] of the prompt (the checked reference and its zeros), an array of
        the model's backend."""
        return self.hubert(prompt_samples(samples_16k, self.sovits_rate))

    def codes_of_hidden(self, hidden) -> np.ndarray:
        """extract_latent's codes[0, 0] from hidden states [T, 768]: int32 [T // 2] for 25 Hz models."""
        ssl = self.hubert.ops.conv1d(hidden, self.proj_weight, self.proj_kernel) + self.proj_bias
        return nearest_codes(np.array(ssl, dtype=np.float32), self.codebook)

    def codes(self, samples_16k: np.ndarray) -> np.ndarray:
        """The prompt's semantic codes, int32 [N] at 25 a second, from 3-10 s of 16 kHz mono samples (float,
        or int16/int32 PCM; to_16k_mono makes them from a file's samples at any rate)."""
        return self.codes_of_hidden(self.hidden_states(samples_16k))


def load_codes_model(hubert_path: str | os.PathLike, sovits_path: str | os.PathLike, *, backend: str = "auto",
                     attention_heads: int = ATTENTION_HEADS, sovits_rate: int = SOVITS_RATE) -> CodesModel:
    """The codes model from the MLX line's `hubert.safetensors` and a SoVITS safetensors file. `backend`:
    'auto' (NumPy where MLX computes on a Linux CPU, else MLX), 'mlx' or 'numpy' (backends.py)."""
    hubert_weights, sovits = read_safetensors(hubert_path), read_safetensors(sovits_path)  # both checked first
    hubert = Hubert(hubert_weights, os.fspath(hubert_path), attention_heads, backend)
    digest = weights_digest(hubert_path, sovits_path)
    return CodesModel(hubert, sovits, os.fspath(sovits_path), digest, sovits_rate)
