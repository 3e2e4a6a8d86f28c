"""A task that outlives its job writes nothing: the job stops (exit 3) while a chunk runs on another
worker; that chunk used to land in the store after the lock was released (a later job could be
writing it by then). Tasks write only under the lock's fence (``lock.fenced``), and the job takes
the fence and removes its run token before it lets go of the lock."""

import os
import time

import pytest
from conftest import store_fingerprint

from gradjob.errors import JobError
from gradjob.storage import lock

MODEL = '''
import os
import time

import numpy as np
from gradjob.model.networks import network_forward, network_backward
from gradjob.model.cases import random_case

ORDER = ("W1", "b1", "W2", "b2", "W3", "b3")
BASE = random_case([4, 5, 3, 1], 16, 0).parameters
LOG = {log!r}


def on_a_worker():
    try:
        from distributed import get_worker
        get_worker()
        return True
    except ValueError:
        return False


def forward(X, Y, parameters):
    moved = np.flatnonzero(np.concatenate([(parameters[k] != BASE[k]).ravel() for k in ORDER]))
    if 32 in moved:  # W2[1, 2], chunk 10 of 3 parameters: the job stops
        raise ValueError("matrix not positive definite")
    if on_a_worker() and moved.size and moved[0] >= 27 and moved[0] not in (30, 31):
        time.sleep(1.0)  # the chunks beside chunk 10 (9 or 11) run on after the job stops
        with open(LOG, "a") as f:
            f.write("slow\\n")
    return network_forward(X, Y, parameters)


backward = network_backward
'''


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_chunk_running_when_the_job_stops_is_not_written_after_it(tmp_path, write_model, gradjob, cluster_address):
    log = tmp_path / "slow.log"
    model = write_model(MODEL.format(log=str(log)))
    store = tmp_path / "s.zarr"
    run = gradjob("submit", "--model", model, "--forward", "forward", "--backward", "backward", "--case", "random",
                  "--layers", "4,5,3,1", "--chunk-size", "3", "--no-fast", "--store", store,
                  "--scheduler", cluster_address)
    returned, at_return = store_fingerprint(store), lines(log)
    assert run.exit_code == 3
    assert "gradjob: error: the forward failed at W2[1, 2] + step (parameter 32, chunk 10)" in run.stderr
    assert not lock.lock_path(str(store)).exists() and not lock.fence_path(str(store)).exists()
    count, settled = at_return, 0
    while settled < 30:  # until the chunk still running has made no evaluation for 3 s
        time.sleep(0.1)
        settled = settled + 1 if lines(log) == count else 0
        count = lines(log)
    assert count > at_return  # a chunk was still evaluating after the job returned
    time.sleep(1)
    assert store_fingerprint(store) == returned


def test_the_fence_lets_only_the_holding_job_write(tmp_path):
    store = str(tmp_path / "s.zarr")
    with lock.holding(store):
        run = lock.run_token(store)
        with lock.fenced(store, run):
            pass
        with pytest.raises(JobError, match="has ended; its chunk is not written"):
            with lock.fenced(store, "an earlier run"):
                pass
    with pytest.raises(JobError, match=f"^the job that started this task on {store} has ended; its chunk is not "
                                       "written$"):
        with lock.fenced(store, run):
            pass
    with lock.holding(store):  # the next job's lock: the old run still writes nothing
        with pytest.raises(JobError):
            with lock.fenced(store, run):
                pass


def test_a_link_or_fifo_at_the_fence_path_is_refused_in_one_line(tmp_path, gradjob):
    fence = tmp_path / "s.zarr.lock.fence"
    fence.symlink_to(tmp_path / "elsewhere")
    run = gradjob("submit", "--epsilon", "1e-7", "--store", "s.zarr")
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", "gradjob: error: cannot write the store at s.zarr: "
                                                       "s.zarr.lock.fence: Too many levels of symbolic links; remove it "
                                                       "or choose another --store\n")
    fence.unlink()
    os.mkfifo(fence)
    run = gradjob("submit", "--epsilon", "1e-7", "--store", "s.zarr")
    assert (run.exit_code, run.stderr) == (2, "gradjob: error: s.zarr.lock.fence is not a regular file, not a gradjob "
                                              "fence; remove it or choose another --store\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr.lock.fence"]  # no store, no lock left
