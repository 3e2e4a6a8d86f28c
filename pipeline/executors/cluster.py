"""The Dask edge: an embedded LocalCluster on 127.0.0.1 or an existing scheduler, and the
submission of chunk tasks with progress, worker-loss handling and clear failures.

``DaskExecutor`` has the shape of ``serial.SerialExecutor``: a check runs on either."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import dask
from distributed import Client, LocalCluster, as_completed
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from gradjob.errors import InputError, JobError
from gradjob.executors.limits import over_limit_message
from gradjob.run.plan import Chunk

CONNECT_SECONDS = 10
POLL_SECONDS = 1.0  # how often the running tasks' times are checked against the time limit
# The embedded cluster runs one worker per core, so Dask's own periodic work takes CPU from the
# tasks. Measured on an idle 2-worker cluster: 12% of a core by default, 4% with these.
EMBEDDED_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,  # the statistical profiler samples every 10 ms
    "distributed.admin.tick.interval": "1s",      # the event-loop health check, every 20 ms
}


@contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client for ``scheduler``, or for a new local cluster of ``workers`` processes."""
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_SECONDS}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_SECONDS} s ({exc}); "
                "check the address and that the scheduler is running"
            ) from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_SECONDS)
        except TimeoutError:
            client.close()
            raise InputError(f"the Dask scheduler at {scheduler} has no workers; start some with `dask worker {scheduler}`") from None
        with client:
            yield client
        return
    # a scratch directory of its own, removed afterwards: Dask's default (dask-scratch-space in $TMPDIR)
    # keeps a lock file per worker after every run
    scratch = tempfile.mkdtemp(prefix="gradjob-dask-")
    try:
        with dask.config.set({**EMBEDDED_CLUSTER_CONFIG, "temporary-directory": scratch}):  # the scheduler's too
            # the workers' own logs stay out of stderr: gradjob says each task's failure in one line, and a
            # cluster shut down by a signal has workers log tracebacks of heartbeats to a closed scheduler
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
                                   local_directory=scratch)
            with cluster, Client(cluster) as client:
                yield client
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class DaskExecutor:
    """An embedded cluster of ``workers`` processes, or the existing one at ``scheduler``."""

    def __init__(self, scheduler: str | None, workers: int):
        self._context = dask_client(scheduler, workers)
        self._named = scheduler is not None
        self.client: Client | None = None
        self.dashboard: str | None = None
        self.task_timeout: float | None = None  # seconds a task may run before the job ends (``job`` sets it)

    def __enter__(self) -> "DaskExecutor":
        self.client = self._context.__enter__()
        self.dashboard = dashboard_link(self.client, self._named)
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def run_chunks(self, function: Callable, context, chunks: Sequence[Chunk],
                   on_done: Callable[[Chunk, object], None], describe: Callable[[int], str],
                   note: Callable[[str], None] = lambda text: None) -> None:
        run_chunks(self.client, function, context, chunks, on_done, describe, note, self.task_timeout)

    def map(self, function: Callable, context, batches: Sequence[tuple]) -> list:
        """``function(context, *batch)`` for every batch, results in order."""
        futures = [self.client.submit(function, context, *batch, pure=False) for batch in batches]
        try:
            for _ in _completed(self.client, futures, self.task_timeout,
                                lambda future: over_limit_message(None, self.task_timeout)):
                pass
            return self.client.gather(futures)
        except KilledWorker:
            raise JobError("a worker died while re-verifying suspects on smaller steps; its forward may crash the "
                           "process. Finished chunks are kept in the store: resubmit to retry") from None

    def peak_worker_rss(self) -> int | None:
        return peak_worker_rss(self.client)


class SharedCluster:
    """One cluster for all the checks of a job file: started by the first check that needs one,
    shut down when the job ends. Its dashboard line is shown to the first check only."""

    def __init__(self):
        self._executors: dict[tuple, DaskExecutor] = {}

    def __enter__(self) -> "SharedCluster":
        return self

    def __exit__(self, *exc) -> None:
        while self._executors:
            self._executors.popitem()[1].__exit__(*exc)

    @contextmanager
    def use(self, request) -> Iterator[DaskExecutor]:
        """The cluster ``request`` names (its scheduler, or an embedded one of its workers), left open."""
        key = (request.scheduler, request.workers)
        executor = self._executors.get(key)
        if executor is None:
            executor = DaskExecutor(request.scheduler, request.workers).__enter__()
            self._executors[key] = executor
        try:
            yield executor
        finally:
            executor.dashboard = None  # said once per job


def dashboard_link(client: Client, named: bool = True) -> str | None:
    """The dashboard's address, or why there is none: Dask serves its dashboard only where bokeh
    is installed (elsewhere the address answers "Dask needs bokeh"), so a dead link is not given.
    For an embedded cluster (``named`` False) without bokeh, the usual case, nothing is said."""
    try:
        has_bokeh = client.run_on_scheduler(_has_bokeh)
        link = client.dashboard_link
    except Exception:
        return "not available from this scheduler" if named else None
    if not has_bokeh:
        return ("not available (the scheduler has no bokeh: pip install 'gradjob[dashboard]' where it runs)"
                if named else None)
    return link


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def peak_worker_rss(client: Client) -> int | None:
    """The largest peak resident memory of any worker process, in bytes."""
    try:
        peaks = client.run(_peak_rss)
    except Exception:
        return None
    return max(peaks.values()) if peaks else None


