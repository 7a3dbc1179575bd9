"""Install-time build of the ahead-of-time kernels; everything else about the package is in pyproject.toml.

``pip install`` compiles the numba kernels of ``kquant_codec`` into extension modules
(``kquant_codec/_native_build.py``), so that no first call in a user's process waits for a compiler. The step
is optional: when it fails (no C compiler, say), the install goes on with a warning and the package compiles
its kernels with numba on first use instead (``kquant_codec/_native.py``). ``KQUANT_SKIP_AOT=1`` skips it.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
# One extension per kernel module (kquant_codec._native.KERNEL_MODULES; a test checks the two agree).
EXTENSIONS = ["kquant_codec._aot_label_coder", "kquant_codec._aot_predictive_coder", "kquant_codec._aot_rgb_kernels"]


class BuildKernels(build_ext):
    """Builds the extensions with numba's ahead-of-time compiler instead of from C sources."""

    def run(self) -> None:
        targets = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        for target in targets:
            target.unlink(missing_ok=True)  # a stale build must not outlive a failed one
        if os.environ.get("KQUANT_SKIP_AOT", "").strip() not in ("", "0"):
            print("kquant_codec: KQUANT_SKIP_AOT is set; kernels will be compiled on first use", file=sys.stderr)
            return
        script = HERE / "kquant_codec" / "_native_build.py"
        run = subprocess.run([sys.executable, str(script), "--output-dir", str(targets[0].parent)])
        if run.returncode or not all(t.exists() for t in targets):
            print(
                "kquant_codec: WARNING: the ahead-of-time kernels could not be built (see above); the package "
                "works, but compiles its kernels with numba on first use (5-30 s once per machine)",
                file=sys.stderr,
            )

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if os.path.exists(path)]


setup(ext_modules=[Extension(name, sources=[]) for name in EXTENSIONS], cmdclass={"build_ext": BuildKernels})
