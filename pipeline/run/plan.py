"""The plan: the parameter index range [0, n) cut into chunks, as data, before anything runs.

Each chunk is one task and exactly one Zarr chunk of every per-parameter array, so no two tasks
ever write the same Zarr chunk and "chunk done" is a per-chunk fact the store can answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# ~1 s of work per task on the 784-512-256-1 benchmark network: per-task overhead stays a few
# percent and a resume loses at most that; fewer, larger tasks also keep Dask's per-task
# bookkeeping on the workers (measured ~22 KiB a task) from growing with n.
MAX_DEFAULT_CHUNK = 8192
TASKS_PER_WORKER = 8


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_chunks(n_parameters: int, chunk_size: int) -> tuple[Chunk, ...]:
    """Chunks that cover [0, n) exactly once, in order."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    return tuple(
        Chunk(k, start, min(start + chunk_size, n_parameters))
        for k, start in enumerate(range(0, n_parameters, chunk_size))
    )


def default_chunk_size(n_parameters: int, workers: int) -> int:
    """About eight tasks per worker (balance, small resume loss), at most 8192 parameters each."""
    return max(1, min(MAX_DEFAULT_CHUNK, math.ceil(n_parameters / (max(1, workers) * TASKS_PER_WORKER))))


@dataclass(frozen=True)
class Plan:
    """What a check will do, before it does it: printable (``gradjob submit --dry-run``) and
    testable without a store or a cluster."""

    n_parameters: int
    chunk_size: int
    chunks: tuple[Chunk, ...]
    todo: tuple[Chunk, ...]      # the chunks not yet done in the store
    store: str
    evaluator: str
    steps: str                   # how steps are chosen
    worker_bytes: int            # data a worker holds for this job, besides Python and Dask
    asked_chunk_size: int | None = None  # a --chunk-size above the parameter count, clamped to it

    def to_text(self) -> str:
        done = len(self.chunks) - len(self.todo)
        return "\n".join([
            f"plan    {self.n_parameters:,} parameters in {len(self.chunks)} chunks of {self.chunk_size}"
            + (f" (chunk size {self.asked_chunk_size:,} asked: more than the parameters, clamped to them)"
               if self.asked_chunk_size else "")
            + (f" ({done} already done in the store)" if done else ""),
            f"  store     {self.store}",
            f"  evaluator {self.evaluator}",
            f"  steps     {self.steps}",
            f"  memory    about {self.worker_bytes / 2**20:.1f} MiB of data per worker",
        ])


def make_plan(n_parameters: int, workers: int, chunk_size: int | None, done=None, *, store: str, evaluator: str,
              steps: str, worker_bytes: int) -> Plan:
    """Chunks for a new store (``chunk_size`` or about eight tasks per worker), or for the chunks
    of an existing one that ``done`` says are still missing."""
    asked = chunk_size or default_chunk_size(n_parameters, workers)
    size = clamped_chunk_size(asked, n_parameters)  # a chunk above n would make Zarr allocate all of it
    chunks = plan_chunks(n_parameters, size)
    todo = chunks if done is None else tuple(c for c in chunks if not done[c.index])
    return Plan(n_parameters, size, chunks, todo, store, evaluator, steps, worker_bytes,
                asked if asked != size else None)


def clamped_chunk_size(chunk_size: int, n_parameters: int) -> int:
    """No chunk is larger than the parameters: one chunk then holds them all."""
    return max(1, min(chunk_size, n_parameters))
