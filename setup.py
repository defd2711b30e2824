"""Build of anoise.

The C++ (and, where torch has CUDA, CUDA) extensions are built ahead of time only when torch
is importable while building, i.e. with ``pip install --no-build-isolation -e .``.  A plain
``pip install .`` (build isolation, no torch) installs the Python package alone; the extensions
are then built just in time, with ninja, at first use (see ``anoise/_build.py``).

An extension that cannot be built (no compiler, a compile error) is left out with one line
saying why and how to get it: the install goes on, and anoise runs on its other backends.
Each successful build is kept under ``build/anoise-ext/`` keyed by its inputs (sources, flags,
torch, Python, compiler), so installing again, e.g. with another extra, copies it instead of
compiling again.

Environment variables:
    ANOISE_BUILD_CPU=0/1    skip / require the C++ CPU extension (default: build if possible)
    ANOISE_BUILD_CUDA=0/1   skip / require the CUDA extension (default: build where torch has
                            CUDA and CUDA_HOME is found)
    ANOISE_CPU_NATIVE=1     compile the CPU kernels with -march=native (not portable)
"""

import importlib.util
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
CACHE = HERE / "build" / "anoise-ext"


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


def _import_torch():
    # numpy is installed after the build (it is a dependency, not a build requirement); torch
    # would warn that it is missing, which says nothing about the build.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        import torch
        from torch.utils import cpp_extension
    return torch, cpp_extension


def _build_ext_class(torch, cpp_extension, cfg, required):
    """torch's ninja build_ext, made optional per extension and cached by build key."""

    class BuildExt(cpp_extension.BuildExtension):
        def run(self):
            self.anoise_keys = {}
            self._plan()
            super().run()

        def _plan(self):
            """Drop the extensions that cannot be built here, before torch checks compilers."""
            self.compiler_cmds = _distutils_compiler(self)
            keep = []
            for ext in self.extensions:
                kind = _kind(ext)
                key = cfg.build_key(kind, torch.__version__,
                                    *(cfg.tool_identity(c) for c in self._tools(kind)))
                self.anoise_keys[ext.name] = key
                problem = None
                if not self._cached(ext).exists():
                    problem = cfg.compiler_problem(cpp_extension.get_cxx_compiler(),
                                                   self.compiler_cmds["linker"])
                    if problem is None and kind == "cuda" and shutil.which(_nvcc()) is None:
                        problem = f"nvcc not found ({_nvcc()})"
                if problem is None:
                    keep.append(ext)
                else:
                    self._skip(ext, problem)
            self.extensions[:] = keep
            self.distribution.ext_modules[:] = keep

        def _tools(self, kind):
            cmds = self.compiler_cmds
            tools = [cpp_extension.get_cxx_compiler(), cmds["cc"], cmds["linker"][0]]
            return [*tools, _nvcc()] if kind == "cuda" else tools

        def _cached(self, ext):
            name = os.path.basename(self.get_ext_filename(self.get_ext_fullname(ext.name)))
            return CACHE / f"{ext.name}-{self.anoise_keys[ext.name]}" / name

        def build_extensions(self):
            # torch checks the compiler and the CUDA version once for all extensions: not
            # needed (and it warns) when every extension comes from the cache.
            if all(self._cached(ext).exists() for ext in self.extensions):
                for ext in self.extensions:
                    self.build_extension(ext)
            else:
                super().build_extensions()

        def build_extension(self, ext):
            kind, cached = _kind(ext), self._cached(ext)
            target = Path(self.get_ext_fullpath(ext.name))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cached.exists():
                cfg.say(f"compiling {cfg.LABEL[kind]} ({ext.name}), {cfg.DURATION[kind]}; "
                        f"once for these sources, kept in {cached.parent}", terminal=True)
                t0 = time.monotonic()
                log = CACHE / f"{cached.parent.name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with _output_to(log):
                        super().build_extension(ext)
                except Exception as exc:
                    text = log.read_text(errors="replace") + f"\n{type(exc).__name__}: {exc}\n"
                    log.write_text(text)
                    sys.stdout.write(text)  # pip shows it with -v
                    self._skip(ext, f"{cfg.short_reason(text)} (full log: {log})")
                    return
                sys.stdout.write(log.read_text(errors="replace"))
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(target, cached)
                elapsed = time.monotonic() - t0
                cfg.say(f"built {cfg.LABEL[kind]} in {elapsed:.0f} s", terminal=True)
            else:
                cfg.say(f"{cfg.LABEL[kind]}: reusing the build in {cached.parent}")
                shutil.copy(cached, target)
            cfg.stamp_path(target).write_text(cfg.sources_hash(kind) + "\n")

        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace, regular = self._get_inplace_equivalent(build_py, ext)
                if os.path.exists(cfg.stamp_path(regular)):
                    shutil.copyfile(cfg.stamp_path(regular), cfg.stamp_path(inplace))

        def _skip(self, ext, reason):
            kind = _kind(ext)
            if required[kind]:
                raise SystemExit(f"ANOISE_BUILD_{kind.upper()}=1 but {ext.name} cannot be "
                                 f"built: {reason}")
            ext.optional = True  # setuptools then copies nothing for it
            message = (f"anoise: installing without {cfg.LABEL[kind]}: {reason}. anoise works "
                       f"without it (slower). To get it: {cfg.REMEDY[kind]}.")
            print(message, file=sys.stderr)
            # Recent pips show a build's warnings (and hide its output unless it fails).
            warnings.warn_explicit(message.removeprefix("anoise: "), UserWarning, "anoise", 0)

    return BuildExt


def _kind(ext):
    return ext.name.rsplit("_", 1)[-1]  # anoise._C_cpu -> cpu


def _nvcc():
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    return os.path.join(home, "bin", "nvcc") if home else "nvcc"


def _distutils_compiler(cmd):
    """The compile and link commands setuptools will use (CC, CXX and LDSHARED applied)."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler(compiler=cmd.compiler, force=cmd.force)
    customize_compiler(compiler)
    linker = list(getattr(compiler, "linker_so", None) or ["c++", "-shared"])
    return {"linker": linker, "cc": " ".join(compiler.compiler_so[:1])}


class _output_to:
    """Send this process's stdout and stderr (and its children's: ninja, the compiler) to a
    file, at the file-descriptor level."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.file = open(self.path, "w")
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.close()
        return False


def _extensions():
    want_cpu, want_cuda = _flag("ANOISE_BUILD_CPU"), _flag("ANOISE_BUILD_CUDA")
    if want_cpu is False and want_cuda is False:
        return [], {}
    try:
        torch, cpp_extension = _import_torch()
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
    required = {"cpu": bool(want_cpu), "cuda": bool(want_cuda)}
    build_ext = _build_ext_class(torch, cpp_extension, cfg, required)
    return exts, {"build_ext": build_ext.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
# setuptools' note on editable installs of a package_dir mapping (kernels/ -> anoise.kernels)
# is about shadowing by same-named folders, which this layout does not have.
warnings.filterwarnings("ignore", message="Editable installation")

# The project's metadata and supported versions are in pyproject.toml.
setup(
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
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
