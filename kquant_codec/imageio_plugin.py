"""imageio v3 glue: route ".kq" to imageio's Pillow plugin, which reads and writes it through ``kq_plugin``.

After ``register_imageio()``, ``iio.imread("x.kq")``, ``iio.imwrite("x.kq", arr, k=16)``,
``iio.improps``/``iio.immeta`` and bytes I/O with ``extension=".kq"`` work with no ``plugin=`` argument.
"""

from __future__ import annotations

__all__ = ["register_imageio"]

_NAME = "KQ"


def register_imageio() -> bool:
    """Add ".kq" (priority: imageio's "pillow" plugin) to ``imageio.config.known_extensions``. Idempotent.

    Returns False when imageio is not installed.
    """
    try:
        from imageio.config import FileExtension, extension_list, known_extensions
    except ImportError:
        return False
    entries = known_extensions.setdefault(".kq", [])
    if not any(getattr(entry, "name", None) == _NAME for entry in entries):
        entry = FileExtension(
            name=_NAME,
            extension=".kq",
            priority=["pillow"],
            description="k-means quantized image: centroid table + labels (kquant_codec)",
        )
        entries.insert(0, entry)
        extension_list.append(entry)
    return True
