"""Builds ws_convert's compiled core with CMake and Ninja.

The extensions take raw buffer addresses from Python and never link libtorch,
so they build in pip's isolated environment and work with any installed torch.
Environment: WS_CONVERT_CUDA=auto|on|off (default auto: build the CUDA module
when nvcc is found), WS_CONVERT_CUDA_ARCHS (default "80;90").
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def want_cuda() -> bool:
    """Resolve WS_CONVERT_CUDA here, so setuptools knows which modules to expect."""
    mode = os.environ.get("WS_CONVERT_CUDA", "auto").lower()
    if mode not in ("auto", "on", "off"):
        sys.exit(f"WS_CONVERT_CUDA must be auto, on or off, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    return bool(os.environ.get("CUDACXX") or shutil.which("nvcc")
                or Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc").exists())


class CMakeBuild(build_ext):
    def build_extensions(self) -> None:
        out_dir = Path(self.get_ext_fullpath("ws_convert._C")).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        import pybind11

        configure = [
            "cmake", str(ROOT), "-G", "Ninja",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DWS_CONVERT_CUDA={'ON' if want_cuda() else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if "WS_CONVERT_CUDA_ARCHS" in os.environ:
            configure.append(f"-DWS_CONVERT_CUDA_ARCHS={os.environ['WS_CONVERT_CUDA_ARCHS']}")
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", str(os.cpu_count() or 1)], cwd=build_dir, check=True)


setup(
    ext_modules=[Extension("ws_convert._C", sources=[])]
    + ([Extension("ws_convert._C_cuda", sources=[])] if want_cuda() else []),
    cmdclass={"build_ext": CMakeBuild},
)