def _peak_rss() -> int:
    """This process's own peak RSS. Not ru_maxrss: Linux carries it over fork and exec, so a
    worker started from the client would report the client's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # elsewhere: an upper bound


def run_chunks(client: Client, function: Callable, context, chunks: Sequence[Chunk],
               on_done: Callable[[Chunk, object], None], describe: Callable[[int], str],
               note: Callable[[str], None] = lambda text: None, limit: float | None = None) -> None:
    """Run ``function(context, chunk)`` for every chunk, passing each result to ``on_done``.

    A lost worker is handled by the scheduler, which re-runs its chunks elsewhere. A chunk Dask
    gives up on (KilledWorker) is only a suspect: every task queued or running on a dying worker
    is charged with its death. So the job stops, waits until none of its tasks runs, and re-runs each
    suspect alone. The one that still kills workers ends the job, named; the others are kept and
    the job goes on with the rest. A task running longer than ``limit`` seconds ends the job, named.
    """
    def over(future) -> str:
        return over_limit_message(futures[future], limit, describe)

    remaining = list(chunks)
    while remaining:  # each round finishes or names at least one suspect, so this ends
        futures = {client.submit(function, context, chunk, pure=False): chunk for chunk in remaining}
        keys = {future.key for future in futures}
        suspects, remaining = _run_until_a_chunk_is_killed(client, futures, on_done, limit, over)
        suspects.sort(key=lambda chunk: chunk.index)
        if suspects:
            note(f"workers kept dying while running chunk{'s' if len(suspects) > 1 else ''} "
                 f"{', '.join(str(chunk.index) for chunk in suspects)}; "
                 "re-running each alone to find the one that crashes")
            _wait_until_finished(client, keys)
        for chunk in suspects:
            future = client.submit(function, context, chunk, pure=False)
            futures = {future: chunk}
            try:
                for _ in _completed(client, [future], limit, over):
                    pass
                result = _result(future, chunk)
            except KilledWorker:
                raise JobError(
                    f"chunk {chunk.index} (parameters {chunk.start}–{chunk.stop - 1}: {describe(chunk.start)} to "
                    f"{describe(chunk.stop - 1)}) killed the workers that ran it, also when run alone; its forward "
                    "may crash the process. Finished chunks are kept in the store"
                ) from None
            on_done(chunk, result)


def _run_until_a_chunk_is_killed(client: Client, futures: dict, on_done: Callable[[Chunk, object], None],
                                 limit: float | None, over: Callable[[object], str]) -> tuple[list[Chunk], list[Chunk]]:
    """Wait for the chunks' futures until all finish or one fails with KilledWorker; then return
    every chunk that failed that way (the suspects) and the chunks still to run, whose tasks are
    cancelled."""
    suspects = []
    try:
        for future in _completed(client, list(futures), limit, over):
            chunk = futures.pop(future)  # released once done: workers forget finished tasks
            try:
                result = _result(future, chunk)
            except KilledWorker:
                suspects.append(chunk)
                break
            on_done(chunk, result)
            del future
        for future, chunk in list(futures.items()):  # what else settled while the first was reported
            if future.status == "finished":
                on_done(chunk, future.result())
            elif future.status == "error" and isinstance(future.exception(), KilledWorker):
                suspects.append(chunk)
            else:
                continue  # still running, or failed otherwise (it fails again when re-run)
            del futures[future]
    finally:
        client.cancel(list(futures))
    return suspects, list(futures.values())


def _completed(client: Client, futures: list, limit: float | None, over: Callable[[object], str]) -> Iterator:
    """The futures as they complete (``as_completed``); every ``POLL_SECONDS`` the workers say how
    long each of these tasks has been running, and one past ``limit`` seconds ends the job with
    ``over(future)``: a forward that hangs must not hang the job."""
    pending = as_completed(futures)
    by_key = {future.key: future for future in futures}
    checked = time.monotonic()
    while True:
        batch = pending.next_batch(block=False)
        if batch:
            yield from batch
        elif pending.is_empty():
            return
        elif limit is not None and time.monotonic() - checked >= POLL_SECONDS:
            checked = time.monotonic()
            overdue = _longest_running(client, set(by_key))
            if overdue is not None and overdue[1] > limit:
                client.cancel(futures)
                raise JobError(over(by_key[overdue[0]]))
        else:
            with pending.thread_condition:
                pending.thread_condition.wait(timeout=0.1)


def _longest_running(client: Client, keys: set) -> tuple[object, float] | None:
    """The task among ``keys`` that has been running longest on any worker, with its seconds."""
    try:
        running = client.run(_running_seconds, keys)
    except Exception:  # a worker died while being asked: the scheduler handles it
        return None
    longest = [item for per_worker in running.values() for item in per_worker.items()]
    return max(longest, key=lambda item: item[1]) if longest else None


def _running_seconds(keys: set, dask_worker) -> dict:
    from distributed.metrics import time as now_of  # the clock the worker stamps ``start_time`` with

    now = now_of()
    return {key: now - task.start_time for key in dask_worker.active_keys if key in keys
            and (task := dask_worker.state.tasks.get(key)) is not None and task.start_time is not None}


def _result(future, chunk: Chunk):
    """The future's result; KilledWorker passes through, a chunk the scheduler cancelled ends the job."""
    try:
        return future.result()
    except FutureCancelledError:
        raise JobError(f"chunk {chunk.index} was cancelled by the scheduler; resubmit to resume") from None


def _wait_until_finished(client: Client, keys: set) -> None:
    """Until no worker runs any of these tasks: a cancelled task runs on to its end, and a suspect
    re-run beside it would be charged again if it crashed its worker. Other clients' tasks on a
    shared cluster are not waited for."""
    while True:
        try:
            running = client.run(_running_tasks, keys)
        except Exception:  # a worker died while being asked
            running = {"": 1}
        if not any(running.values()):
            return
        time.sleep(0.1)


def _running_tasks(keys: set, dask_worker) -> int:
    return sum(task.key in keys for task in dask_worker.state.all_running_tasks)
