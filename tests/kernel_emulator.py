"""Run ``runtime/cuda/kernels.cu`` on the CPU: g++ builds it with ``kernel_emulator.cpp``.

Why: this machine (and CI) has no GPU, but the kernels' index arithmetic, pitches, letterbox
borders, tie-breaking, fp16 rounding and the Python argument packing can all be checked
against the numpy references by running the *same source* as C++. Float semantics match the
GPU build: ``-ffp-contract=off`` here, ``--fmad=false`` in NVRTC.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

from deeplab_trt.runtime.cuda.kernels import HostMemory, Kernels

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "runtime" / "cuda" / "kernels.cu"
HARNESS = HERE / "kernel_emulator.cpp"


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


def build(out_dir: Path) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + HARNESS.read_bytes()).hexdigest()[:16]
    lib = Path(out_dir) / f"kernel_emulator_{digest}.so"
    if not lib.exists():
        cmd = [
            compiler(),
            "-std=c++17",
            "-O2",
            "-ffp-contract=off",
            "-fPIC",
            "-shared",
            "-Wno-unknown-pragmas",
            f"-I{SOURCE.parent}",
            str(HARNESS),
            "-o",
            str(lib),
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return lib


class EmulatorLauncher:
    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.emu_launch.argtypes = [
            ctypes.c_char_p,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
        ]
        self.lib.emu_launch.restype = ctypes.c_int
        self.launches: list[str] = []

    def launch(self, name, grid, block, params, stream) -> None:
        assert grid[2] == 1 and block[2] == 1
        rc = self.lib.emu_launch(name.encode(), grid[0], grid[1], block[0], block[1], ctypes.addressof(params))
        if rc != 0:
            raise KeyError(f"emulator has no kernel {name}")
        self.launches.append(name)


def emulated_kernels(out_dir: Path) -> Kernels:
    return Kernels(EmulatorLauncher(build(out_dir)), HostMemory())
