#!/usr/bin/env bash
# Every CPU figure of docs/performance.md, one benchmark after another (never two at once on
# a 2-core machine). Results land in ${OUT:-benchmarks/results} as JSON plus a log; each JSON
# names the commit, the uncommitted files, the machine, the date and the command.
# The vLLM side-by-side rows need an unpacked vLLM: export KVSPEC_VLLM_PATH (see
# docs/performance.md); without it bench_reference.py prints why it skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
{
  echo "== machine"; date -u; nproc; python --version
  python -c "import torch, z3, hypothesis; print('torch', torch.__version__, 'z3', z3.get_version_string(), 'hypothesis', hypothesis.__version__)"
  echo "== code"; git rev-parse --short HEAD; git status --short
  echo "== spec";        python benchmarks/bench_spec.py --hypothesis-examples 3000 --json "$out/spec.json"
  echo "== reference";   python benchmarks/bench_reference.py --json "$out/reference.json"
  echo "== conformance"; python benchmarks/bench_conformance.py --json "$out/conformance.json"
  echo "== gpu_impl";    python benchmarks/bench_gpu.py --loop-limit 0 --repeats 8 --json "$out/gpu.json"
  echo "== startup";     python benchmarks/bench_startup.py --json "$out/startup.json"
} 2>&1 | tee "$out/run_all.log"
