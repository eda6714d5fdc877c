"""The benchmark suite: the in-process figures of BENCHMARKS.md in one run, one JSON result, and the
comparison of a run with the committed baseline of its machine kind.

    python benchmarks/suite.py run [--out benchmarks/results/<machine>/suite.json] [--repeats N]
    python benchmarks/suite.py compare RESULT.json [--baseline benchmarks/baseline/<machine>.json] [--tolerance 1.5]

`run` measures, on the default MLX device: the service's paths (cache hit, precomputed hit, `voice` hit,
computed) on 10 s at 48 kHz, each preset's compute on 3 and 10 s, and three ratios against a peer timed
in the same run (SHA-256 over xxh3, the strided resampler over the compiled one, and torch's recipe over
ours when torch is installed): on a shared, noisy machine a ratio moves far less than a time.
`compare` prints each metric against the baseline (by default the one of the run's machine kind: cpu.json,
or h200.json for a run on a GPU) and exits 1 when one is worse by more than the
tolerance (a factor: 1.5 means half again slower, or a third less throughput). The dataflow benchmarks
(`bench.py node`, `first_message.py`, `metadata_cost.py`) and the GPU ones stay separate: they need both
dora lines or the device machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib.timing import ROOT, add_out_argument, median_ms, metric, out_path, write_result

BASELINES = ROOT / "benchmarks" / "baseline"


def compute_metrics(repeats: int) -> dict:
    import soundfile

    from dora_reference_mel import reference_mel

    samples, rate = soundfile.read(str(ROOT / "models/voices/aria.wav"), dtype="float32")
    metrics = {}
    for preset in ("v2", "v3", "v4", "sv"):
        for seconds in (3, 10):
            clip = samples[: seconds * rate]
            metrics[f"compute_{preset}_{seconds}s_ms"] = metric(
                median_ms(lambda clip=clip, preset=preset: reference_mel(clip, rate, preset=preset), repeats), "ms")
    try:
        import torch
        from lib import torch_recipe
    except ImportError:  # the peer is optional: the bench extra installs it
        return metrics
    from dora_reference_mel.features import backend

    # the peer on the same hardware, its copies to and from it included, as bench.py compute has it
    device = "cuda" if backend.current().cuda and torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    clip = samples[: 10 * rate]
    for preset in ("v2", "v3", "v4"):
        ours = median_ms(lambda preset=preset: reference_mel(clip, rate, preset=preset), repeats)
        theirs = median_ms(lambda preset=preset: torch_recipe.reference_feature(
            torch.from_numpy(clip).to(device), rate, preset).cpu(), repeats)
        metrics[f"compute_{preset}_10s_over_torch"] = metric(ours / theirs, "x")
    return metrics


def resampler_ratio(repeats: int) -> dict:
    import mlx.core as mx
    import numpy as np

    from dora_reference_mel.features import resample
    from dora_reference_mel.features.tables import device_sinc_taps, sinc_resample_taps

    if not resample.uses_compiled_kernels(48000, 32000):  # a GPU, or no compiler: nothing to compare
        return {}
    x = mx.array(np.random.default_rng(0).standard_normal(480_000).astype(np.float32))
    orig, new, width, starts, _ = sinc_resample_taps(48000, 32000)
    n_blocks = -(-resample.resampled_length(x.shape[0], 48000, 32000) // new)
    _, weights = device_sinc_taps(48000, 32000)
    strided = median_ms(lambda: resample._phases_strided(mx.pad(x, [(width, width + orig)]), orig, n_blocks, starts,
                                                         weights), repeats)
    compiled = median_ms(lambda: resample._phases_compiled(x, 48000, 32000, n_blocks), repeats)
    return {"resample_48k_strided_over_compiled": metric(strided / compiled, "x", "higher")}


def run(out: Path, repeats: int) -> dict:
    from hash_speed import hash_ms
    from inprocess import service_paths

    service = service_paths(repeats=max(repeats * 5, 50))
    metrics = {name: metric(service[name], "ms") for name in
               ("cache_hit_ms", "precomputed_hit_ms", "voice_hit_ms", "computed_ms")}
    metrics["idle_rss_mb"] = metric(service["idle_rss_mb"], "MB")
    metrics |= compute_metrics(repeats)
    sha, xxh = hash_ms(repeats * 5)
    metrics["hash_sha256_over_xxh3"] = metric(sha / xxh, "x", "higher")
    metrics |= resampler_ratio(repeats)
    result = write_result(out, "suite", metrics, repeats=repeats)
    for name, item in metrics.items():
        print(f"{name:40s} {item['value']:10.3f} {item['unit']}")
    print(f"suite: {len(metrics)} metrics, commit {result['commit']}, written to {out}")
    return result


def compare(result_path: Path, baseline_path: Path, tolerance: float) -> int:
    """Each metric of the run against the baseline; 1 when one is worse than `tolerance` allows."""
    run_metrics = json.loads(Path(result_path).read_text())["metrics"]
    baseline = json.loads(Path(baseline_path).read_text())
    worse = []
    machine = ", ".join(filter(None, (baseline["machine"]["cpu"], baseline["machine"]["gpu"])))
    print(f"baseline {Path(baseline_path).name}: commit {baseline['commit']}, {baseline['date']}, {machine}")
    print(f"{'metric':40s} {'baseline':>10s} {'run':>10s} {'factor':>7s}")
    for name, base in baseline["metrics"].items():
        if name not in run_metrics:
            print(f"{name:40s} {base['value']:10.3f} {'-':>10s}  (not measured in this run)")
            continue
        value = run_metrics[name]["value"]
        # how many times worse the run is: above 1 is a regression, whichever way the metric improves
        factor = value / base["value"] if base["better"] == "lower" else base["value"] / value
        flag = "  WORSE" if factor > tolerance else ""
        print(f"{name:40s} {base['value']:10.3f} {value:10.3f} {factor:7.2f}{flag}")
        if flag:
            worse.append(name)
    print(f"compare: {len(worse)} of {len(baseline['metrics'])} metrics worse than {tolerance}x the baseline"
          + (f": {', '.join(worse)}" if worse else ""))
    return 1 if worse else 0


def default_baseline(result_path: Path) -> Path:
    """The committed baseline of the machine kind the run was measured on."""
    on_gpu = json.loads(Path(result_path).read_text())["machine"]["gpu"]
    return BASELINES / ("h200.json" if on_gpu else "cpu.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="measure and write one JSON result")
    add_out_argument(p, "suite")
    p.add_argument("--repeats", type=int, default=20)
    p = sub.add_parser("compare", help="a result against the baseline")
    p.add_argument("result", type=Path)
    p.add_argument("--baseline", type=Path, help="default: baseline/h200.json for a run on a GPU, else cpu.json")
    p.add_argument("--tolerance", type=float, default=1.5)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(out_path(args.out, "suite"), args.repeats)
        return 0
    return compare(args.result, args.baseline or default_baseline(args.result), args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
