"""Compile ``kernels.cu`` with NVRTC for one GPU architecture, cached on disk.

Why NVRTC at run time: the kernels must run on whatever GPU the user has (Orin = sm_87,
H100 = sm_90, RTX cards ...) without a CUDA toolkit or a compiler on the target; NVRTC
ships as a wheel with cuda-python. Why a cache: compiling takes ~0.4 s per architecture,
loading a cubin takes microseconds.

Cache key = sha256(source, architecture, NVRTC version, options, output kind), so a new
source, a new NVRTC or a different GPU never reuses a stale binary. Files are written
atomically (:mod:`deeplab_trt.runtime.atomic`), so two processes compiling at once both end up with a
complete file. Location: ``$DEEPLAB_TRT_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/deeplab-trt/kernels``,
else ``~/.cache/deeplab-trt/kernels``; an unwritable cache only costs the compile time.

Numerics: the options never include ``--use_fast_math`` (flush-to-zero and approximate
division change the preprocessing numbers) and always include ``--fmad=false`` (see the
header of ``kernels.cu``: a fused multiply-add flips near-tied argmaxes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from deeplab_trt.runtime.atomic import write_bytes_atomic
from deeplab_trt.runtime.cuda.api import INSTALL_HINT
from deeplab_trt.runtime.errors import ToolkitError

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
DEFAULT_OPTIONS = ("--std=c++17", "--fmad=false")
CACHE_ENV = "DEEPLAB_TRT_KERNEL_CACHE"
KINDS = ("cubin", "ptx")


class KernelCompileError(ToolkitError):
    """NVRTC refused the source: the message carries the file, the architecture and NVRTC's log."""

    def __init__(self, message: str, log_text: str = ""):
        super().__init__(message)
        self.log = log_text


@dataclass(frozen=True)
class CompiledKernels:
    """A compiled module image, ready for ``cuModuleLoadData``."""

    image: bytes  # cubin (ELF) or NUL-terminated PTX text
    kind: str  # "cubin" | "ptx"
    arch: str  # "sm_87", "sm_90", ...
    nvrtc_version: tuple[int, int]
    options: tuple[str, ...]
    key: str  # sha256 cache key
    path: Path | None  # cache file (None when the cache was not writable)
    from_cache: bool
    seconds: float  # compile (or cache read) time
    log: str = ""

    @property
    def ptx_text(self) -> str:
        if self.kind != "ptx":
            raise ValueError("not a PTX image")
        return self.image.rstrip(b"\0").decode()


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise ToolkitError(
            f"NVRTC is not available: install cuda-python {INSTALL_HINT} to compile the CUDA kernels"
        ) from exc
    return nvrtc


