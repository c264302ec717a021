"""Build of magnet's C extension `magnet._C`.

Environment switches:
  MAGNET_PORTABLE=1        no -march=native (a wheel that runs on any x86-64 / aarch64 CPU)
  MAGNET_SYSTEM_OPENBLAS=1 link the system's libopenblas instead of the scipy-openblas32 wheel
  MAGNET_SANITIZE=1        AddressSanitizer + UndefinedBehaviorSanitizer build
  MAGNET_DEBUG=1           -O0 -g
"""

import glob
import os
import subprocess

import numpy
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _openblas():
    """Include dirs, library dirs, libraries, runtime dirs and macros for OpenBLAS."""
    if _flag("MAGNET_SYSTEM_OPENBLAS"):
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags-only-I", "openblas"], text=True)
            include = [f[2:] for f in cflags.split()]
        except (OSError, subprocess.CalledProcessError):
            include = ["/usr/include/openblas", "/usr/include/x86_64-linux-gnu/openblas-pthread"]
        return include, [], ["openblas"], [], [("MG_SYSTEM_OPENBLAS", "1")]
    import scipy_openblas32

    lib_dir = scipy_openblas32.get_lib_dir()
    # The runtime path helps non-isolated builds; magnet/__init__.py also preloads the library
    # through the scipy_openblas32 package, which is what isolated (pip) builds rely on.
    return ([scipy_openblas32.get_include_dir()], [lib_dir], [scipy_openblas32.get_library()],
            [lib_dir], [])


def _extension() -> Extension:
    sources = sorted(
        s for s in glob.glob("csrc/**/*.c", recursive=True) if "/backend/cuda/" not in s
    )
    include, lib_dirs, libs, rpath, macros = _openblas()
    compile_args = ["-std=c11", "-fopenmp", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
    link_args = ["-fopenmp"]
    if _flag("MAGNET_DEBUG"):
        compile_args += ["-O0", "-g"]
    else:
        compile_args += ["-O3"]
    if not _flag("MAGNET_PORTABLE"):
        compile_args += ["-march=native"]
    if _flag("MAGNET_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        compile_args += san + ["-g"]
        link_args += san
    return Extension(
        "magnet._C",
        sources=sources,
        include_dirs=[numpy.get_include(), *include],
        library_dirs=lib_dirs,
        libraries=libs,
        runtime_library_dirs=rpath,
        define_macros=[("_DEFAULT_SOURCE", "1"), *macros],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


setup(ext_modules=[_extension()])
