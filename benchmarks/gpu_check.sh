#!/usr/bin/env bash
# GPU check for kvspec's torch manager (gpu_impl): the CUDA-marked tests and the benchmark on
# the device. Writes results under ${OUT:-.}; bounded by timeouts to about 6 minutes on one GPU.
# Needs a CUDA build of torch==2.13.0 (see docs/gpu_impl.md) and `pip install -e .`.
set -u
OUT="${OUT:-.}"
mkdir -p "$OUT"
status=0
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" > "$OUT/gpu_env.txt" 2>&1
env_rc=$?
cat "$OUT/gpu_env.txt"
[ "$env_rc" -eq 0 ] || exit 2
timeout 240 python -m pytest -m gpu tests/gpu tests/conformance -q -p no:cacheprovider 2>&1 \
  | tee "$OUT/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 120 python benchmarks/bench_gpu.py --device cuda --sizes 256 4096 16384 --repeats 6 \
  --loop-limit 256 --json "$OUT/bench_gpu_cuda.json" 2>&1 | tee "$OUT/bench_gpu_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
