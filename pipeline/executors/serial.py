"""The serial executor: every task in this process, in order. The reference the Dask executor is
held against (tests compare their stores bit for bit), and the executor of the Python API's
small checks, where starting a cluster would cost more than the check."""

from __future__ import annotations

from typing import Callable, Sequence

from gradjob.run.plan import Chunk


class SerialExecutor:
    dashboard = None

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run_chunks(self, function: Callable, context, chunks: Sequence[Chunk],
                   on_done: Callable[[Chunk, object], None], describe: Callable[[int], str],
                   note: Callable[[str], None] = lambda text: None) -> None:
        for chunk in chunks:
            on_done(chunk, function(context, chunk))

    def map(self, function: Callable, context, batches: Sequence[tuple]) -> list:
        return [function(context, *batch) for batch in batches]

    def peak_worker_rss(self) -> int | None:
        return None
