"""``kquant batch --scheduler``: the same per-file work on a real Dask cluster (two worker processes) gives
byte-identical outputs to a serial run, with the same resuming, failures and summary."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from kquant_codec import batch, cli
from kquant_codec.batch import SUMMARY_NAME, run_batch

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of two single-threaded worker processes, closed whatever happens."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name != SUMMARY_NAME
    }


def test_dask_cluster_matches_serial_run(cluster, tmp_path, china, flower):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        china.crop((60 * i, 40 * i, 60 * i + 120, 40 * i + 90)).save(src / f"c{i}.png")
        flower.crop((50 * i, 30 * i, 50 * i + 100, 30 * i + 80)).save(src / "sub" / f"f{i}.jpg")
    (src / "sub" / "broken.png").write_bytes((src / "c0.png").read_bytes()[:300])  # fails, does not stop the run

    serial = tmp_path / "serial"
    ref = run_batch(src, serial, k=16, mode="rgb", seed=2, jobs=1, progress=False)
    assert ref.encoded == 6 and ref.failed == 1

    remote = tmp_path / "remote"
    argv = ["batch", str(src), str(remote), "-k", "16", "--seed", "2", "--no-progress"]
    assert cli.main([*argv, "--scheduler", cluster.scheduler_address]) == 5  # some files failed
    assert _files(remote) == _files(serial) and len(_files(remote)) == 6
    summary = json.loads((remote / SUMMARY_NAME).read_text())
    assert summary["scheduler"] == cluster.scheduler_address and summary["jobs"] is None
    assert (summary["encoded"], summary["failed"]) == (6, 1)
    assert summary["failures"][0]["path"] == "sub/broken.png"
    assert summary["bytes_in"] == ref.bytes_in and summary["bytes_out"] == ref.bytes_out

    # Resuming works the same way: everything done is skipped, a changed input is redone on the cluster.
    Image.open(src / "c1.png").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(src / "c1.png")
    again = run_batch(src, remote, k=16, seed=2, scheduler=cluster.scheduler_address, progress=False)
    assert (again.encoded, again.skipped, again.failed) == (1, 5, 1)
    assert again.redone == {"input changed": 1}
    run_batch(src, serial, k=16, seed=2, jobs=1, progress=False)
    assert _files(remote) == _files(serial)


def test_unreachable_scheduler_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch, "DASK_CONNECT_TIMEOUT", "1s")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "in" / "a.png")
    argv = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress", "--scheduler", "tcp://127.0.0.1:9"]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "cannot connect to the Dask scheduler" in capsys.readouterr().err
