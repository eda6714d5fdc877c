"""PNG pictures of spectrograms (matplotlib, the `plot` extra): time on x, frequency on y."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import BINS_FRAMES, FRAMES_BINS


def save_spectrogram_png(spec: np.ndarray, path: Path, *, title: str, preset: str, sample_rate: int,
                         hop_length: int, n_fft: int, layout: str = BINS_FRAMES) -> Path:
    """Write spec [n_bins, n_frames] (or [1, n_bins, n_frames]; frames first when layout is frames_bins)
    as a labelled PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = np.asarray(spec, dtype=np.float32).reshape(spec.shape[-2:])
    if layout == FRAMES_BINS:
        spec = spec.T
    seconds = spec.shape[1] * hop_length / sample_rate
    if preset == "v2":  # linear magnitude: show it in dB, rows are FFT bins
        image, label = 20 * np.log10(np.maximum(spec, 1e-4)), "magnitude (dB)"
        top, ylabel = spec.shape[0] * sample_rate / n_fft, "frequency (Hz)"
    elif preset == "sv":  # Kaldi fbank: natural log of mel-band power
        image, label, top, ylabel = spec, "log mel power (Kaldi fbank)", spec.shape[0], "mel band"
    else:  # normalised log-mel prompt
        image, label, top, ylabel = spec, "norm_spec(log mel)", spec.shape[0], "mel band"
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    shown = ax.imshow(image, origin="lower", aspect="auto", extent=(0, seconds, 0, top), cmap="magma")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax, label=label)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
