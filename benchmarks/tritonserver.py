"""A real ``tritonserver`` on this machine: installed from the ``nvidia-pytriton`` wheel, started on loopback.

Why the wheel: Triton Inference Server ships as containers, but the ``nvidia-pytriton`` wheel
(0.7.0, manylinux_2_35 x86_64) bundles the server binary, its libraries and the python backend,
and they start on a CPU-only machine. Only those files are used -- PyTriton's own Python API pins
numpy < 2 and never enters the project's environment: :func:`install` unzips the binary parts into
a tools directory (``.cache/tritonserver`` by default, git-ignored; ``$DEEPLAB_TRT_TRITONSERVER_DIR``
elsewhere), copies the python-backend stub built for this interpreter beside ``libtriton_python.so``,
and gives the stub a numpy < 2 of its own (``stub-site/``): the 0.7.0 stub is built against numpy 1
and, under numpy 2, reads input tensors wrongly and returns empty outputs.

:class:`TritonServer` starts the server on free loopback ports (HTTP and gRPC; metrics off) with a
repository from ``deeplab-trt deploy triton``, waits (bounded) until it is ready and stops it. The
end-to-end test and the served-throughput benchmark use it; ``./setup.sh`` runs ``install``::

    python -m deeplab_trt.benchmarks.tritonserver install --wheel nvidia_pytriton-0.7.0-....whl
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deeplab_trt.builder.triton import SITE_ENV
from deeplab_trt.runtime.atomic import atomic_dir
from deeplab_trt.runtime.errors import ToolkitError

DIR_ENV = "DEEPLAB_TRT_TRITONSERVER_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "tritonserver"
WHEEL = "nvidia-pytriton==0.7.0"
MARKER = "INSTALLED"
_PARTS = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")


@dataclass(frozen=True)
class TritonInstall:
    """Where a runnable ``tritonserver`` and what it needs are."""

    binary: Path
    backends: Path
    library_dirs: tuple[Path, ...] = ()
    stub_site: Path | None = None

    def environment(self, site_dirs: list[str]) -> dict[str, str]:
        """The server's environment: its libraries on ``LD_LIBRARY_PATH``, ``site_dirs`` for the stub."""
        env = dict(os.environ)
        libs = [str(d) for d in self.library_dirs] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env[SITE_ENV] = os.pathsep.join(site_dirs)
        return env


def tools_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _from_wheel_layout(root: Path) -> TritonInstall | None:
    server = root / "pytriton" / "tritonserver"
    binary = server / "bin" / "tritonserver"
    if not (root / MARKER).exists() or not binary.exists():
        return None
    stub_site = root / "stub-site"
    return TritonInstall(
        binary=binary,
        backends=server / "backends",
        library_dirs=(root / "nvidia_pytriton.libs",),
        stub_site=stub_site if stub_site.is_dir() else None,
    )


def find_tritonserver() -> tuple[TritonInstall | None, str]:
    """(the installation, "") or (None, why there is none): the tools directory, then ``tritonserver`` on PATH."""
    root = tools_dir()
    found = _from_wheel_layout(root)
    if found is not None:
        return found, ""
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        return TritonInstall(binary=binary, backends=binary.parent.parent / "backends"), ""
    return None, (
        f"no tritonserver: none installed in {root} (./setup.sh installs it from the {WHEEL} wheel; "
        f"${DIR_ENV} points elsewhere) and none on PATH"
    )


