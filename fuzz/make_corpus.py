"""Write the seed corpus: small valid ``.kq`` files covering every layout the format allows.

    .venv/bin/python fuzz/make_corpus.py [--out fuzz/corpus]

Every native image mode with every quantization mode it allows, every alpha kind (none, plane, table),
both packings, the stream codecs (stored, zlib, lzma2) for the label and the alpha stream, the context coder
(codec 3) for label streams of every quantization mode (several stripes, row copies, reference planes), and a PNG
payload for every PNG mode (grey, grey+alpha, palette with and without transparency, truecolour with and
without alpha, indexed PNGs for L/LA/RGB/RGBA, bilevel, 16-bit grey). Odd widths, so packed rows have
padding bits. The files are built from the container functions directly (not left to the encoder's
smallest-file choice), so each codec/packing combination really occurs. Deterministic output; each file
is checked to decode to the image it was made from.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

import kquant_codec
from kquant_codec import container as c
from kquant_codec.encoder import encode_image
from kquant_codec.pixels import as_palette_image

CODECS = {c.CODEC_STORED: "stored", c.CODEC_ZLIB: "zlib", c.CODEC_LZMA2: "lzma2"}  # codec 3: _context
NATIVE_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")
ALPHA_KINDS = {"LA": ("plane", "table"), "RGBA": ("plane", "table"), "P": ("none", "table")}


def _image(mode: str, width: int, height: int, colours: int, seed: int) -> Image.Image:
    """A small image of ``mode`` drawn from ``colours`` random colours (alpha included), with structure."""
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands()) if mode not in ("1", "P") else 3
    if mode == "1":
        bits = (rng.integers(0, 2, (height, width)) * 255).astype(np.uint8)
        return Image.fromarray(bits).convert("1", dither=Image.Dither.NONE)
    palette = rng.integers(0, 256, (colours, bands), dtype=np.uint8)
    index = (np.add.outer(np.arange(height), np.arange(width)) // 2 + rng.integers(0, 2, (height, width))) % colours
    pixels = palette[index]
    if mode == "P":
        img = Image.frombytes("P", (width, height), index.astype(np.uint8).tobytes())
        img.putpalette(palette.tobytes())
        return img
    return Image.frombytes(mode, (width, height), np.ascontiguousarray(pixels).tobytes())


def _rebuild(data: bytes, packed: bool, codec: int, alpha_codec: int) -> bytes:
    """The same image and layout with the given packing and stream codecs."""
    kq = kquant_codec.read_kq(data)
    header = replace(kq.header, packed=packed)
    labels = c.compress(c.labels_to_stream(kq.labels, header), codec)
    alpha = b""
    if kq.alpha is not None:
        alpha = c.compress(np.ascontiguousarray(kq.alpha).tobytes(), alpha_codec)
    header = replace(
        header,
        label_codec=codec,
        label_length=len(labels),
        alpha_codec=alpha_codec if kq.alpha is not None else 0,
        alpha_length=len(alpha),
    )
    return c.pack_file(header, labels, alpha)


def _recoded(data: bytes, codec: int, use_ref: bool = True) -> bytes:
    """The same image and layout with its label stream coded by codec 3 (the context coder, spec section 16) or
    codec 4 (the predictive coder of global/channel planes, section 17); an alpha plane goes with zlib."""
    kq = kquant_codec.read_kq(data)
    header = replace(kq.header, packed=False)
    if codec == c.CODEC_CONTEXT:
        labels = c.labels_to_context_stream(kq.labels, header, use_ref=use_ref)
    else:
        labels = c.labels_to_predictive_stream(kq.labels, header)
    alpha = b"" if kq.alpha is None else c.compress(np.ascontiguousarray(kq.alpha).tobytes(), c.CODEC_ZLIB)
    header = replace(
        header,
        label_codec=codec,
        label_length=len(labels),
        alpha_codec=c.CODEC_ZLIB if kq.alpha is not None else 0,
        alpha_length=len(alpha),
    )
    return c.pack_file(header, labels, alpha)


def _png_file(img: Image.Image, png_source: Image.Image) -> bytes:
    buf = io.BytesIO()
    png_source.save(buf, format="PNG")
    png = buf.getvalue()
    header = c.png_payload_header(img.width, img.height, img.mode, len(png))
    return c.pack_file(header, png)


def _same(a: Image.Image, b: Image.Image) -> bool:
    if (a.mode, a.size, a.tobytes()) != (b.mode, b.size, b.tobytes()):
        return False
    return a.mode != "P" or a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()


def corpus() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    combos = itertools.cycle(itertools.product((False, True), CODECS, CODECS))
    seed = 0
    # Native payloads: every mode x quantization mode x alpha kind, cycling through packing and codecs.
    for mode in NATIVE_MODES:
        quants = ("rgb",) if mode == "P" else c.QUANT_MODES
        for quant, alpha in itertools.product(quants, ALPHA_KINDS.get(mode, ("none",))):
            for colours, (width, height) in ((3, (7, 5)), (20, (9, 4))):
                seed += 1
                img = _image(mode, width, height, colours, seed)
                if mode == "P":
                    if alpha == "table":
                        img.info["transparency"] = bytes([0, 128] + [255] * (colours - 2))
                    base = encode_image(img, fallback=False)
                else:
                    base = encode_image(img, mode=quant, alpha="keep" if alpha == "plane" else "quantize")
                packed, codec, alpha_codec = next(combos)
                data = _rebuild(base, packed, codec, alpha_codec)
                info = kquant_codec.kq_info(data)
                assert (info.quant_mode, info.alpha) == (quant, alpha), (mode, quant, alpha, info)
                assert _same(kquant_codec.read_kq(data).to_image(), img), (mode, quant, alpha)
                a = f"-a{CODECS[alpha_codec]}" if alpha == "plane" else ""
                name = f"native-{mode}-{quant}-{alpha}-{'packed' if packed else 'bytes'}-{CODECS[codec]}{a}-{colours}c"
                files[name.replace(";", "")] = data
    # Every packing x label codec x alpha codec once, on RGBA with an alpha plane and a 4-entry table.
    img = _image("RGBA", 11, 3, 4, 99)
    base = encode_image(img, mode="rgb", alpha="keep")
    for packed, codec, alpha_codec in itertools.product((False, True), CODECS, CODECS):
        data = _rebuild(base, packed, codec, alpha_codec)
        assert _same(kquant_codec.read_kq(data).to_image(), img)
        files[f"matrix-RGBA-{'packed' if packed else 'bytes'}-{CODECS[codec]}-a{CODECS[alpha_codec]}"] = data
    # Codec 3 (context coder): every quantization mode, table sizes from 1 to 256, with and without reference
    # planes, an alpha plane beside it, several stripes, and rows that repeat (row copies).
    context_cases = [
        ("RGB", "rgb", "none", 20, (9, 4)),
        ("RGB", "global", "none", 5, (7, 5)),
        ("RGB", "channel", "none", 3, (7, 5)),
        ("RGBA", "rgb", "plane", 4, (11, 3)),
        ("LA", "channel", "table", 6, (5, 6)),
        ("L", "rgb", "none", 1, (6, 2)),
        ("P", "rgb", "none", 2, (13, 2)),
        ("CMYK", "global", "none", 256, (16, 16)),
    ]
    for mode, quant, alpha, colours, (width, height) in context_cases:
        seed += 1
        img = _image(mode, width, height, colours, seed)
        if mode == "P":
            base = encode_image(img, fallback=False)
        else:
            base = encode_image(img, mode=quant, alpha="keep" if alpha == "plane" else "quantize")
        for use_ref in (True, False) if quant != "rgb" else (True,):
            data = _recoded(base, c.CODEC_CONTEXT, use_ref)
            assert _same(kquant_codec.read_kq(data).to_image(), img), (mode, quant, alpha)
            suffix = "" if quant == "rgb" else ("-ref" if use_ref else "-noref")
            files[f"context-{mode}-{quant}-{alpha}-{colours}c{suffix}"] = data
        if quant != "rgb":  # codec 4 (predictive coder): global and channel layouts only
            data = _recoded(base, c.CODEC_PREDICTIVE)
            assert _same(kquant_codec.read_kq(data).to_image(), img), (mode, quant, alpha)
            files[f"predictive-{mode}-{quant}-{alpha}-{colours}c"] = data
    stripes = np.repeat(np.arange(40, dtype=np.uint8).reshape(40, 1) % 7, 12, axis=1)  # rows repeat: copies
    base = encode_image(Image.fromarray(stripes * 30), mode="rgb")
    kq = kquant_codec.read_kq(base)
    header = replace(kq.header, packed=False, label_codec=c.CODEC_CONTEXT)
    planes = c.plane_keys(header)
    from kquant_codec import label_coder

    stream = label_coder.encode_plane(kq.labels, len(planes[0]), planes[0], None, stripe_rows=9)  # 5 stripes
    data = c.pack_file(replace(header, label_length=len(stream)), stream)
    assert _same(kquant_codec.read_kq(data).to_image(), Image.fromarray(stripes * 30))
    files["context-L-stripes-and-row-copies"] = data
    # Codec 4 with several stripes, zero rows and runs, on a ramp with noise.
    from kquant_codec import predictive_coder

    ramp = (np.add.outer(np.arange(40), np.arange(12)) * 6 % 256).astype(np.uint8)
    ramp[7:12] = ramp[6]
    ramp[20, 3] ^= 0x55
    base = encode_image(Image.fromarray(ramp), mode="global", fallback=False)
    kq = kquant_codec.read_kq(base)
    header = replace(kq.header, packed=False, label_codec=c.CODEC_PREDICTIVE)
    stream, _ = predictive_coder.encode_plane(kq.labels[:, :, 0], header.table_sizes[0], None, stripe_rows=9)
    data = c.pack_file(replace(header, label_length=len(stream)), stream)
    assert _same(kquant_codec.read_kq(data).to_image(), Image.fromarray(ramp))
    files["predictive-L-stripes-runs-and-zero-rows"] = data
    # Codec 4's exact rules (plane flag bit 1) on a diagonal ramp, the planes after the first with a reference
    # plane; the tables as level sets (more than 32 levels).
    y, x = np.mgrid[0:24, 0:40]
    diag = np.dstack([x * 6, y * 10, 255 - (x + y) * 4]).clip(0, 255).astype(np.uint8)
    base = encode_image(Image.fromarray(diag), mode="global", fallback=False)
    kq = kquant_codec.read_kq(base)
    header = replace(kq.header, packed=False, label_codec=c.CODEC_PREDICTIVE)
    assert header.level_sets
    stream, ref = b"", None
    for ch in range(3):
        plane = np.ascontiguousarray(kq.labels[:, :, ch])
        sub, res = predictive_coder.encode_plane(plane, header.table_sizes[0], ref, stripe_rows=10, exact=True)
        stream += (label_coder._uvarint(len(sub)) if ch < 2 else b"") + sub
        ref = (plane, res)
    data = c.pack_file(replace(header, label_length=len(stream)), stream)
    assert _same(kquant_codec.read_kq(data).to_image(), Image.fromarray(diag))
    files["predictive-RGB-exact-rules-level-sets"] = data

    # PNG payloads: every PNG mode, plain and (where the encoder would use one) indexed.
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        seed += 1
        img = _image(mode, 9, 5, 5, seed)
        files[f"png-{mode}"] = _png_file(img, img)
        if mode in ("L", "LA", "RGB", "RGBA"):
            files[f"png-{mode}-indexed"] = _png_file(img, as_palette_image(img))  # L/LA: grey entries
    seed += 1
    p = _image("P", 9, 5, 5, seed)
    p.info["transparency"] = 2
    files["png-P-transparency-index"] = _png_file(p, p)
    p.info["transparency"] = bytes([0, 64, 128, 200, 255])
    files["png-P-transparency-table"] = _png_file(p, p)
    i16 = Image.fromarray(np.arange(45, dtype=np.uint16).reshape(5, 9) * 1111)
    files["png-I16"] = _png_file(i16, i16)
    # A larger image from the encoder itself (whatever it picks), and the spec's worked example.
    ramp = np.add.outer(np.arange(24), np.arange(40)).astype(np.uint8) * 5
    files["encoder-L-ramp"] = encode_image(Image.fromarray(ramp))
    files["encoder-RGB-k5"] = encode_image(Image.fromarray(np.dstack([ramp, ramp[::-1], ramp[:, ::-1]])), k=5)
    # Colour keys in the header (native L and RGB; spec 7), in rgb and channel layouts.
    for mode, quant in (("L", "rgb"), ("RGB", "rgb"), ("RGB", "channel")):
        seed += 1
        img = _image(mode, 9, 5, 4, seed)
        img.info["transparency"] = img.getpixel((0, 0))
        data = encode_image(img, mode=quant, fallback=False)
        assert kquant_codec.kq_info(data).colour_key == img.info["transparency"], (mode, quant)
        files[f"native-{mode}-{quant}-colour-key"] = data
    for name, data in files.items():
        if name.startswith("png-"):
            img = kquant_codec.read_kq(data).to_image()
            assert img.mode == kquant_codec.kq_info(data).image_mode, name
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files = corpus()
    for old in args.out.glob("*.kq"):
        if old.stem not in files:
            old.unlink()
    for name, data in sorted(files.items()):
        (args.out / f"{name}.kq").write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"{len(files)} seed files, {total} bytes, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
