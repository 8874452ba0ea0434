"""Installs the `iqa_vlm` package and builds its extension `iqa_vlm._C` (the fused level cross-entropy op,
iqa_vlm/level_ce.py). Torch must be installed first; the extension is compiled against the torch it finds.

    pip install --no-build-isolation -e .            # the package, importable from any folder, with the op built
    python setup.py build_ext --inplace              # the op alone, into iqa_vlm/ (a plain clone runs without pip install)
    USE_CUDA=0 python setup.py build_ext --inplace   # CPU only, even on a CUDA machine
    IQA_CPU_VARIANTS=0 python setup.py build_ext --inplace   # the portable CPU kernel alone (no AVX2/AVX-512 files)

--no-build-isolation: without it pip would build in a fresh environment with a torch of its own choosing (a
multi-GB download), and an extension compiled against another torch does not load.

It is built as a CUDAExtension (with -DWITH_CUDA and csrc/level_ce_cuda.cu) when torch is a CUDA build
(torch.version.cuda is set) AND a CUDA toolkit is found (CUDA_HOME / nvcc), unless USE_CUDA=0;
otherwise as a CppExtension. GPU architectures: TORCH_CUDA_ARCH_LIST if set, else "8.0;8.6;9.0"
(A100, A6000/RTX 30xx, H100). On an A6000 box (sm_86) build just that one, which is faster:

    TORCH_CUDA_ARCH_LIST=8.6 python setup.py build_ext --inplace

The CPU kernels are compiled three times (portable, AVX2, AVX-512 on x86-64) and the best one the
CPU supports is chosen at run time, so a build runs on any x86-64 machine. Ninja is used when
installed (pip install ninja).
"""
import os
import platform
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

csrc = lambda name: os.path.join("csrc", name)  # setuptools wants paths relative to setup.py

import torch  # noqa: E402

want_cuda = os.environ.get("USE_CUDA", "1") != "0"
with_cuda = want_cuda and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None

sources = [csrc("level_ce.cpp"), csrc("level_ce_cpu_default.cpp")]
macros = []
# IQA_CPU_VARIANTS=0: the portable CPU kernel only (for a compiler that rejects the per-ISA files)
if platform.machine().lower() in ("x86_64", "amd64") and os.environ.get("IQA_CPU_VARIANTS", "1") != "0":
    sources += [csrc("level_ce_cpu_avx2.cpp"), csrc("level_ce_cpu_avx512.cpp")]
    macros += [("IQA_HAVE_AVX2", None), ("IQA_HAVE_AVX512", None)]

# OpenMP as torch's own CPU build uses it (at::parallel_for is header-inlined with `omp parallel`).
omp = [] if sys.platform == "darwin" else ["-fopenmp"]
cxx_flags = ["-O3", "-std=c++20", "-Wno-psabi", "-Wno-unknown-pragmas"] + omp
extra = dict(extra_compile_args={"cxx": cxx_flags}, extra_link_args=omp)

if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;9.0")
    sources.append(csrc("level_ce_cuda.cu"))  # not level_ce.cu: its object would collide with level_ce.cpp's level_ce.o
    macros.append(("WITH_CUDA", None))
    extra["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo"]  # torch adds -std and the arch flags
    ext = CUDAExtension("iqa_vlm._C", sources, define_macros=macros, **extra)
else:
    ext = CppExtension("iqa_vlm._C", sources, define_macros=macros, **extra)

print(f"[setup.py] building iqa_vlm._C with {'CUDA (' + os.environ['TORCH_CUDA_ARCH_LIST'] + ')' if with_cuda else 'CPU only'}"
      f"{'' if want_cuda else ' (USE_CUDA=0)'}", flush=True)

setup(
    packages=find_packages(include=["iqa_vlm", "iqa_vlm.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
