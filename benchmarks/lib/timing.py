"""The one timer of every benchmark, and the one result format.

`median_ms` times a callable (`median_cold_ms` with the CPU's caches evicted first); MLX is lazy, so an MLX
array it returns is evaluated inside the timing (nothing is computed, or timed, before `mx.eval`).
`write_result` writes a run as JSON: which benchmark,
the machine, the versions, the commit, the date, and each metric with its unit and which way is better,
the format `benchmarks/suite.py compare` reads. Every entry point writes one such file, by default
`benchmarks/results/<machine>/<name>.json` (`add_out_argument`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def median_cold_ms(fn, repeats: int) -> float:
    """Median ms of `fn()` called as a node calls it between events: the CPU's caches filled by other work
    (writing 64 MB, twice the 32 MB last-level cache of the CPU machine) just before each call."""
    import numpy as np

    other_work = np.zeros(16 * 2**20, dtype=np.float32)
    times = []
    for _ in range(repeats + 1):
        other_work += 1
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


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
    # results written by earlier runs change nothing that is measured
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                           cwd=ROOT, capture_output=True, text=True)
    commit = (commit.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")
    # A copy of the tree without its own .git (a GPU machine's) is named by whoever copied it.
    commit = os.environ.get("BENCH_COMMIT", commit)
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu}, "versions": versions, "commit": commit,
            "date": time.strftime("%Y-%m-%d")}


def metric(value: float, unit: str, better: str = "lower") -> dict:
    """One measured number: `better` says which way is an improvement ("lower" or "higher")."""
    return {"value": float(value), "unit": unit, "better": better}


def machine_kind() -> str:
    """The results folder of this machine: `h200` where MLX has a GPU, `cpu` otherwise; BENCH_MACHINE
    names another."""
    if os.environ.get("BENCH_MACHINE"):
        return os.environ["BENCH_MACHINE"]
    try:
        import mlx.core as mx
    except ImportError:
        return "cpu"
    return "h200" if mx.is_available(mx.gpu) else "cpu"


def add_out_argument(parser, name: str) -> None:
    """`--out`, the result file, by default benchmarks/results/<machine>/<name>.json."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the JSON result (default: benchmarks/results/<machine>/{name}.json)")


def out_path(out: Path | None, name: str) -> Path:
    return out or ROOT / "benchmarks" / "results" / machine_kind() / f"{name}.json"


def dora_line_name(name: str) -> str:
    """`name`, or `name-dora04` under dora 0.4: the results of both dora lines sit side by side."""
    import dora

    return name + ("-dora04" if getattr(dora, "__version__", "1").startswith("0.") else "")


def write_result(path, benchmark: str, metrics: dict[str, dict], **extra) -> dict:
    result = {"benchmark": benchmark, **environment(), "metrics": metrics, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result
