"""The presets (recipe.py): every parameter in the fingerprint, earlier fingerprints kept, bad names refused."""

import numpy as np
import pytest

from dora_reference_mel import ReferenceMelError, get_preset, reference_mel
from helpers import speech


def test_stored_files_of_earlier_versions_keep_their_fingerprint():
    """Adding a preset must not invalidate every store: v2/v3/v4 fingerprints as earlier versions wrote them."""
    assert [get_preset(name).fingerprint for name in ("v2", "v3", "v4")] == \
        ["f396867c55e7e598", "3cf3a7293e0fb3c5", "725d2713479a4647"]
    assert len({get_preset(name).fingerprint for name in ("v2", "v3", "v4", "sv")}) == 4


def test_v1_bins_and_preset_errors():
    samples, sr = speech("mono", 32000)
    full = reference_mel(samples, sr, preset=get_preset("v2", v2_bins=1025))
    assert full.shape[1] == 1025
    np.testing.assert_array_equal(full[:, :704], reference_mel(samples, sr))
    with pytest.raises(ReferenceMelError, match="preset='v9'"):
        reference_mel(samples, sr, preset="v9")
    with pytest.raises(ReferenceMelError, match="MEL_BINS=2000"):
        get_preset("v2", v2_bins=2000)


def test_soxr_hq_resamples_only_v2s_refer():
    """GPT-SoVITS's librosa.load (soxr HQ) era resampled v2's refer only: its v3/v4 prompt mel went through
    torchaudio, and v2Pro's releases (sv) load with torchaudio throughout. So soxr_hq leaves those presets
    as the default makes them, fingerprints included (stored files stay shared)."""
    samples, sr = speech("mono", 44100)
    assert not np.array_equal(reference_mel(samples, sr, resampler="soxr_hq"), reference_mel(samples, sr))
    for preset in ("v3", "v4", "sv"):
        assert get_preset(preset, resampler="soxr_hq") == get_preset(preset)
        np.testing.assert_array_equal(reference_mel(samples, sr, preset=preset, resampler="soxr_hq"),
                                      reference_mel(samples, sr, preset=preset))
