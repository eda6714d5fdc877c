"""The one timing loop of the scripts that time a callable: a first call to warm up, then the median."""

import statistics
import time


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `fn()` in ms over `repeats` calls after one warm-up call. MLX is lazy: `fn`
    must evaluate what it builds (mx.eval) for the time to mean anything."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
