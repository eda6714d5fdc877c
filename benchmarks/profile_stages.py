"""Where the time goes: each stage of reference_mel timed alone (mx.eval after each), medians.

    python benchmarks/profile_stages.py [--device cpu|gpu] [--preset v2] [--seconds 10]
"""

import argparse
import statistics
import time
from pathlib import Path

import mlx.core as mx
import soundfile

from dora_reference_mel import get_preset
from dora_reference_mel.features import backend, cuda_kernels, pcm, spectrogram

VOICE = Path(__file__).resolve().parent.parent / "models" / "voices" / "aria.wav"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--preset", default="v2")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    backend.select(args.device)  # as the node does (on the CPU: cpu_memory)
    samples, rate = soundfile.read(str(VOICE), dtype="float32", always_2d=True)
    samples = samples[: args.seconds * rate]
    preset = get_preset(args.preset)
    n_bins = preset.n_fft // 2 + 1 if preset.n_mels else preset.n_bins
    stages = {
        "check (host)": lambda s: pcm.check_samples(samples, rate),
        "host->device + mono": lambda s: spectrogram.to_mono([samples])[0],
        "resample, peak": lambda s: spectrogram.preprocess(s["mono"], rate, preset),
        "frames (pad, divide; CUDA: window)": lambda s: spectrogram.stft_frames([s["resample, peak"]], preset),
        "window + rfft": lambda s: spectrogram.spectrum(s["frames"][0], preset),
        "|.|, bins first": lambda s: spectrogram._magnitude(s["window + rfft"][:, :n_bins].T),
        "mel (v3/v4; CUDA: from the rfft)": lambda s: (
            (cuda_kernels.log_mel(s["window + rfft"], preset) if backend.current().cuda
             else spectrogram.log_mel(mx.contiguous(s["|.|, bins first"]), preset))
            if preset.n_mels else s["|.|, bins first"]),
        "device->host": lambda s: cuda_kernels.copy_to_host(s["mel (v3/v4; CUDA: from the rfft)"]),
        "reference_mel, whole": lambda s: spectrogram.reference_mel(samples, rate, preset=preset),
    }
    times = {name: [] for name in stages}
    for repeat in range(args.repeats + 3):
        state = {}
        for name, stage in stages.items():
            start = time.perf_counter()
            out = stage(state)
            mx.eval([a for a in (out if isinstance(out, tuple) else (out,)) if isinstance(a, mx.array)])
            if repeat >= 3:
                times[name].append(time.perf_counter() - start)
            state[{"host->device + mono": "mono", "frames (pad, divide; CUDA: window)": "frames"}.get(name, name)] = out
    print(f"{args.preset}, {args.seconds} s at {rate} Hz on {mx.default_device()} (median of {args.repeats}):")
    for name, values in times.items():
        print(f"  {name:32s} {statistics.median(values) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
