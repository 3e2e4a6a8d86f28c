"""Issue 14: the plan is data, the serial executor is the oracle the Dask one is held against, and
reductions need no cluster."""

import numpy as np
import pytest
import zarr

from gradjob.executors.cluster import DaskExecutor
from gradjob.executors.serial import SerialExecutor
from gradjob.report import text as report
from gradjob.run import job, plan
from gradjob.types import Request

ARRAYS = ("theta", "grad", "gradapprox", "cost_plus", "cost_minus", "step", "noise", "done", "case/X", "case/Y",
          "verify/index", "verify/klass", "verify/estimate", "verify/cost_plus")


def test_plan_covers_the_range_once_and_prints_without_a_store():
    made = plan.make_plan(1000, 2, None, store="s.zarr", evaluator="forward", steps="fixed", worker_bytes=2 << 20)
    assert made.chunk_size == 63 and len(made.chunks) == 16 and made.todo == made.chunks
    covered = np.zeros(1000, dtype=int)
    for chunk in made.chunks:
        covered[chunk.start:chunk.stop] += 1
    assert covered.tolist() == [1] * 1000
    resumed = plan.make_plan(1000, 2, 63, np.arange(16) % 2 == 0, store="s.zarr", evaluator="forward", steps="fixed",
                             worker_bytes=0)
    assert [c.index for c in resumed.todo] == list(range(1, 16, 2))
    assert resumed.to_text().splitlines()[0] == "plan    1,000 parameters in 16 chunks of 63 (8 already done in the store)"


@pytest.mark.parametrize("request_", [
    Request(case="seed", epsilon=1e-7, chunk_size=5),                                   # the seed's planted bugs
    Request(model="network", case="random", layers=(30, 20, 10, 1), examples=12, chunk_size=97),  # incremental
], ids=["seed", "random-network"])
def test_serial_and_dask_executors_write_identical_stores(request_, tmp_path, cluster_address):
    serial = job.run(request_.replace(store=str(tmp_path / "serial.zarr")), executor=SerialExecutor)
    dask = job.run(request_.replace(store=str(tmp_path / "dask.zarr"), scheduler=cluster_address),
                     executor=lambda: DaskExecutor(cluster_address, 1))
    a, b = (zarr.open_group(tmp_path / name, mode="r") for name in ("serial.zarr", "dask.zarr"))
    for name in ARRAYS:
        assert a[name][...].tobytes() == b[name][...].tobytes(), name
    assert report.to_json(serial)["tensors"] == report.to_json(dask)["tensors"]
    assert serial.reduction.difference == dask.reduction.difference


def test_report_of_a_store_needs_no_cluster(tmp_path):
    outcome = job.run(Request(case="seed", epsilon=1e-7, store=str(tmp_path / "s.zarr")), executor=SerialExecutor)
    again = job.reduce_store(str(tmp_path / "s.zarr"))
    assert report.to_text(again) == report.to_text(outcome)
    assert again.reduction.difference == 0.2850931567761623


def test_log_lines_count_the_suspects_as_chunks_finish(tmp_path):
    """A nightly log shows trouble before the end: each progress line counts the elements found beyond
    their noise bound so far, the same ones re-verification later takes up."""
    import io
    import re

    from gradjob.run.progress import LogLines

    log = io.StringIO()
    outcome = job.run(Request(case="seed", store=str(tmp_path / "s.zarr"), chunk_size=5),
                      progress=LogLines(log, every=0.0), executor=SerialExecutor)
    lines = re.findall(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ chunks (\d+)/10, .* left, (\d+) suspect\(s\) so far$",
                       log.getvalue(), re.M)
    assert [int(done) for done, _ in lines] == list(range(1, 11))
    counts = [int(n) for _, n in lines]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    suspects = [t.suspects for t in outcome.reduction.tensors]
    assert counts[-1] == sum(s.verified + s.beyond_cap for s in suspects) > 0
