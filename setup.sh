#!/usr/bin/env bash
# Create (or update) a virtual environment with everything deeplab-trt needs on this machine:
# torch/torchvision for export, ONNX Runtime for the CPU path, TensorRT-RTX for CPU engine builds,
# cuda-python for NVRTC and the CUDA runtime, pytest. Usage: ./setup.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# These exact releases lie on this machine's disk (other versions download several GB).
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q -e ".[export,cuda,rtx,dev]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import torch, onnxruntime, runtime; print('deeplab-trt environment ready in $VENV')"
