"""Run the batch tasks on a Dask distributed cluster instead of the local process pool.

The tasks are the same functions with the same specs (tasks.py); the driver and its
manifest stay here. Workers read the captures and write the dataset by path, so the
archive and the dataset must be on storage every worker sees under the same path
(`--dask local` starts a LocalCluster on this machine, where that holds trivially).
Dask retries a task whose worker died; a task lost for good reaches the driver as an
exception and fails its capture, like a dead pool worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from tcp_teardown.errors import ExitCode, TeardownError

log = logging.getLogger(__name__)


class DaskBackend:
    """A dask.distributed Client: to a scheduler address, or to a LocalCluster."""

    name = "dask"

    def __init__(self, address: str, jobs: int) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise TeardownError("--dask needs dask.distributed: pip install 'tcp-teardown[dask]'",
                                ExitCode.USAGE) from exc
        self.cluster = None
        try:
            if address == "local":
                # One single-threaded worker process per job: the tasks are CPU-bound Python
                # and each runs a tshark of its own.
                self.cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)
            else:
                self.client = Client(address, timeout="30s")
        except OSError as exc:
            raise TeardownError(f"cannot reach the Dask scheduler at {address}: {exc}",
                                ExitCode.USAGE) from exc
        self.slots = max(sum(self.client.nthreads().values()), 1)
        self.name = "dask local" if self.cluster is not None else f"dask {address}"

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        # pure=False: the same spec run twice (a retry after a crash) must run again.
        return self.client.submit(fn, *args, pure=False)

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        from dask.distributed import wait

        try:
            done, _ = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return []
        return list(done)

    def result(self, future: Any) -> Any:
        try:
            return future.result()
        finally:
            future.release()

    def close(self, abort: bool = False) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
