"""dora-reference-mel: GPT-SoVITS reference spectrograms for dora dataflows, computed with MLX.

`reference_mel` and `reference_mel_batch` load MLX on first use, so `dora_reference_mel.contract`
(the consumer helper) imports without MLX.
"""

from .errors import ReferenceMelError
from .features.recipe import PRESET_NAMES, Preset, get_preset

__all__ = ["PRESET_NAMES", "Preset", "ReferenceMelError", "get_preset", "reference_mel", "reference_mel_batch"]


def __getattr__(name):
    if name in ("reference_mel", "reference_mel_batch"):
        from .features import spectrogram

        return getattr(spectrogram, name)
    raise AttributeError(name)
