"""The MLX recipe against the independent float64 oracle (tests/oracle.py), on real speech."""

import math

import numpy as np
import pytest
import soundfile

import oracle
from dora_reference_mel import ReferenceMelError, get_preset, reference_mel, reference_mel_batch
from helpers import HARD_SIGNALS, LINEAR_MAX_ABS, RATES, ROOT, hard_signal, speech

LOG_MEL_MAX_ABS, LOG_MEL_MEAN_ABS = 1e-2, 1e-4
FBANK_MAX_ABS, FBANK_MEAN_ABS = 2e-3, 1e-4  # natural log of power: values from -15.9 (the floor) to ~5


def expected_shape(n_samples: int, rate: int, preset: str) -> tuple[int, int, int]:
    """Written out per preset from upstream's framing, not from Preset.n_frames."""
    p = get_preset(preset)
    n = n_samples if rate == p.sample_rate else math.ceil(n_samples * p.sample_rate / rate)
    if preset == "sv":  # Kaldi snip_edges: whole 400-sample frames every 160, frames first
        return (1, 1 + (n - 400) // 160, 80)
    return (1, 704 if preset == "v2" else 100, n // p.hop_length)


def assert_matches(ours: np.ndarray, reference: np.ndarray, preset: str) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    diff = np.abs(ours.astype(np.float64) - reference)
    if preset == "v2":
        assert diff.max() <= LINEAR_MAX_ABS, diff.max()
    elif preset == "sv":
        assert diff.max() <= FBANK_MAX_ABS, diff.max()
        assert diff.mean() <= FBANK_MEAN_ABS, diff.mean()
    else:
        assert diff.max() <= LOG_MEL_MAX_ABS, diff.max()
        assert diff.mean() <= LOG_MEL_MEAN_ABS, diff.mean()


@pytest.mark.parametrize("resampler", ["torchaudio", "soxr_hq"])
@pytest.mark.parametrize("layout", ["mono", "stereo"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("preset", ["v2", "v3", "v4", "sv"])
def test_parity_matrix(preset, rate, layout, resampler):
    samples, sr = speech(layout, rate, dtype="int16")
    ours = reference_mel(samples, sr, preset=preset, resampler=resampler)
    reference = oracle.reference_feature(samples, sr, preset, resampler)
    assert ours.shape == expected_shape(samples.shape[0], sr, preset)
    diff = np.abs(ours - reference)
    print(f"{preset} {rate} {layout} {resampler}: max {diff.max():.2e} mean {diff.mean():.2e}")  # shown with -s
    assert_matches(ours, reference, preset)


BOUNDS = {"v2": (LINEAR_MAX_ABS, None), "v3": (LOG_MEL_MAX_ABS, LOG_MEL_MEAN_ABS),
          "v4": (LOG_MEL_MAX_ABS, LOG_MEL_MEAN_ABS), "sv": (FBANK_MAX_ABS, FBANK_MEAN_ABS)}
SV_ABOVE_NOISE = -10.0  # log power; the floor is ln(1.2e-7) = -15.9


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", HARD_SIGNALS)
@pytest.mark.parametrize("preset", ["v2", "v3", "v4", "sv"])
def test_hard_signals_meet_the_bounds_or_upstreams_own_float32_miss(preset, kind, rate):
    """DC offsets, a tone at a quarter of the rate and a sweep to Nyquist. Each preset meets its bound against
    the float64 recipe; where upstream's own float32 run misses it (torchaudio's float32 phase offsets at 22.05
    and 44.1 kHz, seen in bands near the log floor), the miss may be as large as upstream's own plus the bound.
    sv is compared on the bands at least 26 dB above its log floor (ln 1.2e-7 = -15.9): below that lies the
    float32 rounding noise of the two resampling steps (any float32 run's, upstream's too: a whole pure-DC
    clip once its DC is removed), which that low floor leaves visible."""
    clip = hard_signal(kind, rate)
    ours = reference_mel(clip, rate, preset=preset).astype(np.float64)
    exact = oracle.reference_feature(clip, rate, preset)
    rounded = oracle.reference_feature(clip, rate, preset, resample_dtype=np.float32)
    max_abs, mean_abs = BOUNDS[preset]
    kept = exact >= SV_ABOVE_NOISE if preset == "sv" else np.ones(exact.shape, bool)
    if not kept.any():
        return  # nothing above the noise (a pure DC's fbank): test_sv_removes_a_large_dc_offset checks it whole
    diff, upstream_miss = np.abs(ours - exact)[kept], np.abs(rounded - exact)[kept]
    print(f"{preset} {kind} {rate}: max {diff.max():.2e} mean {diff.mean():.2e}; "
          f"upstream float32 max {upstream_miss.max():.2e} mean {upstream_miss.mean():.2e}")
    assert diff.max() <= max(max_abs, upstream_miss.max() + max_abs)
    if mean_abs is not None:
        assert diff.mean() <= max(mean_abs, upstream_miss.mean() + mean_abs)


@pytest.mark.parametrize("rate", [32000, 44100])
def test_sv_removes_a_large_dc_offset_to_float32_accuracy(rate):
    """Kaldi's per-frame mean, summed sequentially in float32 (MLX's CPU mean), leaves up to width * eps *
    |mean| in every sample: on a pure 0.5 DC that was 3e-3 (32 kHz) and 4.4e-3 (44.1 kHz) off the recipe."""
    clip = hard_signal("dc", rate)
    diff = np.abs(reference_mel(clip, rate, preset="sv") - oracle.reference_feature(clip, rate, "sv"))
    assert diff.max() <= FBANK_MAX_ABS, diff.max()


def test_pairwise_row_mean_is_accurate_where_a_sequential_sum_is_not():
    import mlx.core as mx

    from dora_reference_mel.features.spectrogram import pairwise_row_mean

    rows = np.random.default_rng(5).uniform(0.5, 0.5001, (64, 400)).astype(np.float32)
    exact = rows.astype(np.float64).mean(axis=1, keepdims=True)
    ours = np.array(pairwise_row_mean(mx.array(rows)))
    assert np.abs(ours - exact).max() <= 2 * np.finfo(np.float32).eps * 0.5


def test_ten_seconds_at_48k_gives_500_frames():
    samples, sr = soundfile.read(str(ROOT / "models/voices/aria.wav"), dtype="float32")
    assert (sr, samples.shape) == (48000, (480000,))
    ours = reference_mel(samples, sr)
    assert ours.shape == (1, 704, 500)
    assert_matches(ours, oracle.reference_feature(samples, sr), "v2")
    assert ours.max() > 10  # real speech, not silence


def test_pcm_dtypes_agree():
    as_int16, sr = speech("stereo", 44100, dtype="int16")
    as_int32, _ = speech("stereo", 44100, dtype="int32")
    as_float64, _ = speech("stereo", 44100, dtype="float64")
    reference = reference_mel(as_int16, sr)
    for other in (as_int32, as_float64, as_float64.astype(np.float32)):
        np.testing.assert_allclose(reference_mel(other, sr), reference, atol=1e-4)


def test_peak_normalisation_only_above_one_and_only_v2():
    samples, sr = speech("mono", 32000)
    samples = samples / np.abs(samples).max() * 0.5  # peak 0.5: left alone
    quiet = reference_mel(samples, sr)
    # peak 1.5 -> divided by 1.5 -> peak 1 == 2 * quiet; peak 4 -> divided by min(2, 4) -> peak 2 == 4 * quiet
    np.testing.assert_allclose(reference_mel(samples * 3, sr), quiet * 2, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(reference_mel(samples * 8, sr), quiet * 4, rtol=1e-4, atol=1e-3)
    loud_v4 = reference_mel(samples * 4, sr, preset="v4")
    assert not np.allclose(loud_v4, reference_mel(samples, sr, preset="v4"), atol=1e-2)


def test_batch_equals_one_by_one():
    """Mixed rates, channels and int16/float clips; over 600 frames, so on a CPU it spans several graphs."""
    clips = [speech("mono", 48000)[0], speech("stereo", 22050)[0][: 22050 * 2], speech("mono", 16000)[0],
             speech("stereo", 44100, dtype="int16")[0]] * 2
    rates = [48000, 22050, 16000, 44100] * 2
    for preset in ("v2", "v4", "sv"):
        batch = reference_mel_batch(clips, rates, preset=preset)
        assert len(batch) == len(clips)
        for clip, rate, out in zip(clips, rates, batch, strict=True):
            single = reference_mel(clip, rate, preset=preset)
            assert out.shape == single.shape
            np.testing.assert_allclose(out, single, rtol=0, atol=1e-5)


def test_sv_peak_normalises_at_32k_like_v2():
    """sv takes v2's audio: peak-normalised at 32 kHz. A louder clip's log power rises by 2 ln(gain)
    until the peak rule caps it; v4 (no rule) keeps rising."""
    samples, sr = speech("mono", 44100)
    samples = samples / np.abs(samples).max() * 0.5
    quiet = reference_mel(samples, sr, preset="sv")
    above_floor = quiet > -10  # the log floor does not scale
    for gain, amplitude in ((1.5, 1.5), (8.0, 4.0)):  # peak 0.75: as is; peak 4: divided by min(2, 4)
        shift = (reference_mel(samples * gain, sr, preset="sv") - quiet)[above_floor]
        assert abs(float(np.median(shift)) - 2 * math.log(amplitude)) < 1e-3, (gain, np.median(shift))


@pytest.mark.parametrize("n, frames", [(400, 1), (559, 1), (560, 2), (16000, 98)])
def test_sv_frames_are_kaldis_snip_edges(n, frames):
    clip = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    ours = reference_mel(clip, 16000, preset="sv")
    assert ours.shape == (1, frames, 80)
    # 16 kHz in goes to 32 kHz and back, as upstream's v2 audio does
    np.testing.assert_allclose(ours, oracle.reference_feature(clip, 16000, "sv"), atol=2e-3)
    with pytest.raises(ReferenceMelError) as err:
        reference_mel(np.zeros(399, np.float32), 16000, preset="sv")
    assert err.value.code == "too_short" and "at least 400 samples" in err.value.message


@pytest.mark.parametrize("preset", ["v2", "v4", "sv"])
def test_float16_is_the_float32_result_rounded_once(preset):
    clips, rates = [speech("stereo", 44100)[0], speech("mono", 16000)[0]], [44100, 16000]
    wide = reference_mel_batch(clips, rates, preset=preset)
    half = reference_mel_batch(clips, rates, preset=preset, dtype="float16")
    for w, h in zip(wide, half, strict=True):
        assert h.dtype == np.float16 and h.shape == w.shape
        np.testing.assert_array_equal(h, w.astype(np.float16))
    with pytest.raises(ReferenceMelError, match="dtype='float64'"):
        reference_mel(clips[1], 16000, dtype="float64")


@pytest.mark.parametrize("n, code", [(0, "empty_audio"), (1, "too_short"), (1000, "too_short")])
def test_too_short_is_a_clear_error(n, code):
    with pytest.raises(ReferenceMelError) as err:
        reference_mel(np.zeros(n, np.float32), 48000)
    assert err.value.code == code


def test_an_integral_float_rate_is_the_integer_rate_and_a_fractional_one_is_named():
    samples, sr = speech("mono", 24000)
    assert np.array_equal(reference_mel(samples, 24000.0), reference_mel(samples, sr))
    assert np.array_equal(reference_mel_batch([samples], [np.float64(24000)])[0], reference_mel(samples, sr))
    for rate in (24000.5, "24000", None):
        with pytest.raises(ReferenceMelError) as err:
            reference_mel(samples, rate)
        assert err.value.code == "bad_sample_rate" and f"sample_rate={rate!r}" in err.value.message


def test_torchaudios_channels_first_layout_is_named_with_the_fix():
    samples, sr = speech("stereo", 48000)
    for layout in (samples.T, samples[:, :1].T):  # torchaudio.load: [channels, n]
        with pytest.raises(ReferenceMelError) as err:
            reference_mel(layout, sr)
        assert err.value.code == "bad_shape" and "[channels, n]" in err.value.message
        assert "transpose" in err.value.message and str(layout.shape) in err.value.message
    assert reference_mel(samples, sr).shape == reference_mel(samples.T.T, sr).shape  # [n, channels] still serves


def test_a_batch_error_names_the_clip():
    samples, sr = speech("mono", 48000)
    clips = [samples, samples, np.zeros(100, np.float32), samples]
    with pytest.raises(ReferenceMelError) as err:
        reference_mel_batch(clips, sr)
    assert err.value.code == "too_short" and err.value.message.startswith("clip 2 of 4: ")
    with pytest.raises(ReferenceMelError) as err:
        reference_mel_batch(clips[:2], [sr, 24000.5])
    assert err.value.code == "bad_sample_rate" and err.value.message.startswith("clip 1 of 2: ")


@pytest.mark.parametrize("preset", ["v3", "v4", "sv"])
def test_one_gather_filterbank_gives_the_grouped_sums(preset):
    """A GPU sums all mel bands in one gather padded to the widest band; the CPU in runs of similar
    width. The padding adds zero products only: the same bands to float32 rounding."""
    import mlx.core as mx

    from dora_reference_mel.features.spectrogram import apply_filterbank

    p = get_preset(preset)
    spectra = mx.array(np.random.default_rng(1).random((p.n_fft // 2 + 1, 300)).astype(np.float32))
    grouped = np.array(apply_filterbank(spectra, p, groups=4))
    one = np.array(apply_filterbank(spectra, p, groups=1))
    assert grouped.shape == one.shape == (p.n_mels, 300)
    np.testing.assert_allclose(one, grouped, rtol=2e-6, atol=0)
