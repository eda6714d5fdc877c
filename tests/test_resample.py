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

    from dora_reference_mel.resample import _phases_gathered, _phases_strided
    from dora_reference_mel.tables import device_sinc_taps, sinc_resample_taps

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
    code = ("import sys, numpy as np; from dora_reference_mel import resample, reference_mel; "
            "x = np.load(sys.argv[1]); print(resample.compiler_works()); np.save(sys.argv[2], reference_mel(x, 48000))")
    np.save(tmp_path / "in.npy", samples)
    env = {"PATH": os.path.dirname(sys.executable), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}  # where the package is not installed
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"

    from dora_reference_mel import resample

    assert resample.compiler_works()  # here, with g++: the compiled kernel
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference_mel(samples, rate))
