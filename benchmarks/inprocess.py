"""In-process probes behind BENCHMARKS.md's explanations (no dora): MLX CPU primitives against
numpy, the service's paths (cache, precomputed, computed) and its memory with a full cache.

    python benchmarks/inprocess.py
"""

import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import mlx.core as mx
import numpy as np
import pyarrow as pa
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from timing import median_ms  # noqa: E402  (benchmarks/ is not a package)


def primitives():
    import torch
    import torch_recipe

    mx.set_default_device(mx.cpu)
    a, b = mx.random.normal((1000, 459)), mx.random.normal((459, 320))
    x = mx.random.normal((500_000,))
    index = mx.arange(5_000_000) % 500_000
    mx.eval(a, b, x, index)
    an, bn = np.array(a), np.array(b)
    print(f"matmul [1000,459]@[459,320]: MLX {median_ms(lambda: a @ b):.2f} ms, numpy {median_ms(lambda: an @ bn):.2f} ms")
    print(f"gather of 5M elements: MLX {median_ms(lambda: x[index]):.2f} ms; elementwise x*2+1 on 5M: "
          f"{median_ms(lambda: x * 2.0 + 1.0):.2f} ms")
    # the resampler as a convolution, as torch runs it: 48 kHz -> 32 kHz is 2 output phases of 57 taps
    # at stride 3 over 10 s (the shipped form sums strided slices instead)
    signal_in, taps = mx.random.normal((1, 480_040, 1)), mx.random.normal((2, 57, 1))
    mx.eval(signal_in, taps)
    print(f"conv1d, 10 s at 48 kHz, 2 x 57 taps, stride 3: MLX "
          f"{median_ms(lambda: mx.conv1d(signal_in, taps, stride=3)):.2f} ms")
    for rows in (500, 4000):
        frames = mx.random.normal((rows, 2048))
        mx.eval(frames)
        print(f"rfft of {rows} frames of 2048: MLX {median_ms(lambda f=frames: mx.fft.rfft(f, axis=-1)):.2f} ms")
    mel_filterbank_forms()
    samples, rate = soundfile.read(str(ROOT / "models/voices/aria.wav"), dtype="float32")
    torch.set_num_threads(1)
    from dora_reference_mel import reference_mel

    mlx_ms, torch_ms = [], []
    for _ in range(25):  # interleaved
        mlx_ms.append(median_ms(lambda: reference_mel(samples, rate), repeats=1))
        torch_ms.append(median_ms(lambda: torch_recipe.reference_feature(torch.from_numpy(samples), rate).numpy(),
                                  repeats=1))
    print(f"v2 10 s, torch on 1 thread: MLX {statistics.median(mlx_ms):.2f} ms, torch {statistics.median(torch_ms):.2f} ms")
    blob = np.zeros(704 * 500, np.float32).tobytes()
    print(f"sha256 of 1.9 MB: {median_ms(lambda: hashlib.sha256(samples.data).digest()):.2f} ms; "
          f"crc32 of 1.4 MB: {median_ms(lambda: zlib.crc32(blob)):.2f} ms")


def mel_filterbank_forms():
    """v4's filterbank over 10 s of spectra: as shipped (runs of bands, each padded to its own width)
    against all bands padded to the widest one."""
    from dora_reference_mel import get_preset
    from dora_reference_mel.features.spectrogram import apply_filterbank
    from dora_reference_mel.features.tables import nonzero_bands, slaney_mel_filterbank

    preset = get_preset("v4")
    fmax = preset.fmax if preset.fmax is not None else preset.sample_rate / 2
    bank = slaney_mel_filterbank(preset.sample_rate, preset.n_fft, preset.n_mels, preset.fmin, fmax)
    starts, weights = nonzero_bands(bank, bank != 0)
    index = (mx.array(starts)[:, None] + mx.arange(weights.shape[1], dtype=mx.int32)[None, :]).reshape(-1)
    spectra = mx.random.uniform(shape=(bank.shape[1], 1000))
    mx.eval(spectra)

    def one_width():
        rows = mx.take(spectra, index, axis=0).reshape(preset.n_mels, weights.shape[1], -1)
        return mx.sum(rows * mx.array(weights)[:, :, None], axis=1)

    same = bool(mx.array_equal(one_width(), apply_filterbank(spectra, preset)).item())
    print(f"v4 filterbank, 1000 frames: runs of bands {median_ms(lambda: apply_filterbank(spectra, preset)):.2f} ms, "
          f"all padded to the widest {median_ms(one_width):.2f} ms; identical: {same}")


