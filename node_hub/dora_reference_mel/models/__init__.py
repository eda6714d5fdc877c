"""Models on MLX that import nothing else of this package: GPT-SoVITS's prompt semantic codes
(chinese-hubert-base, then a SoVITS model's ssl_proj and codebook)."""

from .codes_model import (
    CodesModel,
    check_duration,
    length_at_16k,
    load_codes_model,
    prompt_samples,
    to_16k_mono,
    weights_digest,
)
from .hubert import Hubert, ModelError

__all__ = ["CodesModel", "Hubert", "ModelError", "check_duration", "length_at_16k", "load_codes_model", "prompt_samples",
           "to_16k_mono", "weights_digest"]
