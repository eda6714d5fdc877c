"""The resampler's two forms on one device: one strided product per phase (uncompiled; what rates with
hundreds of phases use), and the few-phase rates' compiled kernels over fixed-size pieces (what
`resample_sinc` uses on the CPU for 48k, 24k and 16k), with the time a first call spends building them
(seconds on a Linux CPU the first time on a machine, then read from MLX's disk cache) and a second clip
length's first call (the pieces keep one graph for every length).

    python benchmarks/resampler_compile.py [--device cpu|gpu] [--rates 48000 24000 16000] [--out FILE]
"""

import argparse
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import soundfile
from lib.timing import add_out_argument, median_ms, metric, out_path, write_result

from dora_reference_mel.features.resample import _phases_compiled, _phases_strided, resampled_length
from dora_reference_mel.features.tables import device_sinc_taps, sinc_resample_taps

VOICE = Path(__file__).resolve().parent.parent / "models" / "voices" / "aria.wav"


def first_ms(fn) -> float:
    start = time.perf_counter()
    mx.eval(fn())
    return (time.perf_counter() - start) * 1e3


def measure(rate: int, samples: np.ndarray) -> dict:
    orig, new, width, starts, weights = sinc_resample_taps(rate, 32000)
    _, device_weights = device_sinc_taps(rate, 32000)
    x = mx.array(np.resize(samples, rate * 10))
    n_blocks = -(-resampled_length(x.shape[0], rate, 32000) // new)
    mx.eval(x)

    def strided():
        return _phases_strided(mx.pad(x, [(width, width + orig)]), orig, n_blocks, starts, device_weights)

    def compiled(y=x, blocks=n_blocks):
        return _phases_compiled(y, rate, 32000, blocks)

    build = first_ms(compiled)
    other = x[: rate * 7 + 123]
    other_blocks = -(-resampled_length(other.shape[0], rate, 32000) // new)
    other_first = first_ms(lambda: compiled(other, other_blocks))
    diff = float(np.abs(np.array(strided()).reshape(-1)[: n_blocks * new]
                        - np.array(compiled()).reshape(-1)[: n_blocks * new]).max())
    plain, fused = median_ms(strided), median_ms(compiled)
    print(f"{rate} Hz -> 32 kHz ({new} phases x {weights.shape[1]} taps), 10 s: strided {plain:.2f} ms, "
            f"compiled pieces {fused:.2f} ms ({plain / fused:.2f}x); first call {build:.0f} ms, a 7 s clip's first "
            f"call {other_first:.1f} ms; |diff| {diff:.1e}", flush=True)
    k = rate // 1000
    return {f"strided_{k}k_ms": metric(plain, "ms"), f"compiled_{k}k_ms": metric(fused, "ms"),
            f"strided_over_compiled_{k}k": metric(plain / fused, "x", "higher"),
            f"compiled_first_call_{k}k_ms": metric(build, "ms"), f"max_abs_diff_{k}k": metric(diff, "abs")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--rates", type=int, nargs="+", default=[48000, 24000, 16000])
    add_out_argument(parser, "resampler")
    args = parser.parse_args()
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    samples, _ = soundfile.read(str(VOICE), dtype="float32")
    print(f"MLX {mx.__version__} on {mx.default_device()}")
    metrics = {}
    for rate in args.rates:
        metrics |= measure(rate, samples)
    write_result(out_path(args.out, "resampler"), "resampler", metrics, device=args.device)


if __name__ == "__main__":
    main()
