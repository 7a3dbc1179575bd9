"""The kquant command line, run as a user would: in a subprocess, through the installed entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kquant_codec  # noqa: F401 - registers .kq with Pillow for the checks below

KQUANT = [sys.executable, "-m", "kquant_codec.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KQUANT, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture()
def photo(tmp_path, china_small) -> Path:
    path = tmp_path / "photo.png"
    china_small.save(path)
    return path


def test_encode_decode_info_roundtrip(tmp_path, photo):
    kq = tmp_path / "photo.kq"
    r = run("encode", str(photo), str(kq), "-k", "16", "--mode", "rgb")
    assert r.returncode == 0, r.stderr
    assert kq.exists() and "bytes" in r.stdout
    quantized = Image.open(photo).convert("RGB").filter(kquant_codec.KMeansQuantize(16))
    assert Image.open(kq).tobytes() == quantized.tobytes()

    out = tmp_path / "back.png"
    r = run("decode", str(kq), str(out))
    assert r.returncode == 0, r.stderr
    back = Image.open(out)
    assert back.mode == "P"  # indexed PNG: 16 colours allow one
    assert back.convert("RGB").tobytes() == quantized.tobytes()

    r = run("info", str(kq), "--json")
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["width"] == 96 and facts["height"] == 64 and facts["payload"] in ("native", "png")
    assert facts["ratio_vs_png"] > 0


def test_encode_without_k_or_mode_stores_the_image_exactly(tmp_path, photo):
    """No -k and no --mode: the pixels as they are, whatever their colour count or depth (README)."""
    source = Image.open(photo)
    assert len(source.getcolors(1 << 24)) > 256  # too many colours for a palette: nothing may be quantized
    kq = tmp_path / "exact.kq"
    r = run("encode", str(photo), str(kq))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(kq)), np.asarray(source))
    deep = tmp_path / "deep.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 19).save(deep)
    r = run("encode", str(deep), str(tmp_path / "deep.kq"))
    assert r.returncode == 0, r.stderr
    back = Image.open(tmp_path / "deep.kq")
    assert back.mode == "I;16" and back.tobytes() == Image.open(deep).tobytes()
    # --mode alone quantizes at k=256 in that mode, as img.save(..., mode=...) does
    r = run("encode", str(photo), str(tmp_path / "g.kq"), "--mode", "global")
    assert r.returncode == 0, r.stderr
    expected = source.convert("RGB").filter(kquant_codec.KMeansQuantize(256, mode="global"))
    assert Image.open(tmp_path / "g.kq").tobytes() == expected.tobytes()


@pytest.mark.parametrize("mode", ["global", "channel"])
def test_encode_other_modes(tmp_path, photo, mode):
    kq = tmp_path / f"{mode}.kq"
    r = run("encode", str(photo), str(kq), "-k", "8", "--mode", mode)
    assert r.returncode == 0, r.stderr
    expected = Image.open(photo).convert("RGB").filter(kquant_codec.KMeansQuantize(8, mode=mode))
    assert Image.open(kq).tobytes() == expected.tobytes()


def test_bench_prints_every_mode_and_k(photo):
    r = run("bench", str(photo), "-k", "2", "16", "--mode", "rgb", "global", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["mode"], row["k"]) for row in rows] == [("rgb", 2), ("rgb", 16), ("global", 2), ("global", 16)]
    for row in rows:
        assert row["kq_bytes"] > 0 and row["png_quantized_bytes"] > 0 and row["psnr"] > 0
    r = run("bench", str(photo), "-k", "4", "--mode", "channel")
    assert r.returncode == 0 and "channel" in r.stdout and "PSNR" in r.stdout


def test_bench_on_a_cmyk_image(tmp_path, photo):
    """PNG holds no CMYK: the original's PNG size is that of its RGB conversion (was an internal error)."""
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(photo).convert("CMYK").save(cmyk, quality=95)
    r = run("bench", str(cmyk), "-k", "4", "--mode", "rgb", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["png_original_bytes"] > 0 and row["kq_bytes"] > 0 and row["mse"] > 0


def test_demo_runs_every_mode_on_the_bundled_photo():
    """The quick start's command: every mode of each k, with sizes, and which kernels ran."""
    r = run("demo", "-k", "2", "16")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("china.jpg: 640x427 RGB")
    rows = [line.split() for line in lines if line.split()[:1] and line.split()[0] in ("rgb", "global", "channel")]
    assert sorted((row[0], int(row[1])) for row in rows) == sorted(
        (mode, k) for mode in ("rgb", "global", "channel") for k in (2, 16)
    )
    assert all(int(row[4]) > 0 for row in rows)
    expected = "aot (built at install)" if kquant_codec.kernel_backend() == "aot" else "jit (compiled by numba"
    assert lines[-1].startswith(f"compiled kernels: {expected}")


def test_refuses_to_overwrite_without_force(tmp_path, photo):
    kq = tmp_path / "photo.kq"
    kq.write_bytes(b"precious")
    r = run("encode", str(photo), str(kq), "-k", "4")
    assert r.returncode == 4 and "exists" in r.stderr and "Traceback" not in r.stderr
    assert kq.read_bytes() == b"precious"
    r = run("encode", str(photo), str(kq), "-k", "4", "--force")
    assert r.returncode == 0 and kq.read_bytes() != b"precious"


def test_never_writes_onto_its_input(tmp_path, photo):
    disguised = tmp_path / "kq-inside.png"  # .kq bytes under a .png name: decode reads it, and would write it
    disguised.write_bytes(kquant_codec.encode_image(Image.open(photo), k=4))
    before = disguised.read_bytes()
    r = run("decode", str(disguised), str(disguised), "--force")
    assert r.returncode == 4 and "input" in r.stderr
    assert disguised.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("encode", "missing.png", "x.kq"), 3),
        (("encode", "notimage.txt", "x.kq"), 3),
        (("encode", "deep.png", "x.kq", "-k", "8"), 3),  # 16-bit: an input the quantizer cannot take
        (("bench", "deep.png", "-k", "4"), 3),
        (("encode", "float.tif", "x.kq"), 3),  # stored exactly, but no .kq layout or PNG holds mode F
        (("report", "deep.png", "-o", "rep", "-k", "2"), 3),
        (("info", "notimage.txt"), 3),
        (("info", "photo.png"), 3),  # an image, but not a .kq file
        (("decode", "photo.png", "out.bmp"), 3),  # the same: decode is not a converter for any image
        (("encode", "photo.png", "x.kq", "-k", "300"), 2),
        (("encode", "photo.png", "x.kq", "-k", "4", "--seed", "-1"), 2),
        (("encode", "photo.png", "x.kq", "--mode", "lab"), 2),
        (("decode", "photo.png", "out.unknownext"), 2),
        (("encode", "photo.png", "x.png", "-k", "4"), 2),  # .kq bytes under another name: refused
        (("decode", "photo.png", "x.kq"), 2),  # decode as an encoder: refused
        (("batch", ".", "out", "--jobs", "-1"), 2),  # checked after parsing, with the usage line all the same
        (("encode", "photo.png", "sub", "-k", "4"), 4),  # an existing folder: said so, not "use --force"
        (("frobnicate",), 2),
    ],
)
def test_errors_are_one_line_with_distinct_codes(tmp_path, photo, args, code):
    (tmp_path / "notimage.txt").write_text("hello")
    Image.new("I;16", (8, 8), 4000).save(tmp_path / "deep.png")
    Image.new("F", (8, 8), 0.5).save(tmp_path / "float.tif")
    (tmp_path / "sub").mkdir()
    r = run(*args, cwd=tmp_path)
    if args[2:3] == ("sub",):
        assert "is a directory" in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") <= 1 or r.stderr.startswith("usage:")
    assert r.stderr.startswith("usage:") == (code == 2), r.stderr
    assert not (tmp_path / "x.kq").exists() and not (tmp_path / "x.png").exists()


