"""In-process probes behind BENCHMARKS.md's explanations (no dora): MLX CPU primitives against
numpy, the service's paths (cache, precomputed, computed) and its memory with a full cache.

    python benchmarks/inprocess.py
"""

import argparse
import hashlib
import os
import resource
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import mlx.core as mx
import numpy as np
import pyarrow as pa
import soundfile
from lib.timing import ROOT, add_out_argument, median_cold_ms, median_ms, metric, out_path, write_result


def primitives() -> dict:
    """MLX's CPU primitives against numpy and torch's forms; returns the figures (ms)."""
    import torch
    from lib import torch_recipe

    mx.set_default_device(mx.cpu)
    a, b = mx.random.normal((1000, 459)), mx.random.normal((459, 320))
    x = mx.random.normal((500_000,))
    index = mx.arange(5_000_000) % 500_000
    mx.eval(a, b, x, index)
    an, bn = np.array(a), np.array(b)
    found = {"matmul_mlx_ms": median_ms(lambda: a @ b), "matmul_numpy_ms": median_ms(lambda: an @ bn),
             "gather_5m_ms": median_ms(lambda: x[index]), "elementwise_5m_ms": median_ms(lambda: x * 2.0 + 1.0)}
    print(f"matmul [1000,459]@[459,320]: MLX {found['matmul_mlx_ms']:.2f} ms, numpy {found['matmul_numpy_ms']:.2f} ms")
    print(f"gather of 5M elements: MLX {found['gather_5m_ms']:.2f} ms; elementwise x*2+1 on 5M: "
          f"{found['elementwise_5m_ms']:.2f} ms")
    # the resampler as a convolution, as torch runs it: 48 kHz -> 32 kHz is 2 output phases of 57 taps
    # at stride 3 over 10 s (the shipped form sums strided slices instead)
    signal_in, taps = mx.random.normal((1, 480_040, 1)), mx.random.normal((2, 57, 1))
    mx.eval(signal_in, taps)
    found["conv1d_resample_ms"] = median_ms(lambda: mx.conv1d(signal_in, taps, stride=3))
    print(f"conv1d, 10 s at 48 kHz, 2 x 57 taps, stride 3: MLX {found['conv1d_resample_ms']:.2f} ms")
    for rows in (500, 4000):
        frames = mx.random.normal((rows, 2048))
        mx.eval(frames)
        found[f"rfft_{rows}_frames_ms"] = median_ms(lambda f=frames: mx.fft.rfft(f, axis=-1))
        print(f"rfft of {rows} frames of 2048: MLX {found[f'rfft_{rows}_frames_ms']:.2f} ms")
    found |= mel_filterbank_forms()
    samples, rate = soundfile.read(str(ROOT / "models/voices/aria.wav"), dtype="float32")
    torch.set_num_threads(1)
    from dora_reference_mel import reference_mel

    mlx_ms, torch_ms = [], []
    for _ in range(25):  # interleaved
        mlx_ms.append(median_ms(lambda: reference_mel(samples, rate), repeats=1))
        torch_ms.append(median_ms(lambda: torch_recipe.reference_feature(torch.from_numpy(samples), rate).numpy(),
                                  repeats=1))
    found |= {"v2_10s_mlx_ms": statistics.median(mlx_ms), "v2_10s_torch_1_thread_ms": statistics.median(torch_ms)}
    print(f"v2 10 s, torch on 1 thread: MLX {found['v2_10s_mlx_ms']:.2f} ms, "
          f"torch {found['v2_10s_torch_1_thread_ms']:.2f} ms")
    blob = np.zeros(704 * 500, np.float32).tobytes()
    found |= {"sha256_1_9mb_ms": median_ms(lambda: hashlib.sha256(samples.data).digest()),
              "crc32_1_4mb_ms": median_ms(lambda: zlib.crc32(blob))}
    print(f"sha256 of 1.9 MB: {found['sha256_1_9mb_ms']:.2f} ms; crc32 of 1.4 MB: {found['crc32_1_4mb_ms']:.2f} ms")
    return found


def mel_filterbank_forms() -> dict:
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
    runs, widest = median_ms(lambda: apply_filterbank(spectra, preset)), median_ms(one_width)
    print(f"v4 filterbank, 1000 frames: runs of bands {runs:.2f} ms, all padded to the widest {widest:.2f} ms; "
          f"identical: {same}")
    return {"filterbank_runs_of_bands_ms": runs, "filterbank_padded_to_widest_ms": widest}


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
        cold = {name: median_cold_ms(fn, max(repeats // 5, 10)) for name, fn in (
            ("cache_hit_cold_ms", lambda: cached.handle("reference_audio", arrow, {"sample_rate": rate})),
            ("precomputed_hit_cold_ms",
             lambda: nocache.handle("reference_audio", arrow, {"sample_rate": rate, "voice": "aria"})),
            ("voice_hit_cold_ms", lambda: cached.handle("voice", pa.array(["aria"]), {})))}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"service, 10 s at 48 kHz: cache hit {hit:.2f} ms, precomputed {stored:.2f} ms, computed "
              f"{statistics.median(computed):.2f} ms; `voice` event from the cache {switch:.2f} ms")
        print(f"the same with the CPU's caches evicted before each call: cache hit {cold['cache_hit_cold_ms']:.2f} ms, "
              f"precomputed {cold['precomputed_hit_cold_ms']:.2f} ms, `voice` {cold['voice_hit_cold_ms']:.2f} ms")
        print(f"memory: peak RSS after warm-up {idle:.0f} MB; after 60 distinct computed clips with "
              f"MEL_CACHE_MB=64 ({cached.resolver.cache.nbytes / 2**20:.1f} MB cached) {peak:.0f} MB")
    return {"cache_hit_ms": hit, "precomputed_hit_ms": stored, "voice_hit_ms": switch, **cold,
            "computed_ms": statistics.median(computed), "idle_rss_mb": idle, "full_cache_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="of each service path")
    parser.add_argument("--service-only", action="store_true", help="leave out the primitives (torch)")
    add_out_argument(parser, "inprocess")
    args = parser.parse_args()
    found = service_paths(args.repeats)  # first: its memory figures must not include the primitives' arrays
    if not args.service_only:
        found |= primitives()
    write_result(out_path(args.out, "inprocess"), "inprocess",
                 {k: metric(v, "MB" if k.endswith("_mb") else "ms") for k, v in found.items()})


if __name__ == "__main__":
    main()
