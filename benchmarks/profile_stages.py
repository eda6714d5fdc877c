"""Where the time goes: each stage of reference_mel timed alone (mx.eval after each), medians.

    python benchmarks/profile_stages.py [--device cpu|gpu] [--preset v2] [--seconds 10] [--compile] [--out FILE]
The result is benchmarks/results/<machine>/profile-<preset>.json. --compile: after the node's warm-up, which
builds the CPU's resampling kernels (the library compiles nothing).
"""

import argparse
import time
from pathlib import Path

import mlx.core as mx
import soundfile
from lib.timing import add_out_argument, median_of, metric, out_path, write_result

from dora_reference_mel import get_preset
from dora_reference_mel.features import backend, cuda_kernels, pcm, spectrogram

# the result's metric of each stage below
STAGE_KEYS = {"check (host)": "check_ms", "host->device + mono": "to_device_mono_ms", "resample, peak": "resample_ms",
              "frames (pad, divide; CUDA: window)": "frames_ms", "window + rfft": "rfft_ms",
              "|.|, bins first": "magnitude_ms", "mel (v3/v4; CUDA: from the rfft)": "mel_ms",
              "device->host": "to_host_ms", "reference_mel, whole": "reference_mel_ms"}
VOICE = Path(__file__).resolve().parent.parent / "models" / "voices" / "aria.wav"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--preset", default="v2")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="after the node's warm-up (compiled kernels)")
    add_out_argument(parser, "profile-<preset>")
    args = parser.parse_args()
    backend.select(args.device)  # as the node does (on the CPU: cpu_memory)
    samples, rate = soundfile.read(str(VOICE), dtype="float32", always_2d=True)
    samples = samples[: args.seconds * rate]
    preset = get_preset(args.preset)
    if args.compile:
        spectrogram.warm_up([preset])
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
    metrics = {}
    for name, values in times.items():
        print(f"  {name:32s} {median_of(values):8.3f} ms")
        metrics[STAGE_KEYS[name]] = metric(median_of(values), "ms")
    write_result(out_path(args.out, f"profile-{args.preset}"), f"profile-{args.preset}", metrics,
                 device=args.device, seconds=args.seconds, repeats=args.repeats)


if __name__ == "__main__":
    main()
