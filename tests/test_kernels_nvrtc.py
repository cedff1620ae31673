"""NVRTC compiles every kernel in ``runtime/cuda/kernels.cu`` for Orin (sm_87) and H100 (sm_90).

Runs on CPU: NVRTC needs no GPU. Checks the entry points exist in PTX and cubin, the cubin
targets the requested SM, the PTX parameter lists match the Python argument packing in
``runtime/cuda/kernels.py`` (a mismatch would pass garbage to a kernel on a GPU), the module
has no fused multiply-adds (labels must equal the numpy references bit for bit), the disk
cache, and the error paths.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python (NVRTC) is not installed")

from deeplab_trt.runtime.cuda import compile as kc  # noqa: E402
from deeplab_trt.runtime.cuda.kernels import KERNEL_NAMES, SIGNATURES  # noqa: E402
from deeplab_trt.runtime.errors import ToolkitError  # noqa: E402

ARCHS = ("sm_87", "sm_90")
PTX_PARAM = {"p": ".u64", "q": ".u64", "i": ".u32", "f": ".f32"}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kernel-cache")


@pytest.fixture(scope="module")
def compiled(cache_root):
    """{(arch, kind): CompiledKernels}, compiled once for the module (fresh cache)."""
    out = {}
    for arch in ARCHS:
        for kind in ("cubin", "ptx"):
            out[arch, kind] = kc.compile_kernels(arch, kind=kind, cache_root=cache_root)
    return out


def ptx_entries(ptx: str) -> dict[str, list[str]]:
    """entry name → list of .param types."""
    entries = {}
    for match in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, flags=re.S):
        entries[match.group(1)] = re.findall(r"\.param\s+(\.\w+)", match.group(2))
    return entries


def cubin_sm(image: bytes) -> int:
    """The SM number in a CUDA ELF header (e_flags; its layout changed with ELF ABI version 8)."""
    assert image[:4] == b"\x7fELF"
    abi_version = image[8]
    e_flags = struct.unpack_from("<I", image, 0x30)[0]
    return (e_flags >> 8) & 0xFF if abi_version >= 8 else e_flags & 0xFF


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_to_ptx_with_matching_parameters(compiled, arch):
    result = compiled[arch, "ptx"]
    ptx = result.ptx_text
    assert f".target {arch}" in ptx
    entries = ptx_entries(ptx)
    assert set(entries) == set(KERNEL_NAMES)
    for name, sig in SIGNATURES.items():
        assert entries[name] == [PTX_PARAM[c] for c in sig], f"{name}: Python packing disagrees with the kernel"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_to_a_cubin_for_the_arch(compiled, arch):
    result = compiled[arch, "cubin"]
    assert cubin_sm(result.image) == int(arch[3:])
    for name in KERNEL_NAMES:  # symbol names are in the ELF string table
        assert name.encode() + b"\0" in result.image
    assert result.kind == "cubin" and result.arch == arch and not result.from_cache


@pytest.mark.parametrize("arch", ARCHS)
def test_no_fused_multiply_add_and_no_fast_math(compiled, arch):
    ptx = compiled[arch, "ptx"].ptx_text
    assert "fma." not in ptx, "--fmad=false must keep multiply and add separately rounded"
    assert ".ftz" not in ptx and "approx" not in ptx, "fast-math instructions found"
    assert "cvt.rn.f16.f32" in ptx  # fp16 output rounds to nearest even, like numpy


def test_cache_hit_on_second_compile(compiled, cache_root):
    first = compiled["sm_90", "cubin"]
    assert first.path is not None and first.path.parent == cache_root and first.path.read_bytes() == first.image
    again = kc.compile_kernels("sm_90", kind="cubin", cache_root=cache_root)
    assert again.from_cache and again.image == first.image and again.key == first.key  # from_cache, not a timing
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_cache_key_covers_arch_kind_options_source_and_version(compiled):
    keys = {r.key for r in compiled.values()}
    assert len(keys) == len(compiled)
    source = kc.KERNEL_SOURCE.read_bytes()
    base = kc.cache_key(source, "sm_90", (13, 0), kc.DEFAULT_OPTIONS, "cubin")
    assert base != kc.cache_key(source + b"\n", "sm_90", (13, 0), kc.DEFAULT_OPTIONS, "cubin")
    assert base != kc.cache_key(source, "sm_90", (13, 1), kc.DEFAULT_OPTIONS, "cubin")
    assert base != kc.cache_key(source, "sm_90", (13, 0), (*kc.DEFAULT_OPTIONS, "-lineinfo"), "cubin")


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(kc.CACHE_ENV, str(tmp_path / "k"))
    assert kc.cache_dir() == tmp_path / "k"
    monkeypatch.delenv(kc.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kc.cache_dir() == tmp_path / "xdg" / "deeplab-trt" / "kernels"


def test_compile_error_reports_file_arch_and_log(tmp_path):
    broken = 'extern "C" __global__ void broken(int* p) { p[0] = undefined_name; }\n'
    with pytest.raises(kc.KernelCompileError) as err:
        kc.compile_kernels("sm_87", source=broken, name="broken.cu", cache_root=tmp_path)
    first_line = str(err.value).splitlines()[0]
    assert first_line.startswith("broken.cu: NVRTC compile for sm_87 failed:")
    assert "undefined_name" in first_line
    assert "undefined_name" in err.value.log
    assert not list(tmp_path.iterdir()), "nothing cached for a failed compile"


def test_fast_math_refused_and_unsupported_arch_explained(tmp_path):
    with pytest.raises(ToolkitError, match="use_fast_math"):
        kc.compile_kernels("sm_90", options=("--use_fast_math",), cache_root=tmp_path)
    supported = kc.supported_archs()
    if 72 not in supported:  # CUDA 13 NVRTC dropped Xavier (sm_72)
        with pytest.raises(ToolkitError, match=r"cannot compile for sm_72 \(it supports sm_"):
            kc.compile_kernels("sm_72", cache_root=tmp_path)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("sm_87", "sm_87"),
        ("87", "sm_87"),
        (87, "sm_87"),
        ((9, 0), "sm_90"),
        ("8.7", "sm_87"),
        ("compute_90", "sm_90"),
        ("SM_120", "sm_120"),
    ],
)
def test_normalize_arch(text, expected):
    assert kc.normalize_arch(text) == expected


def test_normalize_arch_rejects_garbage():
    with pytest.raises(ToolkitError, match="invalid GPU architecture"):
        kc.normalize_arch("ampere")


def test_compile_report(compiled, capsys):
    """Prints what was compiled (shown with -s; the numbers go into the issue note)."""
    for (arch, kind), r in sorted(compiled.items()):
        print(
            f"NVRTC {r.nvrtc_version[0]}.{r.nvrtc_version[1]} {arch} {kind}: {len(r.image)} bytes, "
            f"{r.seconds:.2f} s, options {' '.join(r.options)}"
        )
    assert all(len(r.image) > 10_000 for r in compiled.values())


def test_compiling_leaves_python_bytes_intact(tmp_path):
    """NVRTC fills caller buffers; an empty log is 1 byte, and ``b" " * 1`` is CPython's shared
    one-byte object. Writing into it turned every ``b" "`` into ``b"\\0"`` (torch.load then failed)."""
    source = 'extern "C" __global__ void k(float* x) { x[0] = 1.0f; }'
    kc.compile_kernels("sm_87", source=source, cache=False)
    kc.compile_kernels("sm_87", source=source, kind="ptx", cache=False)
    assert b" " * 1 == bytes([32]) and b" ".strip() == b""
