#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, on a machine with an NVIDIA GPU, torch (CUDA) and Python 3.12:
# MLX's CUDA backend from .mlxcuda/ (a wheel of mlx and its mlx-cuda-13 libraries, unpacked; see BENCHMARKS.md), soundfile and soxr
# wheels from .whl/. Parity first (MLX_ENABLE_TF32 left at its default, on), then the benchmarks.
set -uo pipefail
mkdir -p /tmp/mlx-site /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mlx-site .mlxcuda/mlx-*.whl || exit 1
tar -xJf .mlxcuda/mlx_cuda_13.tar.xz -C /tmp/mlx-site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/mlx-site:/tmp/site:$PWD/node_hub PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import mlx.core as mx, torch, torchaudio; print('MLX', mx.__version__, mx.default_device(), 'torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'TF32 env', __import__('os').environ.get('MLX_ENABLE_TF32', 'unset (MLX default: on)'))"
python3 -m pytest -q -rA -p no:cacheprovider tests/test_signal.py tests/test_upstream.py 2>&1 | grep -E "passed|failed|max \||Error" | tail -20 | tee "$OUT/gpu_parity.txt"
python3 benchmarks/copy_bandwidth.py 2>&1 | tee "$OUT/gpu_copies.txt"
for preset in v2 v4; do python3 benchmarks/profile_stages.py --device gpu --preset $preset; done 2>&1 | tee "$OUT/gpu_profile.txt"
python3 benchmarks/bench.py compute --device gpu --repeats 50 --json "$OUT/gpu_compute.json" 2>&1 | tee "$OUT/gpu_compute.txt"
python3 benchmarks/bench.py batch --device gpu --repeats 12 --json "$OUT/gpu_batch.json" 2>&1 | tee "$OUT/gpu_batch.txt"
