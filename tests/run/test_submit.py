"""Issue 2 acceptance, through ``gradjob submit`` on real Dask clusters and real Zarr stores."""

import json
import math
import re

import numpy as np
import pytest
import zarr
from conftest import SEED_BUGGY_DIFFERENCE, SEED_CORRECT_DIFFERENCE

from gradjob.run import job
from gradjob.types import Request


def submit_json(gradjob, *args):
    run = gradjob("submit", "--json", *args)
    return run, (json.loads(run.stdout) if run.exit_code in (0, 1) else None)


def test_seed_planted_bugs_fail_with_w2_and_b1_named(gradjob, cluster_address):
    run, result = submit_json(gradjob, "--case", "seed", "--epsilon", "1e-7", "--scheduler", cluster_address)
    assert run.exit_code == 1
    assert math.isclose(result["difference"], SEED_BUGGY_DIFFERENCE, rel_tol=1e-9)
    assert result["passed"] is False
    assert sorted(result["failing"]) == ["W2", "b1"]
    assert {name: t["passed"] for name, t in result["tensors"].items()} == {
        "W1": True, "b1": False, "W2": False, "b2": True, "W3": True, "b3": True}
    assert result["tensors"]["W2"]["diagnosis"] == "dW2 is 2.00× the numerical gradient"
    assert result["tensors"]["b1"]["diagnosis"] == "db1 is 4.00× the numerical gradient"
    assert (result["epsilon"], result["threshold"], result["n_parameters"]) == (1e-7, 2e-7, 47)


@pytest.mark.parametrize("fast", ["--fast", "--no-fast"])
def test_seed_corrected_backward_passes_and_round_off_is_not_a_bug(gradjob, cluster_address, fast):
    run, result = submit_json(gradjob, "--model", "network", "--case", "seed", "--epsilon", "1e-7", fast,
                              "--scheduler", cluster_address)
    assert run.exit_code == 0
    assert np.isclose(result["difference"], 1.1890913e-07)
    if fast == "--no-fast":  # plain forward calls: the seed's own operations, to the last digit
        assert result["difference"] == SEED_CORRECT_DIFFERENCE
    # b3 lies above the threshold on its own at ε=1e-7, but only by round-off
    assert result["tensors"]["b3"]["difference"] > 2e-7
    assert all(t["passed"] for t in result["tensors"].values())


def test_one_dimensional_model(gradjob, cluster_address):
    run, result = submit_json(gradjob, "--model", "linear", "--epsilon", "1e-7", "--scheduler", cluster_address)
    assert run.exit_code == 0
    assert result["difference"] < 1e-9
    assert result["n_parameters"] == 1


def test_text_verdict_names_failing_tensors_and_report_prints_the_same(gradjob, cluster_address):
    run = gradjob("submit", "--epsilon", "1e-7", "--store", "demo.zarr", "--scheduler", cluster_address)
    assert run.exit_code == 1
    assert run.stdout.startswith("FAIL  backprop disagrees with the numerical gradient: difference 2.850932e-01")
    assert "FAIL  dW2 is 2.00× the numerical gradient" in run.stdout
    assert "FAIL  db1 is 4.00× the numerical gradient" in run.stdout
    again = gradjob("report", "demo.zarr")
    assert (again.exit_code, again.stdout) == (1, run.stdout)
    as_json = gradjob("report", "demo.zarr", "--json")
    assert json.loads(as_json.stdout)["failing"] == ["b1", "W2"]


def test_store_holds_theta_gradient_done_chunks_and_provenance(gradjob, cluster_address, tmp_path):
    run = gradjob("submit", "--epsilon", "1e-7", "--chunk-size", "7", "--store", "s.zarr", "--scheduler", cluster_address)
    assert run.exit_code == 1, run.stderr   # the seed's planted bugs: a finished check that disagrees
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert group["gradapprox"].chunks == (7,)
    assert group["done"][:].tolist() == [1] * 7
    assert group["theta"].shape == group["grad"].shape == (47,)
    meta = group.attrs["gradjob"]
    assert meta["epsilon"] == 1e-7 and meta["chunk_size"] == 7 and meta["method"] == "central"
    assert set(meta["versions"]) >= {"gradjob", "numpy", "dask", "distributed", "zarr"}
    assert meta["identity"]["model"] and meta["identity"]["case"] and meta["identity"]["theta"]


