"""Where a batch's time goes: 64 ten-second clips (int16, as read from files) through
`reference_mel_batch`'s steps, each timed alone with `mx.eval`, medians: reading the files (threads), the
copy in (`to_mono`: one copy of every clip to the device, scaling), the whole graph (copy in included),
and the copy out (`split_rows`' copy, cuda_kernels.copy_to_host). Each stage's figure is also given as the
clips/s it alone would allow.

    python benchmarks/batch_stages.py [--device cpu|gpu] [--clips 64] [--repeats 10] [--out FILE]
"""

import argparse
import concurrent.futures
import os
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import soundfile
from lib.timing import ROOT, add_out_argument, median_ms, metric, out_path, write_result

from dora_reference_mel import get_preset
from dora_reference_mel.features.cuda_kernels import copy_to_host
from dora_reference_mel.features.spectrogram import reference_mel_batch_mx, to_mono

VOICE = ROOT / "models" / "voices" / "aria.wav"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    add_out_argument(parser, "batch_stages")
    args = parser.parse_args()
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    preset = get_preset("v2")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.clips):
            paths.append(Path(tmp) / f"clip{i:03d}.wav")
            soundfile.write(str(paths[-1]), np.roll(samples, i * 4801) * 0.5, rate, subtype="PCM_16")

        def read_all():
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
                return list(pool.map(lambda p: soundfile.read(str(p), dtype="int16", always_2d=True)[0], paths))

        clips = read_all()
        features = reference_mel_batch_mx(clips, [rate] * len(clips), preset)[0]
        mx.eval(features)
        stages = {
            "read_files_ms": median_ms(read_all, args.repeats),
            "copy_in_ms": median_ms(lambda: mx.eval(to_mono(clips)), args.repeats),
            "graph_with_copy_in_ms": median_ms(
                lambda: mx.eval(reference_mel_batch_mx(clips, [rate] * len(clips), preset)[0]), args.repeats),
            "copy_out_float32_ms": median_ms(lambda: copy_to_host(features), args.repeats),
            "copy_out_float16_ms": median_ms(lambda: copy_to_host(features.astype(mx.float16)), args.repeats),
        }
    mb = sum(c.nbytes for c in clips) / 2**20
    print(f"{args.clips} clips of 10 s ({mb:.0f} MB int16) on {mx.default_device()}, medians of {args.repeats}:")
    for name, ms in stages.items():
        print(f"  {name:32s} {ms:8.2f} ms  ({args.clips / ms * 1e3:7.0f} clips/s alone)")
    write_result(out_path(args.out, "batch_stages"), "batch_stages", {k: metric(v, "ms") for k, v in stages.items()},
                 device=args.device, clips=args.clips, repeats=args.repeats)


if __name__ == "__main__":
    main()
