"""imageio v3 glue: route ".kq" to ``KqPlugin``, imageio's Pillow plugin (which reads and writes ``.kq`` through
``kq_plugin``) with two changes for ``.kq``.

After ``register_imageio()``, ``iio.imread("x.kq")``, ``iio.imwrite("x.kq", arr, k=16)``,
``iio.improps``/``iio.immeta`` and bytes I/O with ``extension=".kq"`` work with no ``plugin=`` argument.

The changes: writing encodes in memory first and replaces a file only with complete bytes (imageio's Pillow
plugin opens the target for writing first, so a failed ``imwrite`` left an empty file where the old one was);
and a file that starts like a ``.kq`` file but cannot be read raises its reason (``KqFormatError``), not
imageio's "could not find a backend". ``KqPlugin`` is built on first use, so importing this module does not
import imageio's plugins.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

__all__ = ["register_imageio"]

_NAME = "KQ"
_PLUGIN = "kquant"


def register_imageio() -> bool:
    """Add the "kquant" plugin and ".kq" (priority: "kquant", then imageio's "pillow") to imageio's
    configuration. Idempotent. Returns False when imageio is not installed."""
    try:
        from imageio.config import FileExtension, extension_list, known_extensions, known_plugins
        from imageio.config.plugins import PluginConfig
    except ImportError:
        return False
    if _PLUGIN not in known_plugins:
        known_plugins[_PLUGIN] = PluginConfig(name=_PLUGIN, class_name="KqPlugin", module_name=__name__)
    entries = known_extensions.setdefault(".kq", [])
    if not any(getattr(entry, "name", None) == _NAME for entry in entries):
        entry = FileExtension(
            name=_NAME,
            extension=".kq",
            priority=[_PLUGIN, "pillow"],
            description="k-means quantized image: centroid table + labels (kquant_codec)",
        )
        entries.insert(0, entry)
        extension_list.append(entry)
    return True


def _why_not_kq(request: Any) -> Exception | None:
    """For a resource that starts with the ``.kq`` magic but that Pillow could not open: the container's
    error (the header's reason). None for anything else."""
    from .container import MAGIC, KqFormatError
    from .decoder import read_kq

    try:
        fh = request.get_file()
        fh.seek(0)
        if fh.read(len(MAGIC)) != MAGIC:
            return None
        fh.seek(0)
        read_kq(fh)
    except KqFormatError as exc:
        return exc
    except Exception:  # an unreadable resource: imageio's own message says more
        return None
    return None


def _build_plugin() -> type:
    from imageio.core.request import URI_FILENAME, InitializationError, IOMode
    from imageio.plugins.pillow import PillowPlugin

    from .safe_write import atomic_output

    class KqPlugin(PillowPlugin):
        """imageio's Pillow plugin, writing ``.kq`` files atomically and naming what is wrong with a bad one."""

        def __init__(self, request: Any) -> None:
            try:
                super().__init__(request)
            except InitializationError:
                if request.mode.io_mode == IOMode.read:
                    reason = _why_not_kq(request)
                    if reason is not None:
                        raise reason from None
                raise

        def write(self, ndimage: Any, *, mode: str | None = None, **kwargs: Any) -> Any:
            if mode in ("rgb", "global", "channel"):  # imageio's mode is the Pillow image mode (KeyError there)
                raise ValueError(f"mode= is the Pillow image mode in imageio: use quant_mode={mode!r}")
            return super().write(ndimage, mode=mode, **kwargs)

        def _flush_writer(self) -> None:
            if not self.images_to_write:
                return
            # Taken first: a failed encode leaves nothing for close() (or __del__) to try again.
            frames, self.images_to_write = self.images_to_write, []
            options, self.save_args = self.save_args, {}
            if len(frames) > 1:
                options.update(save_all=True, append_images=frames[1:])
            encoded = io.BytesIO()
            frames[0].save(encoded, **options)  # raises before any file is touched
            request = self._request
            if request._uri_type == URI_FILENAME and not Path(request.filename).is_dir():
                # imwrite replaces, as imageio does; through a symbolic link, the file it points to
                with atomic_output(os.path.realpath(request.filename), force=True) as fh:
                    fh.write(encoded.getbuffer())
            else:  # bytes, a file object: imageio's own handling
                request.get_file().write(encoded.getbuffer())

    return KqPlugin


def __getattr__(name: str) -> Any:
    if name == "KqPlugin":  # looked up by imageio when it first uses the plugin
        cls = _build_plugin()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
