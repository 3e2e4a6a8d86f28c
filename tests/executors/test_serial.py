"""The serial executor runs its tasks with one BLAS thread, as a Dask worker does, on the caller's
thread or on its helper thread (with a task time limit), and gives the process its threads back."""

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from gradjob.executors.serial import SerialExecutor
from gradjob.run.plan import plan_chunks


def blas_threads(*_args) -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_blas_threads():
    """conftest.py limits BLAS to one thread for the whole session: two here, so one is seen being set."""
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != {2}:
            pytest.skip("BLAS cannot run two threads here")
        yield


@pytest.mark.parametrize("timeout", [None, 60.0], ids=["this-thread", "helper-thread"])
def test_tasks_run_with_one_blas_thread_and_the_process_gets_its_threads_back(two_blas_threads, timeout):
    seen = []
    with SerialExecutor() as executor:
        executor.task_timeout = timeout
        executor.run_chunks(blas_threads, None, plan_chunks(10, 4), lambda chunk, threads: seen.append(threads),
                            describe=str)
        assert blas_threads() == {2}
        mapped = executor.map(blas_threads, None, [(1,), (2,)])
    assert seen == [{1}] * 3 and mapped == [{1}] * 2
    assert blas_threads() == {2}


def test_a_failing_task_gives_the_threads_back_too(two_blas_threads):
    def fails(*_args):
        raise RuntimeError("boom")

    with SerialExecutor() as executor, pytest.raises(RuntimeError, match="boom"):
        executor.run_chunks(fails, None, plan_chunks(3, 3), lambda *a: None, describe=str)
    assert blas_threads() == {2}
