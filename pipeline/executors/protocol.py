"""What a check needs of wherever its tasks run. ``serial.SerialExecutor`` (this process) and
``cluster.DaskExecutor`` (a Dask cluster) both satisfy it, and ``run.job`` is written against it
alone, so another executor (a batch system's) is one class held to this protocol by its test."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

from gradjob.run.plan import Chunk


@runtime_checkable
class Executor(Protocol):
    dashboard: str | None        # a link to show while the job runs, or None
    task_timeout: float | None   # seconds a task may run before the job ends (``job`` sets it)

    def __enter__(self) -> Executor:
        """Connect (start a cluster, or nothing): before any store is written."""

    def __exit__(self, *exc) -> None:
        """Release what ``__enter__`` took; tasks still running are stopped or left to finish."""

    def run_chunks(self, function: Callable, context, chunks: Sequence[Chunk],
                   on_done: Callable[[Chunk, object], None], describe: Callable[[int], str],
                   note: Callable[[str], None] = lambda text: None) -> None:
        """``function(context, chunk)`` for every chunk, ``on_done`` called as each finishes (in any
        order); a task over ``task_timeout`` ends the job with a line naming its chunk."""

    def map(self, function: Callable, context, batches: Sequence[tuple]) -> list:
        """``function(context, *batch)`` for every batch, results in order."""

    def peak_worker_rss(self) -> int | None:
        """The largest resident memory of a worker process in bytes, or None where there is none."""
