"""Build of magnet's C extension `magnet._C`.

Environment switches:
  MAGNET_PORTABLE=1        no -march=native (a wheel that runs on any x86-64 / aarch64 CPU)
  MAGNET_MARCH=NAME        -march=NAME instead of -march=native: a build for another CPU, or
                           this CPU's code paths for an older one (tests/isa_builds.sh builds
                           haswell, AVX2 without AVX-512, to test the AVX2 kernels here); it
                           takes precedence over MAGNET_PORTABLE
  MAGNET_SYSTEM_OPENBLAS=1 link the system's libopenblas instead of the scipy-openblas32 wheel
  MAGNET_SANITIZE=1        AddressSanitizer + UndefinedBehaviorSanitizer build
  MAGNET_DEBUG=1           -O0 -g, and magnet._C._fail_allocation_after for the allocation-
                           failure tests (tests/test_allocation_failures.py)
  MAGNET_CUDA=auto|0|1|emulate
                           the CUDA backend (csrc/backend/cuda/*.cu): auto (default) builds it iff
                           nvcc is found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin); 0 never; 1
                           requires it; emulate compiles the .cu files as C++ with the host
                           compiler and the CPU emulator (csrc/backend/cuda/emulate), for tests
  MAGNET_CUDA_ARCH         nvcc target flags (default: sm_80 and sm_90 code, compute_90 PTX)
"""

