"""Median time of the content hashes on a 10 s 48 kHz float32 clip (1.92 MB): SHA-256 (the old cache
key) and xxh3-128 (the current one).  python benchmarks/hash_speed.py"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_ms  # noqa: E402  (benchmarks/ is not a package)

BLOB = np.random.default_rng(0).random(480_000).astype(np.float32).tobytes()


def hash_ms(repeats: int = 200) -> tuple[float, float]:
    """(sha256 ms, xxh3_128 ms) of BLOB."""
    return (median_ms(lambda: hashlib.sha256(BLOB).hexdigest(), repeats),
            median_ms(lambda: xxhash.xxh3_128_hexdigest(BLOB), repeats))


if __name__ == "__main__":
    sha, xxh = hash_ms()
    print(f"{len(BLOB)} bytes: sha256 {sha:.3f} ms, xxh3_128 {xxh:.3f} ms, ratio {sha / xxh:.0f}x")
