"""The compiled kernels' two backends (``_native``): kernels built at install ("aot") and numba's JIT.

The install builds the kernels (setup.py); these tests check that it did, that both backends give the same
bytes, that the built kernels need neither numba nor a compile on first use, release the GIL, refuse
arguments they were not built for, and are ignored once the source changes.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kquant_codec import _native

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def _aot_built() -> bool:
    out = _run("from kquant_codec import _native; print(_native.backend())", KQUANT_KERNELS="auto")
    return out.stdout.strip() == "aot"


needs_aot = pytest.mark.skipif(not _aot_built(), reason="the install did not build the kernels")


def test_the_install_built_the_kernels():
    """With a C compiler at hand, ``pip install`` builds the kernels: otherwise every user pays the compile."""
    if os.environ.get("KQUANT_SKIP_AOT") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler, or the build was skipped on purpose")
    out = _run("from kquant_codec import _native; print(_native.backend(), _native.why_not_aot())")
    assert out.stdout.split()[0] == "aot", (
        f"ahead-of-time kernels unusable: {out.stdout}{out.stderr}\n"
        "(after editing a kernel module, rebuild them: python kquant_codec/_native_build.py)"
    )


def test_setup_builds_one_extension_per_kernel_module():
    names = re.findall(r'"kquant_codec\.(_aot_\w+)"', (ROOT / "setup.py").read_text())
    assert names == [_native.extension_name(m) for m in _native.KERNEL_MODULES]


ENCODE_ALL = """
    import io, hashlib, sys
    import numpy as np
    from PIL import Image
    import kquant_codec
    from kquant_codec import _native, kmeans_colour
    from sklearn.datasets import load_sample_image
    kmeans_colour.NUMBA_MIN_PIXELS = 0  # the whole numba path of the rgb learner, on a small image
    img = Image.fromarray(load_sample_image("china.jpg")[::3, ::3])
    for mode in ("rgb", "global", "channel"):
        for k in (2, 16, 256):
            buf = io.BytesIO()
            img.save(buf, format="KQ", mode=mode, k=k)
            pixels = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
            print(mode, k, hashlib.sha256(buf.getvalue() + pixels.tobytes()).hexdigest())
    print(_native.backend(), "numba" in sys.modules)
