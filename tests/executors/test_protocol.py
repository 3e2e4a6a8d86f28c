"""Issue 21: the serial and the Dask executor satisfy one ``Executor`` protocol, with the same
signatures, so ``run.job`` can take either (and a new executor is held to the same contract)."""

import inspect

import pytest

from gradjob.executors.cluster import DaskExecutor
from gradjob.executors.protocol import Executor
from gradjob.executors.serial import SerialExecutor

METHODS = ("__enter__", "__exit__", "run_chunks", "map", "peak_worker_rss")


@pytest.mark.parametrize("make", [SerialExecutor, lambda: DaskExecutor(None, 1)], ids=["serial", "dask"])
def test_both_executors_satisfy_the_protocol_with_its_signatures(make):
    executor = make()   # the Dask one connects only in __enter__: nothing starts here
    assert isinstance(executor, Executor)
    for name in METHODS:
        ours = inspect.signature(getattr(type(executor), name))
        theirs = inspect.signature(getattr(Executor, name))
        assert list(ours.parameters) == list(theirs.parameters), name
    assert (executor.dashboard, executor.task_timeout) == (None, None)


def test_an_executor_missing_a_method_is_not_one():
    class NoMap:
        dashboard = task_timeout = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def run_chunks(self, function, context, chunks, on_done, describe, note=None):
            pass

        def peak_worker_rss(self):
            return None

    assert not isinstance(NoMap(), Executor)
