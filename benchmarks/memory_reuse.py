"""What cpu_memory's allocator settings change on the CPU: a node's mix of clip lengths, with and without.

    python benchmarks/memory_reuse.py [--rounds 4] [--clips 300] [--out FILE]

Each round runs two fresh processes, one per setting, in alternating order (the settings are per process
and cannot be undone). Each warms up as the node does (spectrogram.warm_up of v2, v3 and v4), then computes
`--clips` clips of random lengths from 3 to 10 s at 48 kHz, the preset drawn at random per clip (the same
draws in both). It reports the median time per second of audio per preset, the total, and the peak RSS;
each figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from lib.timing import ROOT, add_out_argument, environment, metric, out_path, write_result

PRESETS = ("v2", "v3", "v4")
SETTINGS = ("mlx-cache", "reuse")  # MLX's own 32 MB CPU buffer cache; cpu_memory.keep_freed_memory


def child(setting: str, clips: int) -> dict:
    import resource

    import mlx.core as mx
    import numpy as np
    import soundfile

    from dora_reference_mel import get_preset
    from dora_reference_mel.features import backend, spectrogram

    if setting == "reuse":
        backend.select("cpu")  # as the node does: cpu_memory's settings
    else:
        mx.set_default_device(mx.cpu)
    samples, rate = soundfile.read(str(ROOT / "models" / "voices" / "aria.wav"), dtype="float32")
    spectrogram.warm_up([get_preset(p) for p in PRESETS])
    rng = np.random.default_rng(1)
    lengths = rng.integers(3 * rate, 10 * rate, clips)
    presets = rng.choice(PRESETS, clips)
    per_second = {p: [] for p in PRESETS}
    start = time.perf_counter()
    for n, preset in zip(lengths, presets, strict=True):
        began = time.perf_counter()
        spectrogram.reference_mel(samples[:n], rate, preset=str(preset))
        per_second[str(preset)].append((time.perf_counter() - began) * 1e3 / (n / rate))
    return {"setting": setting, "total_s": time.perf_counter() - start,
            "ms_per_audio_s": {p: statistics.median(v) for p, v in per_second.items()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clips", type=int, default=300)
    add_out_argument(parser, "memory_reuse")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.clips)))
        return 0
    env = environment()
    print(f"machine: {env['machine']['cpu']}, {env['machine']['cores']} cores; commit {env['commit']}", flush=True)
    runs = {s: [] for s in SETTINGS}
    for round_ in range(args.rounds):
        for setting in (SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]):
            done = subprocess.run([sys.executable, __file__, "--child", setting, "--clips", str(args.clips)],
                                  capture_output=True, text=True, timeout=900, check=True)
            runs[setting].append(json.loads(done.stdout.splitlines()[-1]))
    rows = []
    for setting, results in runs.items():
        row = {"setting": setting, "rounds": args.rounds, "clips": args.clips,
               "total_s": statistics.median(r["total_s"] for r in results),
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
               "ms_per_audio_s": {p: statistics.median(r["ms_per_audio_s"][p] for r in results) for p in PRESETS}}
        rows.append(row)
        per_preset = "  ".join(f"{p} {row['ms_per_audio_s'][p]:.3f}" for p in PRESETS)
        print(f"{setting:10s} ms per second of audio: {per_preset}  total {row['total_s']:.2f} s  "
              f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    print(f"reuse / mlx-cache, total: {rows[1]['total_s'] / rows[0]['total_s']:.2f}")
    metrics = {"reuse_over_mlx_cache_total": metric(rows[1]["total_s"] / rows[0]["total_s"], "x")}
    for row in rows:
        name = row["setting"].replace("-", "_")
        metrics |= {f"{name}_total_s": metric(row["total_s"], "s"), f"{name}_peak_rss_mb": metric(row["peak_rss_mb"], "MB")}
        metrics |= {f"{name}_{p}_ms_per_audio_s": metric(row["ms_per_audio_s"][p], "ms/s") for p in PRESETS}
    write_result(out_path(args.out, "memory_reuse"), "memory_reuse", metrics, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