def install(*, wheel: str | os.PathLike, dest: str | os.PathLike | None = None, pip: list[str] | None = None) -> Path:
    """Unzip the server parts of the ``nvidia-pytriton`` wheel into ``dest``; returns ``dest``.

    Idempotent (an installed ``dest`` is left as it is) and atomic (assembled beside ``dest``,
    renamed into place). The stub for this interpreter's Python version goes beside
    ``libtriton_python.so``; ``pip`` installs numpy < 2 into ``dest/stub-site`` for it.

    Args:
        wheel: the downloaded wheel (``pip download nvidia-pytriton==0.7.0 --no-deps``).
        dest: the tools directory (default :func:`tools_dir`).
        pip: the pip command line (default: this interpreter's ``-m pip``).
    """
    dest = Path(dest) if dest is not None else tools_dir()
    if _from_wheel_layout(dest) is not None:
        return dest
    wheel = Path(wheel)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = f"pytriton/tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"
    with atomic_dir(dest) as stage:
        try:
            with zipfile.ZipFile(wheel) as archive:
                names = archive.namelist()
                if stub not in names:
                    raise ToolkitError(f"{wheel}: no python-backend stub for Python {version} in this wheel")
                wanted = [n for n in names if n.startswith(_PARTS) and ("python_backend_stubs/" not in n or n == stub)]
                archive.extractall(stage, wanted)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ToolkitError(f"{wheel}: not a readable nvidia-pytriton wheel ({exc})") from exc
        python_backend = stage / "pytriton" / "tritonserver" / "backends" / "python"
        shutil.copyfile(stage / stub, python_backend / "triton_python_backend_stub")
        for exe in (python_backend / "triton_python_backend_stub", stage / "pytriton/tritonserver/bin/tritonserver"):
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        command = (pip or [sys.executable, "-m", "pip"]) + [
            "install",
            "-q",
            "--target",
            str(stage / "stub-site"),
            "numpy<2",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ToolkitError(f"installing numpy<2 for the Triton python stub failed: {done.stderr.strip()[-300:]}")
        (stage / MARKER).write_text(f"{wheel.name}\npython {version}\n")
    return dest


def stub_site_dirs(found: TritonInstall) -> list[str]:
    """Site directories the stub needs, first wins: its numpy < 2, then this interpreter's packages."""
    dirs = [str(found.stub_site)] if found.stub_site else []
    return dirs + [sysconfig.get_paths()["purelib"]]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TritonServer:
    """``tritonserver`` over ``repository`` on free loopback ports; a context manager.

    ``ready_timeout``: seconds to wait for ``/v2/health/ready`` before giving up (the server is
    stopped and a :class:`ToolkitError` names the last line of its log).
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        found: TritonInstall | None = None,
        site_dirs: list[str] | None = None,
        ready_timeout: float = 60.0,
        log_path: str | os.PathLike | None = None,
    ):
        if found is None:
            found, why = find_tritonserver()
            if found is None:
                raise ToolkitError(why)
        self.found = found
        self.repository = Path(repository)
        self.site_dirs = site_dirs if site_dirs is not None else stub_site_dirs(found)
        self.ready_timeout = ready_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="tritonserver.", suffix=".log")[1])
        self.http_port = self.grpc_port = 0
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(self.found.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.found.backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
        ]

    def log_tail(self, lines: int = 1) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [t for t in text if t.startswith("E") or "error" in t.lower()]
        return " | ".join((errors or text)[-lines:])

    def start(self) -> TritonServer:
        started = time.perf_counter()
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.found.environment(self.site_dirs),
            )
        deadline = started + self.ready_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise ToolkitError(f"tritonserver exited while starting ({self.log_tail()}); log: {self.log_path}")
            if self.ready():
                self.startup_s = time.perf_counter() - started
                return self
            time.sleep(0.1)
        self.stop()
        raise ToolkitError(
            f"tritonserver not ready after {self.ready_timeout:.0f} s ({self.log_tail()}); log: {self.log_path}"
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1.0) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deeplab_trt.benchmarks.tritonserver", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    inst = sub.add_parser("install", help="unzip the server from the nvidia-pytriton wheel into the tools directory")
    inst.add_argument("--wheel", required=True, type=Path)
    inst.add_argument("--dest", type=Path, help=f"tools directory (default ${DIR_ENV} or {DEFAULT_DIR})")
    inst.add_argument("--pip", help="pip command line for the stub's numpy<2 (default: this Python's -m pip)")
    sub.add_parser("where", help="print the tritonserver binary found, or why there is none")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(install(wheel=args.wheel, dest=args.dest, pip=args.pip.split() if args.pip else None))
        else:
            found, why = find_tritonserver()
            print(found.binary if found else why)
            return 0 if found else 1
    except ToolkitError as exc:
        print(f"tritonserver: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
