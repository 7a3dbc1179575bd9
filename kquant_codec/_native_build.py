"""Build the ahead-of-time kernels (``_native``'s "aot" backend) with numba's ahead-of-time compiler.

    python kquant_codec/_native_build.py [--output-dir DIR]     # DIR/_aot_label_coder<ext suffix>, ...

``setup.py`` runs this at install (``pip install``), in pip's build environment, which holds numba and
numpy but not the package's other dependencies: so the kernel modules are loaded without running the
package's ``__init__`` (they import only numpy, numba and each other). Needs a C compiler (numba links a small
C runtime into each module); without one the build fails and the package uses numba's JIT instead.

One extension module per kernel module, each compiled in a process of its own (in parallel): compiled one
after another in one process, numba's type inference of codec 4's kernel failed after codec 3's had been
compiled (numba 0.68), while each compiles alone. Every kernel with a signature is exported under its own
name, plus ``fingerprint()``, the hash of the source it was built from. The exported functions release the
GIL, as the JIT kernels (``nogil=True``) do: the stripe coders and the rgb kernels run on several threads.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = "kquant_codec"
# The LLVM CPU model to build for. Default: the architecture's generic model, so that a built wheel runs on any
# CPU of the architecture (it stays tied to its Python version and platform, as any wheel). "host" (this
# machine's model) measured no faster: 12 MP decode, rgb and global encodes within 3% (x86-64).
CPU_ENV = "KQUANT_AOT_CPU"


def _load_kernel_modules() -> types.ModuleType:
    """Import the kernel modules from this source tree, with an empty stand-in for the package."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(__file__).parent)]
        sys.modules[PACKAGE] = package
    native = importlib.import_module(f"{PACKAGE}._native")
    for name in native.KERNEL_MODULES:
        importlib.import_module(f"{PACKAGE}.{name}")
    return native


def _fingerprint_function(value: int):
    def fingerprint():
        return value

    return fingerprint


def build_one(kernel_module: str, output_dir: str | os.PathLike, cpu: str | None = None) -> Path:
    """Compile the exported kernels of one kernel module into ``output_dir``; return the module's path."""
    native = _load_kernel_modules()
    import numba.pycc.compiler
    from numba.core.compiler import Flags
    from numba.core.cpu import CPUTargetOptions
    from numba.pycc import CC

    class _GilFreeFlags(Flags):
        # The flags numba.njit(nogil=True, boundscheck=False) compiles with; numba's ahead-of-time
        # compiler starts from bare defaults, whose wrappers keep the GIL.
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            CPUTargetOptions.parse_as_flags(self, {"nopython": True, "nogil": True, "boundscheck": False})

    numba.pycc.compiler.Flags = _GilFreeFlags
    native._make_dispatchers()  # the modules' names bound to numba functions, which the compiler types
    cc = CC(native.extension_name(kernel_module))
    cc.output_dir = str(output_dir)
    cc.target_cpu = cpu or os.environ.get(CPU_ENV) or ""
    for k in native.registry():
        if k.signature is not None and k.short_module == kernel_module:
            cc.export(k.__name__, k.signature)(k.py_func)
    cc.export("fingerprint", "int64()")(_fingerprint_function(native.fingerprint()))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    cc.compile()
    return Path(output_dir) / cc.output_file


def build(output_dir: str | os.PathLike, cpu: str | None = None) -> None:
    """Build every kernel module's extension into ``output_dir``, each in a child process, in parallel.
    Raises RuntimeError (with the children's output) when one fails."""
    modules = _load_kernel_modules().KERNEL_MODULES
    jobs = max(1, min(len(modules), os.cpu_count() or 1))
    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(lambda name: _build_in_child(name, output_dir, cpu), modules))
    failed = [(name, run) for name, run in zip(modules, runs, strict=True) if run.returncode]
    if failed:
        detail = "\n".join(f"--- {name} ---\n{run.stdout}{run.stderr}" for name, run in failed)
        raise RuntimeError(f"building the ahead-of-time kernels failed:\n{detail}")


def _build_in_child(name: str, output_dir: str | os.PathLike, cpu: str | None) -> subprocess.CompletedProcess:
    command = [sys.executable, __file__, "--module", name, "--output-dir", str(output_dir)]
    if cpu:
        command += ["--cpu", cpu]
    return subprocess.run(command, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(Path(__file__).parent), help="default: the package itself")
    parser.add_argument("--cpu", default=None, help=f"LLVM CPU name (default: ${CPU_ENV}, else the generic model)")
    parser.add_argument("--module", default=None, help="build this kernel module only, in this process")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.module:
        path = build_one(args.module, args.output_dir, args.cpu)
        print(f"built {path.name} in {time.perf_counter() - start:.1f} s")
    else:
        build(args.output_dir, args.cpu)
        print(f"kquant_codec: built the ahead-of-time kernels in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # run as a script: the package's folder must not shadow top-level modules
    sys.exit(main())