def test_resubmitting_a_finished_job_evaluates_nothing(gradjob, cluster_address):
    args = ("--epsilon", "1e-7", "--store", "r.zarr", "--scheduler", cluster_address)
    first = submit_json(gradjob, *args)[1]
    second = submit_json(gradjob, *args)[1]
    assert (first["evaluated_chunks"], second["evaluated_chunks"]) == (first["n_chunks"], 0)
    assert second["difference"] == first["difference"]


def run_embedded(tmp_path, name, **options):
    request = Request(case="seed", epsilon=1e-7, store=str(tmp_path / name), **options)
    outcome = job.run(request)
    group = zarr.open_group(tmp_path / name, mode="r")
    return outcome, group["gradapprox"][:].tobytes()


def test_identical_results_for_chunk_sizes_and_worker_counts(tmp_path, cluster_address):
    """Chunk sizes 1, 7, 47 on the shared cluster; 1 and 2 workers on embedded clusters."""
    runs = [run_embedded(tmp_path, f"c{size}.zarr", chunk_size=size, scheduler=cluster_address) for size in (1, 7, 47)]
    runs += [run_embedded(tmp_path, f"w{workers}.zarr", workers=workers, cluster=True) for workers in (1, 2)]
    runs += [run_embedded(tmp_path, "in-process.zarr")]  # small work, no cluster asked for: the serial executor
    reference, reference_bytes = runs[0]
    for outcome, gradapprox_bytes in runs[1:]:
        assert gradapprox_bytes == reference_bytes
        assert outcome.reduction.difference == reference.reduction.difference
        assert [t.difference for t in outcome.reduction.tensors] == [t.difference for t in reference.reduction.tensors]
    assert math.isclose(reference.reduction.difference, 0.2850931567761623, rel_tol=1e-9)
    # a cluster asked for runs there, even for this small check; unasked, the serial executor runs it
    (one_worker, _), (in_process, _) = runs[3], runs[5]
    assert one_worker.peak_worker_rss_bytes > 0 and in_process.peak_worker_rss_bytes is None


SCALED_MODEL = '''
from gradjob.model.networks import network_forward, network_backward


def backward_scaled(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["dW2"] = gradients["dW2"] * 1.01
    return gradients
'''


@pytest.mark.parametrize("backward, expected_exit, failing", [
    ("network_backward", 0, []),
    ("backward_scaled", 1, ["W2"]),
])
def test_network_over_20000_parameters(gradjob, cluster_address, write_model, backward, expected_exit, failing):
    model = write_model(SCALED_MODEL)
    run, result = submit_json(gradjob, "--model", model, "--forward", "network_forward", "--backward", backward,
                              "--case", "random", "--layers", "120,150,20,1", "--examples", "8",
                              "--scheduler", cluster_address)
    assert run.exit_code == expected_exit, run.stderr
    assert result["n_parameters"] == 21191
    assert result["failing"] == failing
    if failing:
        assert result["tensors"]["W2"]["diagnosis"] == "dW2 is 1.01× the numerical gradient"
    else:
        assert result["difference"] < 1e-7


IN_PROCESS = re.compile(r"^gradjob: note: ran in this process: about \S+ s of forward work, less than starting a "
                        r"cluster takes \(--workers N or --scheduler runs it on one\)$", re.M)


def test_a_small_check_runs_in_this_process_unless_a_cluster_is_asked_for(gradjob, tmp_path):
    """Issue 18: the seed network's 47 parameters took ~6.5 s on an embedded cluster, 7 ms in a loop."""
    run, result = submit_json(gradjob, "--epsilon", "1e-7", "--store", "a.zarr")
    assert run.exit_code == 1
    assert result["difference"] == SEED_BUGGY_DIFFERENCE
    assert IN_PROCESS.search(run.stderr)
    forced, result = submit_json(gradjob, "--epsilon", "1e-7", "--store", "b.zarr", "--workers", "1")
    assert forced.exit_code == 1
    assert result["difference"] == SEED_BUGGY_DIFFERENCE
    assert not IN_PROCESS.search(forced.stderr)
    assert zarr.open_group(tmp_path / "a.zarr")["gradapprox"][:].tobytes() == \
        zarr.open_group(tmp_path / "b.zarr")["gradapprox"][:].tobytes()
    # job.run's choice of executor (serial unless asked): test_identical_results_for_chunk_sizes_and_worker_counts
