"""GPT-SoVITS's prompt codes in torch, for the tests: transformers' HubertModel and the upstream quantizer
classes (module/quantize.py and module/core_vq.py of the gpt-sovits-cpufast wheel, the same files as
GPT-SoVITS main's), with seeded random weights written in the MLX line's safetensors layout.

upstream_codes follows TTS._set_prompt_semantic after librosa.load: zeros appended, last_hidden_state
transposed, then SynthesizerTrn.extract_latent (ssl_proj, quantizer). The SoVITS model itself is not built
(module/models.py imports the text front end and f5_tts); its two layers that extract_latent runs are, with
the classes and shapes models.py gives them for 25 Hz models: Conv1d(768, 768, 2, stride=2) and
ResidualVectorQuantizer(dimension=768, n_q=1, bins=1024).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "gpt-sovits-cpufast==0.1.0"
# What the tests take from the wheel: the quantizer's modules and chinese-hubert-base's config.json.
WHEEL_FILES = ("module/__init__.py", "module/quantize.py", "module/core_vq.py", "module/distrib.py",
               "module/ddp_utils.py", "pretrained_models/chinese-hubert-base/config.json")


def unpack_upstream(folder: Path, files: tuple[str, ...] = WHEEL_FILES) -> Path | None:
    """Download the wheel (no dependencies, never installed) and unpack `files` (of its GPT_SoVITS folder)
    into folder; the GPT_SoVITS folder to put on sys.path, or None when the package index cannot be reached."""
    run = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                          WHEEL, "-d", str(folder)], capture_output=True, text=True)
    wheels = sorted(folder.glob("gpt_sovits_cpufast-*.whl"))
    if run.returncode != 0 or not wheels:
        return None
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in files:
            wheel.extract("GPT_SoVITS/" + name, folder)
    return folder / "GPT_SoVITS"


def small_config(attention_heads: int = 4):
    """HubertConfig of the same architecture, narrower and shallower: for fast tests. With 12 heads (the
    full model's, which the node assumes), 16 channels a head as with 4."""
    from transformers import HubertConfig

    return HubertConfig(hidden_size=16 * attention_heads, num_hidden_layers=2, num_attention_heads=attention_heads,
                        intermediate_size=128,
                        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


class UpstreamCodes:
    """Seeded random HuBERT, ssl_proj and quantizer in torch; `save` writes them as the MLX line does."""

    def __init__(self, config, upstream_dir: Path, seed: int = 0, codebook_scale: float = 0.05):
        import torch
        from transformers import HubertModel

        if str(upstream_dir) not in sys.path:
            sys.path.insert(0, str(upstream_dir))
        from module.quantize import ResidualVectorQuantizer

        torch.manual_seed(seed)
        self.hubert = HubertModel(config).eval()
        dim = config.hidden_size
        self.ssl_proj = torch.nn.Conv1d(dim, dim, 2, stride=2).eval()
        self.quantizer = ResidualVectorQuantizer(dimension=dim, n_q=1, bins=1024).eval()
        codebook = self.quantizer.vq.layers[0]._codebook
        # A trained codebook is k-means of real frames; unit-normal rows of width 768 have norms so unlike
        # that the |e|^2 term alone would pick a handful of codes. Rows scaled to the frames' size keep the
        # codes diverse (checked by the tests).
        codebook.embed.copy_(torch.randn(1024, dim) * codebook_scale)
        codebook.inited.fill_(1.0)  # a loaded checkpoint's state: no k-means on the first batch
        self.device = "cpu"

    def to(self, device: str) -> UpstreamCodes:
        """The three modules on a torch device (cuda: float32 products, TF32 off as torch's matmul default)."""
        import torch

        torch.backends.cudnn.allow_tf32 = False  # torch's default leaves TF32 on for convolutions
        for module in (self.hubert, self.ssl_proj, self.quantizer):
            module.to(device)
        self.device = device
        return self

    def hidden_and_codes(self, wav16k: np.ndarray, sovits_rate: int = 32000) -> tuple[np.ndarray, np.ndarray]:
        """(last_hidden_state [T, dim], codes[0, 0] [N]) as TTS._set_prompt_semantic computes them."""
        import torch

        with torch.no_grad():
            wav = torch.cat([torch.from_numpy(wav16k), torch.zeros(int(sovits_rate * 0.3), dtype=torch.float32)])
            hidden = self.hubert(wav.unsqueeze(0).to(self.device))["last_hidden_state"].transpose(1, 2)
            _, codes, _, _ = self.quantizer(self.ssl_proj(hidden))  # extract_latent
            return hidden[0].T.cpu().numpy(), codes.transpose(0, 1)[0, 0].cpu().numpy()

    def save(self, folder: Path, layout: str = "weight_g", dtype=np.float32) -> tuple[Path, Path]:
        """hubert.safetensors (the HubertModel state dict, positional weight norm as `layout`: weight_g,
        parametrizations or folded) and sovits.safetensors (ssl_proj.*, the quantizer's buffers)."""
        from safetensors.numpy import save_file

        state = {k: v.numpy() for k, v in self.hubert.state_dict().items() if k != "masked_spec_embed"}
        pos = "encoder.pos_conv_embed.conv."
        g, v = state.pop(pos + "parametrizations.weight.original0"), state.pop(pos + "parametrizations.weight.original1")
        if layout == "weight_g":
            state[pos + "weight_g"], state[pos + "weight_v"] = g, v
        elif layout == "parametrizations":
            state[pos + "parametrizations.weight.original0"], state[pos + "parametrizations.weight.original1"] = g, v
        else:
            state[pos + "weight"] = self.hubert.encoder.pos_conv_embed.conv.weight.detach().numpy()
        sovits = {"ssl_proj." + k: v.numpy() for k, v in self.ssl_proj.state_dict().items()}
        sovits.update({"quantizer." + k: v.numpy() for k, v in self.quantizer.state_dict().items()})
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / "hubert.safetensors", folder / "sovits.safetensors"
        for path, tensors in zip(paths, (state, sovits), strict=True):
            save_file({k: np.ascontiguousarray(t, dtype=dtype if t.dtype == np.float32 else t.dtype)
                       for k, t in tensors.items()}, str(path))
        return paths
