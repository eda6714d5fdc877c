"""The one timer of every benchmark, and the one result format.

`median_ms` times a callable; MLX is lazy, so an MLX array it returns is evaluated inside the timing
(nothing is computed, or timed, before `mx.eval`). `write_result` writes a run as JSON: which benchmark,
the machine, the versions, the commit, the date, and each metric with its unit and which way is better,
the format `benchmarks/suite.py compare` reads.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _evaluated(out):
    try:
        import mlx.core as mx
    except ImportError:
        return out
    if isinstance(out, mx.array) or (isinstance(out, (list, tuple)) and out and isinstance(out[0], mx.array)):
        mx.eval(out)
    return out


def median_ms(fn, repeats: int = 20) -> float:
    """Median wall time of `fn()` in ms over `repeats` calls after one warm-up call (an MLX result is
    evaluated inside the timing)."""
    _evaluated(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _evaluated(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def median_of(seconds: list[float]) -> float:
    """The median of timings taken elsewhere (interleaved rounds), in ms."""
    return statistics.median(seconds) * 1e3


def environment() -> dict:
    """The machine, the versions and the commit a result was measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for name in ("mlx", "numpy", "dora-rs", "torch", "dora-reference-mel"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed in this environment (torch, dora on the GPU machine)
            continue
    gpu = None
    try:
        import mlx.core as mx

        if mx.is_available(mx.gpu):
            gpu = mx.device_info().get("device_name", "gpu") if hasattr(mx, "device_info") else "gpu"
    except ImportError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    commit = (commit.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")
    # A copy of the tree without its own .git (a GPU machine's) is named by whoever copied it.
    commit = os.environ.get("BENCH_COMMIT", commit)
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu}, "versions": versions, "commit": commit,
            "date": time.strftime("%Y-%m-%d")}


def metric(value: float, unit: str, better: str = "lower") -> dict:
    """One measured number: `better` says which way is an improvement ("lower" or "higher")."""
    return {"value": float(value), "unit": unit, "better": better}


def write_result(path, benchmark: str, metrics: dict[str, dict], **extra) -> dict:
    result = {"benchmark": benchmark, **environment(), "metrics": metrics, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result
