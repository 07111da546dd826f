"""Whole capture archives: `tcp-teardown batch DIR|GLOB... --out DATASET`.

    discover.py  find captures (recursively; pcap, pcapng, .gz, .zst) and rotation sets
    manifest.py  what is done, so a re-run skips it and retries what failed
    jobs.py      the tasks of one unit: a capture, a large capture in pieces, a rotation set
    tasks.py     what a worker runs (picklable specs in, outcomes out; errors as values)
    chunks.py    split large captures (editcap -c / native batches), regroup by 4-tuple
    stitch.py    analyze each 4-tuple group exactly, renumber streams, write the parts
    dataset.py   the hive-partitioned Parquet layout, atomic parts, endpoints over all rows
    runner.py    the driver: local process pool; dask_runner.py: a Dask cluster
    progress.py  the progress line on stderr
    synth.py     large synthetic captures for load tests and the benchmark

    from tcp_teardown.batch import Options, run_batch
    summary = run_batch(["archive/"], Options(out=Path("dataset")))
"""

from tcp_teardown.batch.runner import Options, Summary, run_batch

__all__ = ["Options", "Summary", "run_batch"]
