#!/usr/bin/env bash
# Train and serve a model on this machine's GPU and print throughput (not part of CI).
# Needs the project's virtual environment with a CUDA build of torch 2.13.0:
#   python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e .
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: no GPU visible"
.venv/bin/python benchmarks/gpu_check.py "$@"