def service_paths(repeats: int = 300) -> dict:
    """The service's paths on 10 s at 48 kHz, and its memory; returns the figures (ms, MB)."""
    from dora_reference_mel.cli import main as cli
    from dora_reference_mel.config import Config
    from dora_reference_mel.features import spectrogram
    from dora_reference_mel.node.service import ReferenceMelService
    from dora_reference_mel.store.files import SETTLED_NS

    samples, rate = soundfile.read(str(ROOT / "models/voices/aria.wav"), dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        voices = Path(tmp) / "voices.json"
        voices.write_text((ROOT / "models/voices.json").read_text())
        env = {"PRIMESPEECH_MODEL_DIR": str(ROOT / "models"), "VOICES_CONFIG": str(voices),
               "CODES_DIR": f"{tmp}/codes", "MEL_WRITE_BACK": "0"}
        os.environ.update(env)  # the CLI reads the same variables
        assert cli(["precompute"]) == 0
        time.sleep(SETTLED_NS / 1e9 + 0.1)  # files as a user's library has them: older than the racy-stamp window
        cached = ReferenceMelService(Config.from_env({**env, "MEL_CACHE_MB": "64"}))
        spectrogram.warm_up(cached.config.presets)
        idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        nocache = ReferenceMelService(Config.from_env({**env, "MEL_CACHE_MB": "0"}))
        arrow = pa.array(samples)
        computed = []
        for i in range(60):  # each clip new: timed once, no warm-up call (that would cache it)
            clip = pa.array(np.roll(samples, 1000 + i))
            start = time.perf_counter()
            assert cached.handle("reference_audio", clip, {"sample_rate": rate})[0].metadata["source"] == "computed"
            computed.append((time.perf_counter() - start) * 1e3)
        hit = median_ms(lambda: cached.handle("reference_audio", arrow, {"sample_rate": rate}), repeats=repeats)
        stored = median_ms(lambda: nocache.handle("reference_audio", arrow, {"sample_rate": rate, "voice": "aria"}),
                           repeats=repeats)
        assert nocache.handle("reference_audio", arrow, {"sample_rate": rate, "voice": "aria"})[0].metadata[
            "source"] == "precomputed"
        switch = median_ms(lambda: cached.handle("voice", pa.array(["aria"]), {}), repeats=repeats)  # 1st: stored
        assert cached.handle("voice", pa.array(["aria"]), {})[0].metadata["source"] == "cache"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"service, 10 s at 48 kHz: cache hit {hit:.2f} ms, precomputed {stored:.2f} ms, computed "
              f"{statistics.median(computed):.2f} ms; `voice` event from the cache {switch:.2f} ms")
        print(f"memory: peak RSS after warm-up {idle:.0f} MB; after 60 distinct computed clips with "
              f"MEL_CACHE_MB=64 ({cached.resolver.cache.nbytes / 2**20:.1f} MB cached) {peak:.0f} MB")
    return {"cache_hit_ms": hit, "precomputed_hit_ms": stored, "voice_hit_ms": switch,
            "computed_ms": statistics.median(computed), "idle_rss_mb": idle, "full_cache_rss_mb": peak}


if __name__ == "__main__":
    service_paths()  # first: its memory figures must not include the primitives' arrays
    primitives()