def test_a_kq_file_with_a_bad_header_says_what_is_wrong(tmp_path, photo):
    kq = tmp_path / "photo.kq"
    assert run("encode", str(photo), str(kq), "-k", "4").returncode == 0
    data = bytearray(kq.read_bytes())
    data[20] ^= 0x01  # the declared height: the header CRC no longer matches
    kq.write_bytes(bytes(data))
    for command in (("info", str(kq)), ("decode", str(kq), str(tmp_path / "out.png"))):
        r = run(*command)
        assert r.returncode == 3 and "header CRC mismatch" in r.stderr, r.stderr


def test_corrupt_kq_is_an_input_error(tmp_path, photo):
    kq = tmp_path / "photo.kq"
    assert run("encode", str(photo), str(kq), "-k", "4").returncode == 0
    data = bytearray(kq.read_bytes())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / "bad.kq"
    bad.write_bytes(bytes(data))
    r = run("decode", str(bad), str(tmp_path / "out.png"))
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert not (tmp_path / "out.png").exists()


def test_sigkill_mid_write_leaves_old_file_untouched(tmp_path):
    """Kill kquant while it writes a large output: the target keeps the old file, never a partial one."""
    source = tmp_path / "stripes.kq"
    x = np.arange(1000 * 1000, dtype=np.uint32).reshape(1000, 1000)
    stripes = np.dstack([(x * 7) % 256, (x // 1000) % 256, (x * 3) % 256]).astype(np.uint8)
    Image.fromarray(stripes).filter(kquant_codec.KMeansQuantize(4, mode="global")).save(source)
    target = tmp_path / "out.bmp"  # 3 MB of output: enough writes to be killed in the middle
    target.write_bytes(b"old contents")
    # A slow writer: the output file object is throttled so the kill lands mid-write.
    code = (
        "import sys, time, kquant_codec.safe_write as sw\n"
        "real = sw.atomic_output\n"
        "import contextlib\n"
        "@contextlib.contextmanager\n"
        "def slow(path, **kw):\n"
        "    with real(path, **kw) as fh:\n"
        "        class Slow:\n"
        "            def write(self, data):\n"
        "                mv = memoryview(data)\n"
        "                for i in range(0, len(mv), 4096):\n"
        "                    fh.write(mv[i:i+4096]); fh.flush(); time.sleep(0.001)\n"
        "                print('WRITING', flush=True)\n"
        "        yield Slow()\n"
        "sw.atomic_output = slow\n"
        "from kquant_codec.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "decode", str(source), str(target), "--force"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Wait until a temporary file beside the target is growing, then kill.
    deadline = time.time() + 120
    while time.time() < deadline:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".out.bmp.")]
        if temps and temps[0].stat().st_size > 64 * 1024:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("the decoder never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old contents"


def test_ctrl_c_after_the_work_is_done_exits_with_its_code_and_no_traceback(tmp_path, photo):
    """A Ctrl-C while Python waits at exit for a worker thread (here one still sleeping) ends the process at
    once with the command's own exit code: no KeyboardInterrupt traceback from threading._shutdown."""
    kq = tmp_path / "photo.kq"
    assert run("encode", str(photo), str(kq), "-k", "4").returncode == 0
    code = (
        "import sys, threading, time\n"
        "from kquant_codec import cli\n"
        "threading.Thread(target=time.sleep, args=(30,)).start()\n"
        f"sys.argv = ['kquant', 'info', {str(kq)!r}]\n"
        "cli.run()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the report is out: main() has returned or is about to
    assert first, proc.stderr.read()
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and time.monotonic() - start < 10
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_bad_kernels_setting_is_a_usage_error(tmp_path, photo):
    env = dict(os.environ, KQUANT_KERNELS="bogus")
    r = subprocess.run(
        [*KQUANT, "encode", str(photo), str(tmp_path / "x.kq"), "-k", "4"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and "KQUANT_KERNELS must be one of" in r.stderr, r.stderr
    assert not (tmp_path / "x.kq").exists()


def test_ctrl_c_before_the_command_starts_is_reported_not_a_traceback():
    """A Ctrl-C while kquant is still importing or parsing (before main's own handling) exits 130 with one line,
    as one during the work does; modelled by a main() interrupted at once."""
    code = (
        "import sys\n"
        "from kquant_codec import cli\n"
        "def interrupted(argv=None):\n"
        "    raise KeyboardInterrupt\n"
        "cli.main = interrupted\n"
        "cli.run()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stderr == "kquant: interrupted\n", (r.returncode, r.stderr)


def test_bench_json_is_strict_and_errors_leave_exact_alpha_out(tmp_path, photo):
    """An exact copy's PSNR is null, not Infinity (which strict JSON readers refuse); an RGBA image's errors are
    those of its colour bands (alpha is kept exact: counting it diluted MSE by 3/4), checked against numpy."""
    rgba = Image.open(photo).convert("RGB").resize((96, 64))
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    src = tmp_path / "rgba.png"
    rgba.save(src)
    r = run("bench", str(src), "-k", "4", "256", "--mode", "rgb", "global", "--json")
    assert r.returncode == 0, r.stderr

    def strict(constant):
        raise AssertionError(f"not JSON: {constant}")

    rows = json.loads(r.stdout, parse_constant=strict)
    by = {(row["mode"], row["k"]): row for row in rows}
    assert by["global", 256]["psnr"] is None and by["global", 256]["mse"] == 0
    quantized = rgba.filter(kquant_codec.KMeansQuantize(4, mode="rgb"))
    d = np.asarray(rgba)[:, :, :3].astype(float) - np.asarray(quantized)[:, :, :3]
    row = by["rgb", 4]
    assert row["l1"] == np.abs(d).sum() and row["mse"] == pytest.approx((d**2).mean(), rel=1e-12)
    assert row["psnr"] == pytest.approx(10 * np.log10(255**2 / (d**2).mean()), rel=1e-12)


def test_special_files_long_names_and_permissions_of_outputs(tmp_path, photo):
    """--force renamed a finished file over a FIFO (as root: over /dev/null); a name the file system refuses
    was an internal error, and one near the limit failed on the temporary name; an overwritten 0600 file
    became 0644."""
    fifo = tmp_path / "out.kq"
    os.mkfifo(fifo)
    r = run("encode", str(photo), str(fifo), "-k", "2", "--force")
    assert r.returncode == 4 and "not a regular file" in r.stderr and fifo.is_fifo(), r.stderr
    near = tmp_path / ("n" * 245 + ".kq")  # 248 bytes: allowed, though mkstemp's name would exceed 255
    assert run("encode", str(photo), str(near), "-k", "2").returncode == 0 and near.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    r = run("encode", str(photo), str(tmp_path / ("n" * 300 + ".kq")), "-k", "2")
    assert r.returncode == 4 and "File name too long" in r.stderr, r.stderr
    private = tmp_path / "private.kq"
    assert run("encode", str(photo), str(private), "-k", "2").returncode == 0
    private.chmod(0o600)
    assert run("encode", str(photo), str(private), "-k", "4", "--force").returncode == 0
    assert private.stat().st_mode & 0o777 == 0o600


def test_info_reads_a_kq_file_from_a_pipe(tmp_path, photo):
    """info opened its input three times; from a pipe the second read found it empty ("truncated header")."""
    kq = tmp_path / "photo.kq"
    assert run("encode", str(photo), str(kq), "-k", "4").returncode == 0
    r = subprocess.run([*KQUANT, "info", "/dev/stdin", "--json"], input=kq.read_bytes(), capture_output=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["file_bytes"] == kq.stat().st_size


def test_warnings_are_one_line_like_errors(tmp_path):
    """Pillow's DecompressionBombWarning came out as Python's two-line warning with a source line."""
    kq = tmp_path / "w.kq"
    Image.new("RGB", (15, 10), (1, 2, 3)).save(kq)
    code = (
        "import sys\nfrom PIL import Image\nImage.MAX_IMAGE_PIXELS = 100\n"
        f"from kquant_codec.cli import main\nsys.exit(main(['info', {str(kq)!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("kquant: warning: Image size (150 pixels) exceeds limit") and r.stderr.count("\n") == 1


def test_info_from_a_pipe_keeps_the_reason_for_a_bad_header_and_main_restores_warnings(tmp_path, photo):
    import warnings

    from kquant_codec import cli

    kq = tmp_path / "photo.kq"
    assert run("encode", str(photo), str(kq), "-k", "4").returncode == 0
    r = subprocess.run([*KQUANT, "info", "/dev/stdin"], input=kq.read_bytes()[:30], capture_output=True)
    assert r.returncode == 3 and b"truncated .kq header: 30 of 44 bytes" in r.stderr, r.stderr
    before = warnings.showwarning
    assert cli.main(["info", str(kq)]) == 0
    assert warnings.showwarning is before


def test_decode_to_png_keeps_a_colour_key(tmp_path, photo):
    """A keyed image of at most 256 colours became an indexed PNG without its key: opaque. The key is now the
    transparent palette entry, so the PNG shows the same."""
    img = Image.open(photo).convert("RGB").quantize(16).convert("RGB")
    img.info["transparency"] = img.getpixel((0, 0))
    src, kq, out = tmp_path / "keyed.png", tmp_path / "keyed.kq", tmp_path / "back.png"
    img.save(src)
    assert run("encode", str(src), str(kq)).returncode == 0
    info = json.loads(run("info", str(kq), "--json").stdout)
    assert info["payload"] == "native" and tuple(info["colour_key"]) == img.info["transparency"]
    assert run("decode", str(kq), str(out)).returncode == 0
    back = Image.open(out)
    assert back.mode == "P"
    assert np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(Image.open(src).convert("RGBA")))
    assert np.asarray(back.convert("RGBA"))[..., 3].min() == 0


def test_animations_are_refused_and_cmyk_decodes_to_png(tmp_path):
    """An animated GIF became a .kq of its first frame (encode and batch, exit 0); a CMYK .kq could not be
    decoded to PNG (exit 4 from decode, a failure in batch --decode)."""
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.putpalette([i * 80, 0, 0] * 3)
    src = tmp_path / "in"
    src.mkdir()
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    r = run("encode", str(src / "anim.gif"), str(tmp_path / "anim.kq"), "-k", "4")
    assert r.returncode == 3 and "an animation of 3 frames" in r.stderr and not (tmp_path / "anim.kq").exists()
    cmyk = Image.open(src / "anim.gif").convert("RGB").convert("CMYK")
    cmyk.save(src / "c.tif")
    r = run("batch", str(src), str(tmp_path / "out"), "--no-progress")
    assert r.returncode == 5 and "anim.gif" in r.stderr and "an animation of 3 frames" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.kq")) == ["c.kq"]
    assert run("decode", str(tmp_path / "out" / "c.kq"), str(tmp_path / "c.png")).returncode == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png").convert("RGB")), np.asarray(cmyk.convert("RGB")))
    r = run("batch", str(tmp_path / "out"), str(tmp_path / "back"), "--decode", "--no-progress")
    assert r.returncode == 0 and (tmp_path / "back" / "c.png").exists(), r.stderr
