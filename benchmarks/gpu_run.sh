#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, on a machine with an NVIDIA GPU, torch + torchaudio (CUDA), transformers and
# Python 3.12, that may not reach the package index: MLX's CUDA backend importable (PYTHONPATH), and brought along
# in .whl/ the soundfile and soxr wheels (with cffi and pycparser) and GPT-SoVITS's quantizer unpacked in
# .whl/GPT_SoVITS (tests/oracle_codes.unpack_upstream, run where the index can be reached). Parity first
# (MLX_ENABLE_TF32 left at its default, on), then the benchmarks, each writing its JSON result to $OUT, all of
# them also in $OUT/h200.tgz (unpack it into benchmarks/results/h200/).
set -uo pipefail
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/site:$PWD/node_hub PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import mlx.core as mx, torch, torchaudio; print('MLX', mx.__version__, mx.default_device(), 'torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'TF32 env', __import__('os').environ.get('MLX_ENABLE_TF32', 'unset (MLX default: on)'))"
python3 -m pytest -q -rA -s -p no:cacheprovider tests/test_signal.py tests/test_tables.py tests/test_resample.py tests/test_cuda_kernels.py tests/test_upstream.py 2>&1 | grep -E "passed|failed|max \||Error|^(sv|resampler) " | tail -60 | tee "$OUT/parity.log"
python3 benchmarks/copy_bandwidth.py --out "$OUT/copies.json"
python3 benchmarks/resampler_compile.py --device gpu --out "$OUT/resampler.json"
for preset in v2 v4; do python3 benchmarks/profile_stages.py --device gpu --preset $preset --repeats 20 --out "$OUT/profile-$preset.json"; done
python3 benchmarks/bench.py resident --device gpu --repeats 50 --out "$OUT/resident.json"
python3 benchmarks/bench.py compute --device gpu --repeats 20 --out "$OUT/compute.json"
python3 benchmarks/bench.py batch --device gpu --repeats 6 --out "$OUT/batch.json"
python3 benchmarks/batch_stages.py --device gpu --clips 64 --repeats 10 --out "$OUT/batch_stages.json"
python3 benchmarks/codes_speed.py --skip numpy --repeats 9 --upstream .whl/GPT_SoVITS --out "$OUT/codes_speed.json"
python3 benchmarks/suite.py run --out "$OUT/suite.json" && python3 benchmarks/suite.py compare "$OUT/suite.json"
tar -czf /tmp/h200.tgz -C "$OUT" . && mv /tmp/h200.tgz "$OUT/"
