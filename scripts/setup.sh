#!/usr/bin/env bash
# Set up sete_lite in ./.venv (CPU). On a GPU machine add the extra: pip install -e ".[gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: any other resolution pulls several GB of CUDA packages.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
# A CUDA-only torchvision/torchaudio (pulled in by some packages) fails to load on CPU.
python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "sete_lite is installed in .venv"