import glob
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CUDA_DIR = "csrc/backend/cuda"
DEFAULT_CUDA_ARCH = (
    "-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 "
    "-gencode arch=compute_90,code=compute_90"
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _openblas():
    """Include dirs, library dirs, libraries, runtime dirs and macros for OpenBLAS."""
    if _flag("MAGNET_SYSTEM_OPENBLAS"):
        try:
            cflags = subprocess.check_output(
                ["pkg-config", "--cflags-only-I", "openblas"], text=True
            )
            include = [f[2:] for f in cflags.split()]
        except (OSError, subprocess.CalledProcessError):
            include = ["/usr/include/openblas", "/usr/include/x86_64-linux-gnu/openblas-pthread"]
        return include, [], ["openblas"], [], [("MG_SYSTEM_OPENBLAS", "1")]
    import scipy_openblas32

    lib_dir = scipy_openblas32.get_lib_dir()
    # magnet/__init__.py preloads the library through the scipy_openblas32 package, so no
    # runtime path is needed; the relative one finds it beside an installed magnet all the same.
    # Never the build's own lib_dir: pip builds in a temporary environment, and a runtime path
    # into a deleted /tmp folder would load whatever someone else puts there later.
    return ([scipy_openblas32.get_include_dir()], [lib_dir], [scipy_openblas32.get_library()],
            ["$ORIGIN/../scipy_openblas32/lib"], [])


def _find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return None


def _cuda_lib_dir(nvcc: str) -> str:
    """The folder of libcudart_static.a in nvcc's toolkit (nvcc may be a wrapper script: its dry
    run names the toolkit it belongs to)."""
    roots = []
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        for line in (dry.stdout + dry.stderr).splitlines():
            if line.startswith("#$ TOP="):
                roots.append(line[len("#$ TOP="):].strip())
    except (OSError, subprocess.SubprocessError):
        pass
    roots.append(os.path.join(os.path.dirname(nvcc), ".."))
    for root in roots:
        for sub in (f"targets/{os.uname().machine}-linux/lib", "lib64", "lib"):
            if os.path.isfile(os.path.join(root, sub, "libcudart_static.a")):
                return os.path.normpath(os.path.join(root, sub))
    raise SystemExit(f"MAGNET_CUDA: libcudart_static.a not found in the CUDA toolkit of {nvcc}")


def _cuda_config() -> dict:
    """How the CUDA backend is built: {"mode": "none" | "cuda" | "emulate", ...}."""
    mode = os.environ.get("MAGNET_CUDA", "auto").strip().lower() or "auto"
    if mode in ("false", "no", "off"):
        mode = "0"
    if mode in ("true", "yes", "on", "require", "required"):
        mode = "1"
    if mode not in ("auto", "0", "1", "emulate"):
        raise SystemExit(f"MAGNET_CUDA must be auto, 0, 1 or emulate, not {mode!r}")
    if mode == "0":
        return {"mode": "none"}
    if mode == "emulate":
        return {"mode": "emulate"}
    nvcc = _find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise SystemExit(
                "MAGNET_CUDA=1 but nvcc was not found (looked on PATH, in $CUDA_HOME/bin, "
                "$CUDA_PATH/bin and /usr/local/cuda/bin): install the CUDA toolkit or set "
                "CUDA_HOME"
            )
        return {"mode": "none"}
    arch = os.environ.get("MAGNET_CUDA_ARCH", "").split() or DEFAULT_CUDA_ARCH.split()
    try:
        lib_dir = _cuda_lib_dir(nvcc)
    except SystemExit as e:
        if mode == "1":
            raise
        # auto: an incomplete toolkit is no reason to fail a CPU install
        print(f"warning: {e}; building without the CUDA backend (MAGNET_CUDA=1 requires it)",
              flush=True)
        return {"mode": "none"}
    return {"mode": "cuda", "nvcc": nvcc, "lib_dir": lib_dir, "arch": arch}


CUDA = _cuda_config()


class BuildExt(build_ext):
    """Compiles the CUDA backend (nvcc, or the host C++ compiler in emulation) into objects
    that are linked into the extension with the C sources."""

    def build_extensions(self):
        # setuptools rebuilds only when a source is newer than the extension, so a build with
        # other switches (MAGNET_PORTABLE, MAGNET_CUDA, ...) would keep the old binary: the
        # effective configuration is a dependency, rewritten when it changes
        for ext in self.extensions:
            ext.depends = [*ext.depends, self._configuration_stamp(ext)]
        if CUDA["mode"] != "none":
            objects = self._build_cuda()
            for ext in self.extensions:
                ext.extra_objects = [*ext.extra_objects, *objects]
                # setuptools relinks only when a source or a dependency is newer than the
                # extension: the freshly compiled CUDA objects must count
                ext.depends = [*ext.depends, *objects]
        super().build_extensions()

    def _build_cuda(self) -> list[str]:
        sources = sorted(glob.glob(f"{CUDA_DIR}/*.cu"))
        jobs = [(src, self._cu_command(src)) for src in sources]
        if CUDA["mode"] == "emulate":
            for src in sorted(glob.glob(f"{CUDA_DIR}/emulate/*.cc")):
                jobs.append((src, self._cc_command(src)))
        objects = [self._object(src) for src, _ in jobs]
        for obj in objects:
            os.makedirs(os.path.dirname(obj), exist_ok=True)

        def run(job):
            src, cmd = job
            print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            return src, proc

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for src, proc in pool.map(run, jobs):
                if proc.stdout or proc.stderr:
                    print(proc.stdout + proc.stderr, flush=True)
                if proc.returncode != 0:
                    raise SystemExit(f"compiling {src} failed (MAGNET_CUDA={CUDA['mode']}); "
                                     "MAGNET_CUDA=0 builds without the CUDA backend")
        return objects

    def _configuration_stamp(self, ext: Extension) -> str:
        """A file holding the build's configuration, touched only when it changes."""
        config = repr((ext.extra_compile_args, ext.extra_link_args, ext.define_macros,
                       ext.libraries, ext.library_dirs, ext.include_dirs,
                       ext.runtime_library_dirs, CUDA, self._host_flags()))
        path = os.path.join(self.build_temp, "magnet-build-configuration")
        try:
            with open(path, encoding="utf-8") as f:
                unchanged = f.read() == config
        except OSError:
            unchanged = False
        if not unchanged:
            os.makedirs(self.build_temp, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(config)
        return path

    def _object(self, src: str) -> str:
        return os.path.join(self.build_temp, "cuda", os.path.splitext(src)[0] + ".o")

    def _defines(self) -> list[str]:
        defines = ["-D_DEFAULT_SOURCE=1", "-DMG_HAVE_CUDA=1", "-Icsrc"]
        return defines + (["-DMG_CUDA_EMULATE=1"] if CUDA["mode"] == "emulate" else [])

    def _host_flags(self) -> list[str]:
        flags = ["-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]
        if _flag("MAGNET_DEBUG"):
            return flags + ["-O0", "-g"]
        return flags + ["-O3" if CUDA["mode"] == "cuda" else "-O2"]

    def _cu_command(self, src: str) -> list[str]:
        if CUDA["mode"] == "emulate":
            return ["g++", "-x", "c++", "-std=c++17", "-Werror", *self._host_flags(),
                    *self._defines(), "-c", src, "-o", self._object(src)]
        return [CUDA["nvcc"], "-std=c++17", "-O3", *CUDA["arch"], "-Werror", "all-warnings",
                "-Xcompiler", ",".join(self._host_flags()), *self._defines(), "-c", src, "-o",
                self._object(src)]

    def _cc_command(self, src: str) -> list[str]:
        return ["g++", "-std=c++17", "-Werror", *self._host_flags(), *self._defines(), "-c", src,
                "-o", self._object(src)]


def _extension() -> Extension:
    sources = sorted(
        s for s in glob.glob("csrc/**/*.c", recursive=True) if "/backend/cuda/" not in s
    )
    if CUDA["mode"] != "none":
        sources = [s for s in sources if not s.endswith("/cuda_absent.c")]
    include, lib_dirs, libs, rpath, macros = _openblas()
    # -fno-wrapv undoes the -fwrapv in Python's own CFLAGS: with wrapping signed ints GCC cannot
    # count the trips of `for (int j = lo; j <= hi; j++)`, and half of the attention loops
    # stayed scalar. Our C does not rely on signed overflow (tests/sanitize.sh checks it).
    compile_args = ["-std=c11", "-fopenmp", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
                    "-fno-wrapv"]
    link_args = ["-fopenmp"]
    if _flag("MAGNET_DEBUG"):
        # MG_FAULT_INJECTION: magnet._C._fail_allocation_after, for the allocation-failure tests
        compile_args += ["-O0", "-g", "-DMG_FAULT_INJECTION=1"]
    else:
        compile_args += ["-O3"]
    march = os.environ.get("MAGNET_MARCH", "").strip()
    if march:
        compile_args += [f"-march={march}"]
    elif not _flag("MAGNET_PORTABLE"):
        compile_args += ["-march=native"]
    if _flag("MAGNET_SANITIZE"):
        san = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ]
        compile_args += san + ["-g"]
        link_args += san
    if CUDA["mode"] != "none":
        macros = [*macros, ("MG_HAVE_CUDA", "1")]
        # the backend is C++: its runtime support comes from libstdc++
        libs = [*libs, "stdc++"]
    if CUDA["mode"] == "emulate":
        macros = [*macros, ("MG_CUDA_EMULATE", "1")]
        libs = [*libs, "pthread"]
    if CUDA["mode"] == "cuda":
        # the static CUDA runtime: the wheel needs only the driver. Its symbols stay inside the
        # extension, so another CUDA runtime in the process (a framework's) cannot clash.
        lib_dirs = [*lib_dirs, CUDA["lib_dir"]]
        libs = [*libs, "cudart_static", "dl", "rt", "pthread"]
        link_args += ["-Wl,--exclude-libs,libcudart_static.a"]
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


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExt})
