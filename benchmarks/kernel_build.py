"""What the first start on a machine costs: the node's warm-up (every preset at its own rates and at 16,
24 and 48 kHz) in a fresh process with an empty MLX kernel cache (MLX keeps compiled kernels under
$TMPDIR/mlx), then again in a second process that finds them built.

    python benchmarks/kernel_build.py [--presets v2,v3,v4,sv] [--out FILE]
"""

import argparse
import os
import subprocess
import sys
import tempfile

from lib.timing import add_out_argument, metric, out_path, write_result

WARM = """
import time
from dora_reference_mel.features import spectrogram
from dora_reference_mel.config import Config
config = Config.from_env({"MEL_PRESET": %r, "CODES_DIR": %r})
start = time.perf_counter()
spectrogram.warm_up(config.presets)
print(f"{time.perf_counter() - start:.1f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="v2,v3,v4,sv")
    add_out_argument(parser, "kernel_build")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        code = WARM % (args.presets, os.path.join(tmp, "codes"))
        first, again = (subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                       check=True).stdout.strip() for _ in range(2))
        built = sum(name.endswith(".so") for _, _, names in os.walk(os.path.join(tmp, "mlx")) for name in names)
    print(f"warm-up of {args.presets}: {first} s with an empty kernel cache ({built} kernels built), "
          f"{again} s once built")
    write_result(out_path(args.out, "kernel_build"), "kernel_build", {
        "warm_up_empty_cache_s": metric(float(first), "s"), "warm_up_built_s": metric(float(again), "s"),
        "kernels_built": metric(built, "kernels")}, presets=args.presets)


if __name__ == "__main__":
    main()
