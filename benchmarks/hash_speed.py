"""Median time of the content hashes on a 10 s 48 kHz float32 clip (1.92 MB): SHA-256 (the old cache
key) and xxh3-128 (the current one).  python benchmarks/hash_speed.py [--repeats 200] [--out FILE]"""

import argparse
import hashlib

import numpy as np
import xxhash
from lib.timing import add_out_argument, median_ms, metric, out_path, write_result

BLOB = np.random.default_rng(0).random(480_000).astype(np.float32).tobytes()


def hash_ms(repeats: int = 200) -> tuple[float, float]:
    """(sha256 ms, xxh3_128 ms) of BLOB."""
    return (median_ms(lambda: hashlib.sha256(BLOB).hexdigest(), repeats),
            median_ms(lambda: xxhash.xxh3_128_hexdigest(BLOB), repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    add_out_argument(parser, "hash_speed")
    args = parser.parse_args()
    sha, xxh = hash_ms(args.repeats)
    print(f"{len(BLOB)} bytes: sha256 {sha:.3f} ms, xxh3_128 {xxh:.3f} ms, ratio {sha / xxh:.0f}x")
    write_result(out_path(args.out, "hash_speed"), "hash_speed", {
        "sha256_ms": metric(sha, "ms"), "xxh3_128_ms": metric(xxh, "ms"),
        "sha256_over_xxh3": metric(sha / xxh, "x", "higher")}, repeats=args.repeats)


if __name__ == "__main__":
    main()
