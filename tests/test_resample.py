"""The resampler (resample.py): every strategy gives the same sums, compiled or not, and impossible
rates are refused before anything is allocated."""

import mlx.core as mx
import numpy as np
import pytest

from dora_reference_mel import ReferenceMelError, reference_mel
from helpers import speech


@pytest.mark.parametrize("rate", [44100, 22050, 48000])
def test_both_resampler_strategies_agree(rate):
    """A GPU uses the gathered form for 44.1k and 22.05k; check it here against the strided one."""
    import mlx.core as mx

    from dora_reference_mel.features.resample import _phases_gathered, _phases_strided
    from dora_reference_mel.features.tables import device_sinc_taps, sinc_resample_taps

    orig, new, width, starts, weights = sinc_resample_taps(rate, 32000)
    padded = mx.pad(mx.array(speech("mono", rate)[0]), [(width, width + orig)])
    n_blocks = (padded.shape[0] - 2 * width - orig) // orig
    device_starts, device_weights = device_sinc_taps(rate, 32000)
    strided = np.array(_phases_strided(padded, orig, n_blocks, starts, device_weights))
    gathered = np.array(_phases_gathered(padded, orig, n_blocks, device_starts, mx.stack(device_weights)))
    np.testing.assert_allclose(strided, gathered, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate", [161193, 47999, 384000 - 1])
def test_rates_without_a_small_ratio_are_refused_not_allocated(rate):
    """torchaudio's kernel for 161193 -> 32000 Hz would be 32000 x 161255 taps (38 GiB in float64)."""
    with pytest.raises(ReferenceMelError) as err:
        reference_mel(np.zeros(rate, np.float32), rate)
    assert err.value.code == "bad_sample_rate" and f"sample_rate={rate}" in err.value.message


def test_every_common_rate_is_accepted():
    for rate in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000, 384000):
        for preset in ("v2", "v3"):
            assert reference_mel(np.zeros(rate // 2, np.float32), rate, preset=preset).shape[1] > 0


def test_without_a_compiler_the_cpu_resamples_uncompiled_with_the_same_output(tmp_path):
    """MLX builds CPU kernels with g++ from PATH and, without one, silently runs compiled functions op
    by op; then the strided form serves, and the output is the same as with the compiled kernel."""
    import os
    import subprocess
    import sys

    if mx.default_device() != mx.cpu:
        pytest.skip("the compiled resampler is the CPU's; a GPU resamples with the strided form")
    samples, rate = speech("mono", 48000)
    code = ("import sys, numpy as np; from dora_reference_mel import reference_mel; "
            "from dora_reference_mel.features import backend, resample; backend.compile_pairs([(48000, 32000)]); "
            "x = np.load(sys.argv[1]); print(resample.compiler_works()); np.save(sys.argv[2], reference_mel(x, 48000))")
    np.save(tmp_path / "in.npy", samples)
    env = {"PATH": os.path.dirname(sys.executable), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}  # where the package is not installed
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"

    from dora_reference_mel.features import resample

    assert resample.compiler_works()  # here, with g++: the compiled kernel
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference_mel(samples, rate))


def test_the_library_api_and_the_tool_build_no_kernel_unasked(tmp_path, library):
    """Only the node's warm-up (or a caller of backend.compile_pairs) compiles: reference_mel and
    `reference-mel precompute` at a rate pair that compiles here resample through the strided form."""
    import subprocess
    import sys

    code = ("import numpy as np; from dora_reference_mel import reference_mel; "
            "from dora_reference_mel.cli import main; from dora_reference_mel.features import backend, resample; "
            "reference_mel(np.zeros(48000, np.float32), 48000, preset='v4'); "
            f"main(['precompute', '--voices', {str(library['voices'])!r}, '--codes-dir', {str(library['codes_dir'])!r}]); "
            "print(backend.current().compiled_pairs, resample._piece_kernels.cache_info().currsize)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "frozenset() 0"


def test_piece_sizes_are_few_and_waste_less_than_a_tail():
    """Every clip length resamples through the piece sizes warm_pieces traces at start."""
    from dora_reference_mel.features.resample import RESAMPLE_BLOCKS, TAIL_BLOCKS, piece_sizes

    traced = set(range(TAIL_BLOCKS, RESAMPLE_BLOCKS + 1, TAIL_BLOCKS))
    for n_blocks in [1, TAIL_BLOCKS, TAIL_BLOCKS + 1, RESAMPLE_BLOCKS, RESAMPLE_BLOCKS + 1, *range(7, 400_000, 4999)]:
        sizes = piece_sizes(n_blocks)
        assert set(sizes) <= traced and 0 <= sum(sizes) - n_blocks < TAIL_BLOCKS, (n_blocks, sizes)


@pytest.mark.parametrize("pair", [(48000, 32000), (48000, 24000), (24000, 32000), (16000, 32000), (32000, 16000)])
def test_compiled_pieces_give_the_strided_sums(pair):
    """Lengths that end in each tail size, and whole pieces: the compiled kernels' output is the strided
    form's, bit for bit."""
    from dora_reference_mel.features import resample
    from dora_reference_mel.features.tables import device_sinc_taps, sinc_resample_taps

    if not resample.uses_compiled_kernels(*pair):
        pytest.skip("the compiled resampler runs on a CPU with a compiler")
    orig_freq, new_freq = pair
    orig, new, width, starts, _ = sinc_resample_taps(orig_freq, new_freq)
    signal = speech("mono", orig_freq)[0]
    for n_blocks in (3, 8000, 20000, 32768, 40000, 70000):
        x = mx.array(np.resize(signal, n_blocks * orig))
        padded = mx.pad(x, [(width, width + orig)])
        strided = np.array(resample._phases_strided(padded, orig, n_blocks, starts, device_sinc_taps(*pair)[1]))
        compiled = np.array(resample._phases_compiled(x, orig_freq, new_freq, n_blocks))
        np.testing.assert_array_equal(compiled[:n_blocks], strided, err_msg=f"{pair}, {n_blocks} blocks")


def test_the_readme_warm_up_builds_the_common_rates_and_keeps_the_output():
    """What the README offers a long-running caller of the API: the node's warm-up, after which the common
    recording rates resample through compiled kernels, with the same spectrogram bit for bit."""
    from dora_reference_mel import get_preset
    from dora_reference_mel.features import backend, resample, spectrogram

    if not resample.uses_compiled_kernels(48000, 32000):
        pytest.skip("the compiled resampler runs on a CPU with a compiler")
    samples = speech("mono", 48000)[0][: 3 * 48000]
    before = reference_mel(samples, 48000)
    previous = backend.current().compiled_pairs
    try:
        spectrogram.warm_up([get_preset("v2")])
        assert (48000, 32000) in backend.current().compiled_pairs
        np.testing.assert_array_equal(reference_mel(samples, 48000), before)
    finally:
        backend.compile_pairs(previous)
