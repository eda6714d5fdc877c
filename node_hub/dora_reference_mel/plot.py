"""PNG pictures of spectrograms (matplotlib, the `plot` extra): time on x, frequency on y."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .limits import BINS_FRAMES, FRAMES_BINS

# Families that draw Chinese, Japanese and Korean names, tried first (Linux, macOS, Windows spellings).
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "Droid Sans Fallback", "PingFang SC", "Hiragino Sans GB", "Heiti SC",
                "STHeiti", "Microsoft YaHei", "SimHei", "Arial Unicode MS")


def drawable_title(title: str) -> tuple[str, list[str], str | None]:
    """The title, the font families to draw it with, and a note when no installed font has some of its
    characters (those are then written as <U+XXXX>, never drawn as empty boxes)."""
    from matplotlib import font_manager, ft2font, rcParams

    default = font_manager.findfont(rcParams["font.sans-serif"][0] if rcParams["font.family"] == ["sans-serif"]
                                    else rcParams["font.family"][0])
    needed = {c for c in title if ord(c) > 127}
    if not needed:
        return title, [font_manager.FontProperties(fname=default).get_name()], None

    def covers(path: str) -> bool:
        try:
            return needed <= {chr(code) for code in ft2font.FT2Font(path).get_charmap()}
        except (OSError, RuntimeError, ValueError):
            return False

    families = [font_manager.FontProperties(fname=default).get_name()]
    if covers(default):
        return title, families, None
    # matplotlib's own "Last Resort" font maps every character to a box showing its code: not a drawing.
    fonts = sorted({(f.name, f.fname) for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")},
                   key=lambda font: (font[0] not in CJK_FAMILIES, font[0]))
    for name, path in fonts:
        if covers(path):
            return title, families + [name], None
    shown = "".join(c if ord(c) <= 127 else f"<U+{ord(c):04X}>" for c in title)
    return shown, families, ("no installed font draws some characters of the title, written as <U+XXXX>; install a "
                             "CJK font (Debian/Ubuntu: apt-get install fonts-noto-cjk) to see them")


def save_spectrogram_png(spec: np.ndarray, path: Path, *, title: str, preset: str, sample_rate: int,
                         hop_length: int, n_fft: int, layout: str = BINS_FRAMES) -> Path:
    """Write spec [n_bins, n_frames] (or [1, n_bins, n_frames]; frames first when layout is frames_bins)
    as a labelled PNG; returns the path. A title character no installed font draws is logged and
    written as <U+XXXX> (see drawable_title)."""
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
    title, families, note = drawable_title(title)
    if note:
        logging.getLogger(__name__).warning("%s: %s", path, note)
    ax.set_title(title, fontsize=9, fontfamily=families)
    fig.colorbar(shown, ax=ax, label=label)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
