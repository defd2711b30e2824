"""Build of anoise.

The C++ (and, where torch has CUDA, CUDA) extensions are built ahead of time only when torch
is importable while building, i.e. with ``pip install --no-build-isolation -e .``.  A plain
``pip install .`` (build isolation, no torch) installs the Python package alone; the extensions
are then built just in time, with ninja, at first use (see ``anoise/_build.py``).

Environment variables:
    ANOISE_BUILD_CPU=0/1    skip / require the C++ CPU extension (default: build if possible)
    ANOISE_BUILD_CUDA=0/1   skip / require the CUDA extension (default: build where torch has
                            CUDA and CUDA_HOME is found)
    ANOISE_CPU_NATIVE=1     compile the CPU kernels with -march=native (not portable)
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _flag(name):
    """True / False when the variable is set to 1 / 0, None when unset."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _build_config():
    spec = importlib.util.spec_from_file_location("anoise_build", HERE / "anoise" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    want_cpu, want_cuda = _flag("ANOISE_BUILD_CPU"), _flag("ANOISE_BUILD_CUDA")
    if want_cpu is False and want_cuda is False:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if want_cpu or want_cuda:
            raise SystemExit(
                "ANOISE_BUILD_CPU/ANOISE_BUILD_CUDA=1 need torch at build time: "
                "pip install --no-build-isolation ."
            ) from None
        return [], {}
    cfg = _build_config()
    exts = []
    if want_cpu is not False:
        exts.append(
            cpp_extension.CppExtension(
                name="anoise._C_cpu",
                sources=cfg.CPU_SOURCES,
                include_dirs=[str(HERE / "csrc" / "cpu")],
                extra_compile_args=cfg.cpu_cflags(),
                extra_link_args=cfg.CPU_LDFLAGS,
            )
        )
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda and not has_cuda:
        raise SystemExit(
            "ANOISE_BUILD_CUDA=1 but torch has no CUDA or CUDA_HOME is not found "
            f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})"
        )
    if has_cuda and want_cuda is not False:
        exts.append(
            cpp_extension.CUDAExtension(
                name="anoise._C_cuda",
                sources=cfg.CUDA_SOURCES,
                include_dirs=[str(HERE / "csrc" / "cuda")],
                extra_compile_args={"cxx": cfg.CUDA_CFLAGS, "nvcc": cfg.NVCC_FLAGS},
            )
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return exts, cmdclass


ext_modules, cmdclass = _extensions()

setup(
    name="anoise",
    version="0.1.0",
    description="Adaptive noise injection for stochastic student networks, with fused kernels",
    python_requires=">=3.10",
    # csrc/ ships inside the package so that an install without prebuilt extensions can still
    # build them just in time.
    packages=["anoise", "anoise.demo", "anoise.kernels", "anoise.csrc"],
    package_dir={"anoise": "anoise", "anoise.kernels": "kernels", "anoise.csrc": "csrc"},
    package_data={
        "anoise.csrc": [
            "*.sh",
            "cpu/*.h",
            "cpu/*.cpp",
            "cuda/*.h",
            "cuda/*.cuh",
            "cuda/*.cu",
            "cuda/*.cpp",
        ]
    },
    install_requires=["torch>=2.5", "numpy"],
    extras_require={
        "test": ["pytest", "scipy", "hypothesis", "pytest-benchmark", "ruff", "mlxtend",
                 "scikit-learn", "matplotlib", "tqdm"],
        "demo": ["mlxtend", "scikit-learn", "matplotlib", "tqdm"],
        "triton": ["triton>=3.4"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
