"""Can mx.compile speed up the CPU resampler? The shipped form (one strided product per phase) plain
and under mx.compile, and the same taps as one fused sum of strided slices under mx.compile, with
the time its first call spends compiling (MLX compiles per input shape, so per clip length).

    python benchmarks/resampler_compile.py [--rates 48000 16000]
"""

import argparse
import statistics
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import soundfile

from dora_reference_mel.signal import _phases_strided, resampled_length, sinc_resample_taps

VOICE = Path(__file__).resolve().parent.parent / "models" / "voices" / "aria.wav"


def median_ms(fn, arg, repeats=20) -> float:
    mx.eval(fn(arg))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn(arg))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(rate: int, samples: np.ndarray) -> str:
    orig, new, width, starts, weights = sinc_resample_taps(rate, 32000)
    x = mx.array(samples[: rate * 10])
    n_blocks = -(-resampled_length(x.shape[0], rate, 32000) // new)
    padded = mx.pad(x, [(width, width + orig)])
    mx.eval(padded)

    def shipped(p):
        return _phases_strided(p, orig, n_blocks, starts, weights)

    def fused(p):  # sum over taps of strided slices: elementwise work mx.compile can fuse
        phases = []
        for k, start in enumerate(starts.tolist()):
            terms = [p[start + i: start + i + orig * (n_blocks - 1) + 1: orig] * float(w)
                     for i, w in enumerate(weights[k].tolist())]
            phases.append(sum(terms[1:], terms[0]))
        return mx.stack(phases, axis=1)

    fused_compiled = mx.compile(fused)
    start = time.perf_counter()
    mx.eval(fused_compiled(padded))
    compile_ms = (time.perf_counter() - start) * 1e3
    diff = float(np.abs(np.array(shipped(padded)) - np.array(fused_compiled(padded))).max())
    return (f"{rate} Hz -> 32 kHz ({new} phases x {weights.shape[1]} taps), 10 s: shipped "
            f"{median_ms(shipped, padded):.2f} ms, shipped under mx.compile "
            f"{median_ms(mx.compile(shipped), padded):.2f} ms, fused taps compiled {median_ms(fused_compiled, padded):.2f} "
            f"ms (first call, compiling: {compile_ms:.0f} ms); |diff| {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=int, nargs="+", default=[48000, 16000])
    args = parser.parse_args()
    mx.set_default_device(mx.cpu)
    samples, _ = soundfile.read(str(VOICE), dtype="float32")
    for rate in args.rates:
        print(measure(rate, samples), flush=True)


if __name__ == "__main__":
    main()