"""


@needs_aot
def test_both_backends_give_the_same_bytes():
    """Codec 3 (rgb), codec 4 (global, channel) and the rgb learner's kernels: the same files and pixels
    from the install's kernels and from numba's JIT."""
    aot = _run(ENCODE_ALL, KQUANT_KERNELS="aot")
    jit = _run(ENCODE_ALL, KQUANT_KERNELS="jit")
    assert aot.returncode == 0 and jit.returncode == 0, aot.stderr + jit.stderr
    *aot_lines, aot_tail = aot.stdout.splitlines()
    *jit_lines, jit_tail = jit.stdout.splitlines()
    assert len(aot_lines) == 9 and aot_lines == jit_lines
    assert aot_tail == "aot False"  # numba was never imported
    assert jit_tail == "jit True"


@needs_aot
def test_first_decode_neither_imports_numba_nor_announces_a_compile(tmp_path):
    from PIL import Image

    arr = np.random.default_rng(3).integers(0, 256, (40, 50, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "rgb.kq", k=16)
    Image.fromarray(arr).convert("L").save(tmp_path / "grey.kq", mode="global", k=16)
    out = _run(
        f"""
        import sys
        from PIL import Image
        import kquant_codec
        for name in ("rgb.kq", "grey.kq"):
            Image.open({str(tmp_path)!r} + "/" + name).load()
        print("numba" in sys.modules)
        """,
        NUMBA_CACHE_DIR=str(tmp_path / "empty-cache"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert "compiling" not in out.stderr


@needs_aot
def test_a_changed_source_makes_the_build_stale():
    """A build whose fingerprint differs from the source beside it is not run: "auto" falls back to the JIT,
    "aot" refuses with the reason."""
    script = """
        from kquant_codec import _native
        _native.fingerprint = lambda: 12345  # as if a kernel module had been edited since the build
        try:
            print(_native.backend(), "|", _native.why_not_aot())
        except RuntimeError as exc:
            print("RuntimeError", exc)
    """
    assert _run(script).stdout.strip() == "jit | built from other source (a kernel module changed since)"
    refused = _run(script, KQUANT_KERNELS="aot").stdout
    assert refused.startswith("RuntimeError KQUANT_KERNELS=aot, but the ahead-of-time kernels are unusable")


def test_an_unknown_backend_name_is_refused():
    out = _run(
        """
        from kquant_codec import _native
        try:
            _native.backend()
        except ValueError as exc:
            print(exc)
        """,
        KQUANT_KERNELS="fast",
    )
    assert out.stdout.strip() == "KQUANT_KERNELS must be one of auto, aot, jit, got 'fast'"


def test_arguments_are_checked_against_the_signature():
    """An ahead-of-time kernel reads raw memory: a wrong dtype, a strided view or a float must be refused
    before the call (numba's own wrapper would let them through)."""
    calls = []
    k = _native.Kernel(lambda a, b, n, flag: None, {}, "(uint8[:, ::1], int32[::1], int64, boolean)", inputs=(1,))
    checked = _native._checked(lambda *args: calls.append(args) or "done", k)
    good, ints = np.zeros((3, 4), np.uint8), np.zeros(5, np.int32)
    frozen, frozen_ints = good.copy(), ints.copy()
    frozen.flags.writeable = frozen_ints.flags.writeable = False
    unaligned = np.frombuffer(bytearray(21), np.int32, count=5, offset=1)
    assert checked(good, ints, np.int64(2), True) == "done"
    assert checked(good, frozen_ints, 2, np.bool_(False)) == "done"  # an input: read only is fine
    expected_0 = "argument 0: expected an aligned C-contiguous writable uint8 2-D array"
    for bad, what in [
        ((good.astype(np.int32), ints, 2, True), f"{expected_0}, got int32 2-D array"),
        ((good[:, ::2], ints, 2, True), f"{expected_0}, got strided uint8 2-D array"),
        ((good[0], ints, 2, True), f"{expected_0}, got uint8 1-D array"),
        ((frozen, ints, 2, True), f"{expected_0}, got read-only uint8 2-D array"),
        ((good, unaligned, 2, True), "argument 1: expected an aligned C-contiguous int32 1-D array, got unaligned"),
        ((good, ints, 2.5, True), "argument 2: expected int64, got float"),
        ((good, ints, 2, 1), "argument 3: expected bool, got int"),
        ((good, ints, 2), "takes 4 arguments, got 3"),
    ]:
        with pytest.raises(TypeError, match=re.escape(what)):
            checked(*bad)
    assert len(calls) == 2


def test_signature_parser():
    parse = _native.parse_signature
    assert parse("(boolean, uint8[:, ::1], int64[::1], int64)") == [
        (np.dtype(np.bool_), 0),
        (np.dtype(np.uint8), 2),
        (np.dtype(np.int64), 1),
        (np.dtype(np.int64), 0),
    ]
    with pytest.raises(ValueError, match="not a C-contiguous array type"):
        parse("(uint8[:, :],)")
    with pytest.raises(ValueError, match="expected"):
        parse("uint8")


def test_every_kernel_called_from_python_has_a_signature():
    """Kernels that other kernels only call (inlined or linked) need none; every other one must have one, or
    the install's build would leave it to the JIT. Checked on the source: no plain function calls a kernel
    without a signature, and no kernel calls one with a signature."""
    from kquant_codec import _rgb_kernels, label_coder, predictive_coder  # noqa: F401  (registers them)

    unsigned = {k.__name__ for k in _native.registry() if k.signature is None}
    signed = {k.__name__ for k in _native.registry() if k.signature is not None}
    assert unsigned and signed
    for name in _native.KERNEL_MODULES:
        tree = ast.parse((ROOT / "kquant_codec" / f"{name}.py").read_text())
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            in_kernel = any("kernel" in ast.unparse(d) for d in fn.decorator_list)
            # plain functions may call only signed kernels; kernels only unsigned ones (the JIT binds those)
            forbidden = signed if in_kernel else unsigned
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in forbidden:
                    pytest.fail(f"{name}.{fn.name} calls kernel {node.func.id} (signature: {not in_kernel})")


@needs_aot
def test_built_kernels_release_the_gil():
    """While one thread runs a long built kernel, another thread keeps running Python code."""
    out = _run(
        """
        import threading, time
        import numpy as np
        from kquant_codec import _native, label_coder
        assert _native.backend() == "aot"
        n = 40_000_000
        st, fr = np.zeros(n, np.uint16), np.full(n, 1 << 13, np.uint16)
        label_coder._rans_encode(st[:10].copy(), fr[:10].copy(), 10)  # resolved before timing
        spent = []
        def work():
            t0 = time.perf_counter()
            label_coder._rans_encode(st, fr, n)
            spent.append(time.perf_counter() - t0)
        t = threading.Thread(target=work)
        ticks = 0
        t.start()
        while t.is_alive():
            ticks += 1
        t1, base = time.perf_counter(), 0
        while time.perf_counter() - t1 < 0.2:
            base += 1
        print(round(ticks / (base / 0.2 * spent[0]), 3), round(spent[0], 3))
        """
    )
    assert out.returncode == 0, out.stderr
    ratio, seconds = map(float, out.stdout.split())
    assert seconds > 0.05, "the kernel call was too short to tell"  # (whoever holds the GIL)
    assert ratio > 0.2, f"the other thread ran at {ratio:.0%} of its speed while the kernel ran"


def test_a_kernel_resolves_once_when_many_threads_call_it_first():
    out = _run(
        """
        import threading
        import numpy as np
        from kquant_codec import _native, label_coder
        calls, real = [], _native.backend
        _native.backend = lambda: calls.append(1) or real()
        barrier, results = threading.Barrier(8), []
        def call():
            barrier.wait()
            st, fr = np.zeros(8, np.uint16), np.full(8, 1 << 14, np.uint16)
            results.append(label_coder._rans_encode(st, fr, 8).tobytes())
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(calls), len(results), len(set(results)))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "8", "1"]


def test_backend_errors_say_what_is_missing():
    """No usable build and no numba: an ImportError naming both reasons; a build that fails to load in another
    way than ImportError (a source file missing in a frozen app, say) is passed over with its reason."""
    out = _run(
        """
        import sys
        sys.modules["numba"] = None  # as if numba were not installed
        from kquant_codec import _native
        try:
            _native.backend()
        except ImportError as exc:
            print(exc)
        """,
        KQUANT_KERNELS="jit",
    )
    assert out.stdout.startswith(
        "no compiled kernels: the ahead-of-time build is unusable (KQUANT_KERNELS=jit) and numba does not import"
    ), out.stdout + out.stderr
    out = _run(
        """
        from kquant_codec import _native
        def gone():
            raise FileNotFoundError("label_coder.py")
        _native.fingerprint = gone
        print(_native.backend(), "|", _native.why_not_aot())
        """
    )
    assert out.stdout.strip() == "jit | unusable (FileNotFoundError: label_coder.py)", out.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_another_thread_resolves_kernels_does_not_deadlock_the_child():
    out = _run(
        """
        import os, threading, time
        from kquant_codec import _native
        held, release = threading.Event(), threading.Event()
        def hold():
            with _native._lock:
                held.set()
                release.wait()
        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            _native.backend()  # would wait forever on the copied, held lock
            os._exit(0)
        release.set()
        for _ in range(300):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print(os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            print("deadlocked")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_built_kernels_take_the_options_the_build_compiles_with():
    """The build compiles every exported kernel with njit(nogil=True, boundscheck=False)'s flags."""
    from kquant_codec import _rgb_kernels, label_coder, predictive_coder  # noqa: F401  (registers them)

    for k in _native.registry():
        if k.signature is not None:
            assert {**k.options, "boundscheck": False} == {"nogil": True, "boundscheck": False}, k
