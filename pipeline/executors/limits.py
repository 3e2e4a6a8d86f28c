"""The per-task time limit: a forward that hangs at one perturbation ends the job, named, instead
of hanging it forever. Both executors enforce it and say it in the same words."""

from __future__ import annotations

from typing import Callable

from gradjob.run.plan import Chunk

MIN_SECONDS = 60.0
SLACK = 50  # the default allows a task fifty times the time the calibration's measurements predict


def default_limit(seconds_per_evaluation: float, evaluations_per_task: int) -> float:
    """Generous: max(60 s, 50× the task's expected time), so a slow worker or a busy machine never trips it."""
    return max(MIN_SECONDS, SLACK * seconds_per_evaluation * evaluations_per_task)


def over_limit_message(chunk: Chunk | None, limit: float | None, describe: Callable[[int], str] | None = None) -> str:
    """One line naming the task that ran too long (``chunk``; None: a batch of the re-verification)."""
    what = ("re-verifying suspects on smaller steps" if chunk is None else
            f"chunk {chunk.index} (parameters {chunk.start}–{chunk.stop - 1}: {describe(chunk.start)} to "
            f"{describe(chunk.stop - 1)})")
    return (f"{what} ran longer than the task time limit of {limit:g} s; its forward may hang at one of these "
            "parameters (raise the limit with --task-timeout or the job file's task_timeout if it is only slow); "
            "finished chunks are kept in the store")
