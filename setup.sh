#!/usr/bin/env bash
# Create (or update) a virtual environment with everything deeplab-trt needs on this machine:
# torch/torchvision for export, ONNX Runtime for the CPU path, TensorRT-RTX for CPU engine builds,
# cuda-python for NVRTC and the CUDA runtime, pytest. Usage: ./setup.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
LOG="$(mktemp)"
WHEELS=""
trap 'rm -rf "$LOG" ${WHEELS:+"$WHEELS"}' EXIT

pip_quiet() {  # pip's output only when it fails (the editable build is chatty)
    echo "setup: pip install $*"
    if ! "$VENV/bin/python" -m pip install -q "$@" >"$LOG" 2>&1; then
        grep -v '^WARNING: Location' "$LOG" >&2
        echo "setup: pip install $* failed" >&2
        exit 1
    fi
}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_quiet --upgrade pip
# These exact releases lie on this machine's disk (other versions download several GB).
pip_quiet "torch==2.14.1" "torchvision==0.29.1"
pip_quiet -e ".[export,cuda13,rtx,plots,triton,dev]"
# Triton Inference Server for the serving tests: only the server parts of the nvidia-pytriton wheel
# (binary, libraries, python backend; its Python API pins numpy<2 and is not installed), unzipped into
# a git-ignored tools directory. x86-64 Linux only: elsewhere the tests that need it skip.
TRITON_DIR="${DEEPLAB_TRT_TRITONSERVER_DIR:-$PWD/.cache/tritonserver}"
if [ "$(uname -sm)" = "Linux x86_64" ] && [ ! -f "$TRITON_DIR/INSTALLED" ]; then
    echo "setup: tritonserver from nvidia-pytriton==0.7.0 -> $TRITON_DIR"
    WHEELS="$(mktemp -d)"
    if ! "$VENV/bin/python" -m pip download -q --no-deps -d "$WHEELS" "nvidia-pytriton==0.7.0" >"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "setup: pip download nvidia-pytriton==0.7.0 failed" >&2
        exit 1
    fi
    "$VENV/bin/python" -m deeplab_trt.benchmarks.tritonserver install --wheel "$WHEELS"/nvidia_pytriton-*.whl \
        --dest "$TRITON_DIR" >/dev/null
    rm -rf "$WHEELS"
fi
"$VENV/bin/python" -c "import torch, onnxruntime, deeplab_trt.runtime; print('deeplab-trt environment ready in $VENV')"
