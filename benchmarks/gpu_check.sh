#!/usr/bin/env bash
# Train and serve a model on this machine's GPU and print throughput (not part of CI).
# Uses the project's virtual environment (.venv) when there is one, else python3; either
# needs a CUDA build of torch (the project pins 2.13.0), numpy and pandas, and Ray Serve for
# step 4 (skipped, with a printed line, when `ray` cannot be imported):
#   python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e .
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: no GPU visible"
"$python" benchmarks/gpu_check.py "$@"