def _ok(nvrtc, result, call: str):
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, text = nvrtc.nvrtcGetErrorString(err)
        raise ToolkitError(f"{call} failed: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else tuple(values)


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    major, minor = _ok(nvrtc, nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> list[int]:
    """Compute capabilities this NVRTC can target, e.g. [75, 80, 86, 87, 89, 90, ...]."""
    nvrtc = _nvrtc()
    return [int(a) for a in _ok(nvrtc, nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")]


def normalize_arch(arch: str | int | tuple[int, int] | None) -> str:
    """``"sm_87"`` from ``"sm_87"``, ``"87"``, ``87``, ``(8, 7)`` or ``"8.7"``; None = the running GPU."""
    if arch is None:
        from deeplab_trt.runtime.cuda.api import current_device

        return current_device().arch
    if isinstance(arch, tuple):
        return f"sm_{arch[0]}{arch[1]}"
    text = str(arch).strip().lower()
    match = re.fullmatch(r"(?:sm_|compute_)?(\d+)(?:\.(\d+))?", text)
    if not match:
        raise ToolkitError(f"invalid GPU architecture {arch!r} (expected e.g. sm_87, sm_90 or 8.7)")
    major_or_cc, minor = match.groups()
    return f"sm_{major_or_cc}{minor}" if minor is not None else f"sm_{major_or_cc}"


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from deeplab_trt.runtime.cache_dir import toolkit_cache_root

    return toolkit_cache_root() / "kernels"


def cache_key(source: bytes, arch: str, version: tuple[int, int], options: tuple[str, ...], kind: str) -> str:
    h = hashlib.sha256()
    for part in (
        source,
        arch.encode(),
        f"nvrtc {version[0]}.{version[1]}".encode(),
        "\0".join(options).encode(),
        kind.encode(),
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _out_buffer(size: int) -> bytearray:
    """A writable buffer for NVRTC to fill.

    Never ``b" " * size`` (the idiom of NVIDIA's samples): for size 1 -- an empty log --
    CPython returns its shared one-byte ``b" "`` object, NVRTC writes a NUL into it, and
    every ``b" "`` in the process becomes ``b"\\0"`` (``torch.load`` of a file then fails).
    """
    return bytearray(size)


def _program_log(nvrtc, prog) -> str:
    size = _ok(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    buf = _out_buffer(size)
    _ok(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
    return buf.rstrip(b"\0 ").decode(errors="replace").strip()


def _nvrtc_compile(source: bytes, name: str, arch: str, options: tuple[str, ...], kind: str) -> tuple[bytes, str]:
    nvrtc = _nvrtc()
    cc = int(arch[3:])
    supported = supported_archs()
    if cc not in supported:
        major, minor = nvrtc_version()
        raise ToolkitError(
            f"NVRTC {major}.{minor} cannot compile for {arch} (it supports "
            f"{', '.join(f'sm_{a}' for a in supported)}); install a cuda-python/NVRTC "
            "release that supports this GPU"
        )
    target = f"--gpu-architecture={'sm' if kind == 'cubin' else 'compute'}_{cc}"
    opts = [o.encode() for o in (*options, target)]
    prog = _ok(nvrtc, nvrtc.nvrtcCreateProgram(source, name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        text = _program_log(nvrtc, prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            first = next((ln for ln in text.splitlines() if "error" in ln), text.splitlines()[0] if text else str(err))
            raise KernelCompileError(f"{name}: NVRTC compile for {arch} failed: {first.strip()}\n{text}", text)
        if kind == "cubin":
            size = _ok(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            image = _out_buffer(size)
            _ok(nvrtc, nvrtc.nvrtcGetCUBIN(prog, image), "nvrtcGetCUBIN")
        else:
            size = _ok(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            image = _out_buffer(size)
            _ok(nvrtc, nvrtc.nvrtcGetPTX(prog, image), "nvrtcGetPTX")
        return bytes(image), text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_kernels(
    arch: str | int | tuple[int, int] | None = None,
    *,
    kind: str = "cubin",
    source: str | bytes | None = None,
    name: str | None = None,
    options: tuple[str, ...] = DEFAULT_OPTIONS,
    cache: bool = True,
    cache_root: str | os.PathLike | None = None,
) -> CompiledKernels:
    """Compile the kernels (default: ``kernels.cu``) for ``arch`` (default: the running GPU).

    ``kind="cubin"`` is machine code for exactly that architecture (no JIT at load time);
    ``kind="ptx"`` is the portable form the driver JIT-compiles (for GPUs newer than NVRTC).
    """
    if kind not in KINDS:
        raise ToolkitError(f"unknown kernel image kind {kind!r} (expected one of {', '.join(KINDS)})")
    if "--use_fast_math" in options or "-use_fast_math" in options:
        raise ToolkitError("--use_fast_math changes the kernels' numerics; it is not allowed here")
    arch = normalize_arch(arch)
    if source is None:
        source_bytes = KERNEL_SOURCE.read_bytes()
        name = name or str(KERNEL_SOURCE.relative_to(KERNEL_SOURCE.parents[2]))
    else:
        source_bytes = source.encode() if isinstance(source, str) else bytes(source)
        name = name or "kernels.cu"
    version = nvrtc_version()
    options = tuple(options)
    key = cache_key(source_bytes, arch, version, options, kind)
    root = Path(cache_root).expanduser() if cache_root is not None else cache_dir()
    path = root / f"{key}.{kind}"
    start = time.perf_counter()
    if cache and path.is_file():
        image = path.read_bytes()
        if image:
            return CompiledKernels(image, kind, arch, version, options, key, path, True, time.perf_counter() - start)
    image, text = _nvrtc_compile(source_bytes, name, arch, options, kind)
    seconds = time.perf_counter() - start
    stored: Path | None = None
    if cache:
        try:
            write_bytes_atomic(path, image)
            stored = path
        except OSError as exc:
            log.warning("kernel cache %s is not writable (%s); kernels will be recompiled next time", root, exc)
    log.debug("compiled %s for %s (%s, %d bytes) in %.2f s", name, arch, kind, len(image), seconds)
    return CompiledKernels(image, kind, arch, version, options, key, stored, False, seconds, text)
