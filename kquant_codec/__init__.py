"""kquant_codec: k-means colour quantization, a Pillow filter, and the compact ``.kq`` palette format.

    from kquant_codec import KMeansQuantize
    out = img.filter(KMeansQuantize(8))            # rgb mode, at most 8 colours
    pal = learn_palette(frames, k=64)              # one palette for many images (streamed)
    out = img.filter(KMeansQuantize(palette=pal))  # every pixel its nearest palette colour

Importing the package registers the ``.kq`` format with Pillow and imageio.
"""

from __future__ import annotations

from .container import KqFormatError, KqHeader
from .decoder import KqImage, KqInfo, kq_info, read_kq
from .encoder import encode_image
from .filter import KMeansQuantize
from .imageio_plugin import register_imageio
from .kq_plugin import KqImageFile
from .kq_plugin import register as register_pillow
from .metrics import absolute_error, error_report, l2_error, mse, psnr, squared_error
from .palette import PaletteLearner, image_for_palette, learn_palette
from .palette_files import read_palette, write_palette
from .quantize import QuantizedImage, fit_image, quantize_image
from .quantizer import MODES, KMeansQuantizer

__version__ = "0.1.0"

__all__ = [
    "KMeansQuantize",
    "KMeansQuantizer",
    "MODES",
    "QuantizedImage",
    "fit_image",
    "quantize_image",
    "absolute_error",
    "squared_error",
    "l2_error",
    "mse",
    "psnr",
    "error_report",
    "KqFormatError",
    "KqHeader",
    "KqImage",
    "KqInfo",
    "KqImageFile",
    "kq_info",
    "read_kq",
    "encode_image",
    "PaletteLearner",
    "learn_palette",
    "image_for_palette",
    "read_palette",
    "write_palette",
    "register",
    "kernel_backend",
]


def kernel_backend() -> str:
    """How the compiled kernels run in this process: "aot" (built at install: no compile, numba not imported)
    or "jit" (numba compiles on first use and caches on disk). Chosen once; ``KQUANT_KERNELS`` overrides it
    ("auto", "aot", "jit"). Raises ImportError when neither is usable."""
    from ._native import backend

    return backend()


def register() -> None:
    """Register the ``.kq`` format with Pillow and (when installed) imageio. Idempotent; done on import."""
    register_pillow()
    register_imageio()


register()
