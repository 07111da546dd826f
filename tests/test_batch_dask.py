"""The same batch on a real dask.distributed LocalCluster gives the identical dataset,
and Dask reads that dataset back as one table per kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tcp_teardown.batch import Options, run_batch
from tests.conftest import needs_tshark
from tests.test_batch import Archive, archive_or_skip, assert_same_dataset, read_kind

distributed = pytest.importorskip("dask.distributed")
dd = pytest.importorskip("dask.dataframe")
# Dask's own Parquet reader trips a pandas deprecation warning; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return archive_or_skip(tmp_path_factory.mktemp("dask"), real=5, seeds=4)


def options(out: Path, archive: Archive, **extra: object) -> Options:
    return Options(out=out, engine="tshark", jobs=2, root=archive.root.parent, progress=False, **extra)


@needs_tshark
def test_local_cluster_gives_the_identical_dataset(small_archive: Archive, tmp_path: Path) -> None:
    pool = run_batch([str(small_archive.root)], options(tmp_path / "pool", small_archive))
    dask = run_batch([str(small_archive.root)], options(tmp_path / "dask", small_archive, dask="local"))
    assert dask.backend == "dask local" and dask.workers == 2
    assert (dask.done, dask.skipped, dask.failed) == (pool.done, pool.skipped, pool.failed)
    assert [f["file"] for f in dask.failed] == [small_archive.corrupt]
    assert_same_dataset(tmp_path / "dask", tmp_path / "pool")
    # Dask reads each kind as one table: the rows pyarrow reads, with the `day` partition.
    for kind in ("connections", "frames", "endpoints"):
        frame = dd.read_parquet(tmp_path / "dask" / kind).compute()
        assert len(frame) == read_kind(tmp_path / "dask", kind).num_rows
    conns = dd.read_parquet(tmp_path / "dask" / "connections")
    assert "day" in conns.columns
    assert conns["close"].astype(str).value_counts().compute().sum() == len(conns)


@needs_tshark
def test_an_external_scheduler_address_is_used(small_archive: Archive, tmp_path: Path) -> None:
    """`--dask ADDRESS`: a scheduler started elsewhere (here: in this process) runs the tasks."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        ring_only = tmp_path / "in"
        shutil.copytree(small_archive.root / "ring", ring_only / "ring")
        summary = run_batch([str(ring_only)], Options(out=tmp_path / "ds", engine="tshark", jobs=1,
                                                      root=tmp_path, progress=False, dask=cluster.scheduler_address))
    assert summary.backend.startswith("dask tcp://") and summary.workers == 1
    assert summary.done == len(small_archive.ring) and summary.rotation_sets == 1
