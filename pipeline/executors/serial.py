"""The serial executor: every task in this process, in order. The reference the Dask executor is
held against (tests compare their stores bit for bit), and the executor of small checks, where
starting a cluster would cost more than the check.

With a time limit (``task_timeout``) the tasks run on one helper thread that the caller waits
for at most that long: a forward that hangs ends the job, named. Python cannot stop a thread, so
a hung task's thread is left behind (a daemon: it does not keep the process alive).

While tasks run, BLAS runs one thread, as in every Dask worker (the nanny's ``pre-spawn-environ``):
a check small enough to run here multiplies small matrices, which a second BLAS thread only slows
down when other processes share the cores (tests/conftest.py: a float32 ReLU check ran 4× slower).
The seed network's matrices are below OpenBLAS's threading threshold: its job is not faster."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Sequence

from gradjob.errors import JobError
from gradjob.executors.limits import over_limit_message
from gradjob.run.plan import Chunk


class SerialExecutor:
    dashboard = None

    def __init__(self):
        self.task_timeout: float | None = None  # seconds a task may run before the job ends (``job`` sets it)
        self._runner: _Runner | None = None

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def _call(self, function: Callable, args: tuple, over: Callable[[], str]):
        if self.task_timeout is None:
            return function(*args)
        if self._runner is None:  # one thread for every task: the tasks' per-thread workspace stays warm
            self._runner = _Runner()
        return self._runner.call(function, args, self.task_timeout, over)

    def run_chunks(self, function: Callable, context, chunks: Sequence[Chunk],
                   on_done: Callable[[Chunk, object], None], describe: Callable[[int], str],
                   note: Callable[[str], None] = lambda text: None) -> None:
        with one_blas_thread():
            for chunk in chunks:
                on_done(chunk, self._call(function, (context, chunk),
                                          lambda: over_limit_message(chunk, self.task_timeout, describe)))

    def map(self, function: Callable, context, batches: Sequence[tuple]) -> list:
        with one_blas_thread():
            return [self._call(function, (context, *batch), lambda: over_limit_message(None, self.task_timeout))
                    for batch in batches]

    def peak_worker_rss(self) -> int | None:
        return None


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread (for the whole process: the task thread too), restored after."""
    from threadpoolctl import threadpool_limits  # here: ``import gradjob`` does not pay for it

    with threadpool_limits(limits=1, user_api="blas"):
        yield


class _Runner:
    """A daemon thread that runs one call at a time; the caller waits for each at most ``limit``."""

    def __init__(self):
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="gradjob-task", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            function, args, answer = item
            try:
                answer.put((True, function(*args)))
            except BaseException as exc:  # handed to the caller, raised there
                answer.put((False, exc))

    def call(self, function: Callable, args: tuple, limit: float, over: Callable[[], str]):
        answer: queue.Queue = queue.Queue(maxsize=1)
        self._calls.put((function, args, answer))
        try:
            ok, value = answer.get(timeout=limit)
        except queue.Empty:
            self.close()
            raise JobError(over()) from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """No more calls: the thread ends after the one it runs (if it ever returns)."""
        self._calls.put(None)
