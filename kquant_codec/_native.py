"""How the package's compiled kernels run: built ahead of time at install, or compiled by numba on first use.

The kernel modules (``label_coder``, ``predictive_coder``, ``_rgb_kernels``) mark their numba functions with
``kernel(...)`` instead of ``numba.njit``. Each becomes a ``Kernel``: on its first call it resolves, once
for the whole package, to one of two backends:

- "aot": one extension module per kernel module (``kquant_codec._aot_label_coder`` and so on), which
  ``pip install`` builds from the same Python source with numba's ahead-of-time compiler
  (``_native_build``). Loading them takes milliseconds and does not import numba, so the first encode or
  decode in a process is as fast as any later one. They are used only when all load and their fingerprint
  (a hash of the kernel modules' source) matches the source beside them: after an edit, a stale build is
  ignored rather than run.
- "jit": numba compiles the kernels on first use and caches the machine code (``cache=True``): a cold cache
  costs 5-30 s once, a warm one about 0.3 s per process (importing numba). Used when no usable build is
  present (no C compiler at install, an edited source, ``KQUANT_KERNELS=jit``).

``KQUANT_KERNELS`` chooses: "auto" (the default: "aot" when usable, else "jit"), "aot" (fail when the build
is unusable) or "jit". Both backends compile the same functions with the same flags, so they give the same
bytes (tests compare them).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["kernel", "Kernel", "backend", "cheap", "fingerprint", "notice_first_compile", "KERNEL_MODULES"]

KERNEL_MODULES = ("label_coder", "predictive_coder", "_rgb_kernels")  # every module that defines kernels
ENV = "KQUANT_KERNELS"
CHOICES = ("auto", "aot", "jit")

_lock = threading.RLock()
_registry: list[Kernel] = []
_state: dict[str, Any] = {}  # "backend": "aot" | "jit"; "modules": the extension modules; "why_not_aot": str


class Kernel:
    """A numba function of this package, callable from Python; resolves to its compiled form on first call.

    ``signature``: the argument types it is built with ahead of time (numba's type syntax, as a string), or
    None for a function that only other kernels call (inlined or linked into them). ``inputs``: positions of
    array arguments it only reads (they may be read-only arrays)."""

    def __init__(
        self, py_func: Callable, options: dict[str, Any], signature: str | None, inputs: tuple[int, ...] = ()
    ) -> None:
        self.py_func = py_func
        self.options = options
        self.signature = signature
        self.inputs = frozenset(inputs)
        self.module = py_func.__module__
        self.__name__ = py_func.__name__
        self.__qualname__ = py_func.__qualname__
        self.__doc__ = py_func.__doc__
        self.dispatcher = None  # the numba dispatcher, once the "jit" backend has made it
        self._impl: Callable | None = None

    @property
    def short_module(self) -> str:
        return self.module.rsplit(".", 1)[-1]

    def __call__(self, *args: Any) -> Any:
        impl = self._impl
        if impl is None:
            impl = self._resolve()
        return impl(*args)

    def _resolve(self) -> Callable:
        with _lock:
            if self._impl is None:
                if backend() == "aot" and self.signature is not None:
                    self._impl = _checked(getattr(_state["modules"][self.short_module], self.__name__), self)
                else:
                    _make_dispatchers()
                    self._impl = self.dispatcher
            return self._impl

    def __repr__(self) -> str:
        return f"<kquant_codec kernel {self.module}.{self.__name__}>"


def _checked(compiled: Callable, k: Kernel) -> Callable:
    """``compiled`` behind a check of its arguments against ``k.signature``: an ahead-of-time function takes
    raw memory and would read a wrong dtype, a strided view or a float without complaint, and write into a
    read-only array. Arrays must be aligned, and writable unless ``k.inputs`` lists them (read only)."""
    checks = parse_signature(k.signature)

    def call(*args: Any) -> Any:
        if len(args) != len(checks):
            raise TypeError(f"{k!r} takes {len(checks)} arguments, got {len(args)}")
        for i, (arg, (dtype, ndim)) in enumerate(zip(args, checks, strict=True)):
            if ndim:
                ok = type(arg) is np.ndarray and arg.dtype == dtype and arg.ndim == ndim
                flags = arg.flags if ok else None
                ok = ok and flags.c_contiguous and flags.aligned and (flags.writeable or i in k.inputs)
            elif dtype == np.bool_:
                ok = isinstance(arg, bool | np.bool_)
            else:
                ok = isinstance(arg, int | np.integer)
            if not ok:
                got = _describe_value(arg)
                raise TypeError(f"{k!r} argument {i}: expected {_describe(dtype, ndim, i in k.inputs)}, got {got}")
        return compiled(*args)

    return call


def _describe_value(arg: Any) -> str:
    if not isinstance(arg, np.ndarray):
        return type(arg).__name__
    flags = arg.flags
    traits = [t for t, on in (("strided", not flags.c_contiguous), ("unaligned", not flags.aligned),
                               ("read-only", not flags.writeable)) if on]  # fmt: skip
    return " ".join([*traits, f"{arg.dtype} {arg.ndim}-D array"])


def _describe(dtype: np.dtype, ndim: int, read_only_ok: bool = False) -> str:
    if not ndim:
        return str(dtype)
    return f"an aligned C-contiguous {'' if read_only_ok else 'writable '}{dtype} {ndim}-D array"


def parse_signature(signature: str) -> list[tuple[np.dtype, int]]:
    """``"(uint8[:, ::1], int64, boolean)"`` -> [(dtype, ndim), ...] (ndim 0: a scalar). The subset of numba's
    type syntax that kernel signatures use: scalars and C-contiguous arrays."""
    body = signature.strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise ValueError(f"kernel signature {signature!r}: expected '(type, ...)'")
    out, depth, item = [], 0, ""
    for ch in body[1:-1] + ",":
        if ch == "," and depth == 0:
            out.append(_parse_type(item.strip(), signature))
            item = ""
            continue
        depth += (ch == "[") - (ch == "]")
        item += ch
    return out


def _parse_type(text: str, signature: str) -> tuple[np.dtype, int]:
    name, _, dims = text.partition("[")
    dtype = np.dtype(np.bool_ if name == "boolean" else name)
    if not dims:
        return dtype, 0
    axes = [a.strip() for a in dims.rstrip("]").split(",")]
    if axes[-1] != "::1" or any(a != ":" for a in axes[:-1]):
        raise ValueError(f"kernel signature {signature!r}: {text!r} is not a C-contiguous array type")
    return dtype, len(axes)


def kernel(signature: str | None = None, inputs: tuple[int, ...] = (), **options: Any) -> Callable[[Callable], Kernel]:
    """Decorator: ``@kernel("(uint8[:, ::1], int64)", nogil=True)`` marks a function as a compiled kernel.

    ``options`` are numba.njit's (``cache=True`` is implied); ``signature`` and ``inputs`` as in ``Kernel``."""

    def wrap(py_func: Callable) -> Kernel:
        k = Kernel(py_func, options, signature, inputs)
        with _lock:
            _registry.append(k)
        return k

    return wrap


def registry() -> list[Kernel]:
    """Every kernel of the modules imported so far (``_native_build`` imports them all)."""
    with _lock:
        return list(_registry)


def fingerprint() -> int:
    """A 60-bit hash of the kernel modules' source files and of the build script (its compile flags): what
    an ahead-of-time build is checked against."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in (*KERNEL_MODULES, "_native_build"):
        h.update((here / f"{name}.py").read_bytes())
    return int.from_bytes(h.digest()[:8], "little") >> 4


def backend() -> str:
    """The backend the kernels run on, "aot" or "jit", chosen on first call (see the module docstring).

    Raises ImportError when neither is usable (no usable build, and numba does not import), RuntimeError
    when ``KQUANT_KERNELS=aot`` and the build is unusable, ValueError for another value of that variable."""
    with _lock:
        if "backend" not in _state:
            _state["backend"] = _choose()
        return _state["backend"]


def why_not_aot() -> str | None:
    """Why the "aot" backend is not in use (after ``backend()``), or None when it is."""
    return _state.get("why_not_aot")


def _wanted() -> str:
    """``KQUANT_KERNELS``, normalised ("auto" when unset or empty); not validated."""
    return os.environ.get(ENV, "").strip().lower() or "auto"


def _choose() -> str:
    want = _wanted()
    if want not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {want!r}")
    if _aot_modules() is not None:
        return "aot"
    if want == "aot":
        raise RuntimeError(f"{ENV}=aot, but the ahead-of-time kernels are unusable: {_state['why_not_aot']}")
    try:
        import numba  # noqa: F401
    except Exception as exc:  # ImportError, or numba / llvmlite failing while loading
        raise ImportError(
            f"no compiled kernels: the ahead-of-time build is unusable ({_state['why_not_aot']}) and numba does "
            f"not import ({type(exc).__name__}: {exc})"
        ) from exc
    return "jit"


def extension_name(kernel_module: str) -> str:
    """The extension module built from a kernel module: "label_coder" -> "_aot_label_coder"."""
    return "_aot_" + kernel_module.lstrip("_")


def _aot_modules() -> dict[str, Any] | None:
    """{kernel module: its extension module} when all are built from this source and not ruled out by
    ``KQUANT_KERNELS=jit``; else None, with the reason in ``why_not_aot()``. Looked up once."""
    with _lock:
        if "modules" not in _state:
            _state["modules"] = None
            if _wanted() == "jit":
                _state["why_not_aot"] = f"{ENV}=jit"
                return None
            try:
                modules, expected = {}, fingerprint()
                for name in KERNEL_MODULES:
                    modules[name] = importlib.import_module(f"{__package__}.{extension_name(name)}")
                    if modules[name].fingerprint() != expected:
                        _state["why_not_aot"] = "built from other source (a kernel module changed since)"
                        return None
            except ImportError as exc:
                _state["why_not_aot"] = f"not built ({exc})"
                return None
            except Exception as exc:  # a source file missing (frozen app), an extension failing to start, ...
                _state["why_not_aot"] = f"unusable ({type(exc).__name__}: {exc})"
                return None
            _state["modules"] = modules
        return _state["modules"]


def cheap() -> bool:
    """True when calling kernels costs no load time now: the ahead-of-time build is usable, or numba is
    already imported. (Callers use kernels for small jobs only then.)"""
    return "numba" in sys.modules or _aot_modules() is not None


def _make_dispatchers() -> None:
    """A numba dispatcher for every registered kernel, and the kernel modules' names of the kernels that only
    other kernels call (no signature) bound to theirs: numba, compiling a kernel, must find its callees as
    dispatchers, not Kernel objects. Kernels with a signature stay Kernel objects (nothing compiled calls
    them), so that with the "aot" backend a JIT compile of some other function leaves them built ahead of
    time. Idempotent; a module imported later gets its dispatchers on its first call."""
    import numba

    with _lock:
        for k in _registry:
            if k.dispatcher is None:
                k.dispatcher = numba.njit(cache=True, **k.options)(k.py_func)
        for module_name in {k.module for k in _registry}:
            module = sys.modules[module_name]
            for name, value in list(vars(module).items()):
                if isinstance(value, Kernel) and value.signature is None and value.dispatcher is not None:
                    setattr(module, name, value.dispatcher)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # (a fork while another thread resolved kernels would leave it held for good)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_announced: set[str] = set()


def notice_first_compile(k: Kernel | Any, what: str, seconds: str) -> None:
    """Say so, once, when kernel ``k`` is about to be JIT-compiled for this machine (no ahead-of-time build,
    and its numba cache is empty or stale): the first encode or decode then takes ``seconds`` instead of
    milliseconds, and a silent wait that long looks like a hang. Logged as a warning (shown on stderr when the
    application sets up no logging). Reads numba's cache internals; if they change, there is no notice."""
    if what in _announced or backend() != "jit":
        return
    _announced.add(what)
    if isinstance(k, Kernel):
        _make_dispatchers()
        k = k.dispatcher
    try:
        cold = not k._cache._cache_file._load_index()
    except Exception:  # best effort: a notice must never break coding
        return
    if cold:
        logging.getLogger("kquant_codec").warning(
            "kquant_codec: compiling the .kq %s kernel for this machine (once; about %s s, cached afterwards)",
            what,
            seconds,
        )
