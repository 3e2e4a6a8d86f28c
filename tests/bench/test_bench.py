"""Issue 4: `gradjob bench` runs the real pipeline and both baselines in one process and reports
the figures the issue names; bad options are refused in one line."""

import importlib.util
import json

import numpy as np
import pytest

from gradjob.bench import baselines
from gradjob.bench import benchmark as bench
from gradjob.model.networks import network_forward

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_bench_json_has_the_figures_and_a_passing_check(gradjob):
    """The real pipeline, both worker counts, the baselines, a model file and a larger network, in
    one run: what was run and checked is asserted exactly; the arithmetic on the measured times is
    pinned with hand-made numbers below; the text says the JSON's figures."""
    run = gradjob("bench", "--layers", "20,10,1", "--examples", "8", "--workers", "1", "--workers", "2",
                  "--growth-layers", "40,30,1", "--json")
    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["n_parameters"] == 20 * 10 + 10 + 10 + 1
    assert [r["workers"] for r in result["runs"]] == [1, 2] and result["workers"] == 2
    for r in result["runs"]:
        assert r["passed"] and r["difference"] < 1e-7 and r["evaluator"] == "incremental"
        assert r["n_tasks"] * r["chunk_size"] >= 221 > (r["n_tasks"] - 1) * r["chunk_size"]
        assert r["peak_worker_rss_bytes"] > 20 * 2**20  # a real worker process, read from its VmHWM
        assert set(r["seconds"]) >= {"calibrate", "evaluate", "verify"} and 0 <= r["overhead_fraction"] < 1
    assert result["baselines_timed_on"] == "64 fixed random elements, scaled per element, one core"
    if HAVE_TORCH:
        assert result["torch_params_per_second"] is not None and result["speedup_vs_torch"] is not None
    else:
        assert result["torch_params_per_second"] is None and result["speedup_vs_torch"] is None

    user = result["user_model"]  # the shipped seed-style model file, traced, at the same layers
    assert user["model"].endswith("examples/seed_style.py") and user["evaluator"] == "traced" and user["passed"]
    assert user["n_parameters"] == 221 and user["workers"] == 2
    sample = user["generic_sample"]
    assert sample["elements"] == 64 and sample["max_deviation_in_noise_bounds"] < 1  # equal to round-off
    assert user["generic_path"]["forward_calls"] == 2 * 221   # as many calls on each side, one pair per element

    larger = result["memory_growth"]
    assert (larger["layers"], larger["n_parameters"], larger["workers"], larger["passed"]) == ([40, 30, 1], 1261, 2, True)

    text = bench.to_text(result).splitlines()
    assert text[0] == "built-in network 20,10,1, 8 examples: 221 parameters"
    assert text[3] == f"  scaling 1 → 2 workers: {result['scaling']:.2f}×"
    assert text[4] == ("  seed-style loop (copy θ, rebuild dict, full forward): "
                       f"{result['seed_loop_params_per_second']:,.0f} params/s → gradjob is "
                       f"{result['speedup_vs_seed_loop']:.0f}× faster")
    assert text[7].startswith("  memory: peak worker RSS ") and text[7].endswith(f"{100 * larger['growth']:+.1f}%")
    assert "MiB at 1,261 (40,30,1, " in text[7]
    assert text[8].startswith("model file ") and text[8].endswith("seed_style.py: 221 parameters")
    assert text[10] == ("  black-box floor (2 forward calls per parameter, 2 worker(s)): "
                        f"{user['floor_params_per_second']:,.0f} params/s → gradjob is {user['speedup_vs_floor']:.1f}× faster")
    if not HAVE_TORCH:
        assert text[5] == "  torch.autograd.gradcheck, full mode: n/a (torch not installed: pip install 'gradjob[torch]')"


def test_run_figures_from_measured_times():
    """221 parameters in 2 s over 2 workers whose tasks computed for 0.5 + 0.5 + 1.0 s: 110.5
    params/s, tasks of 2/3 s, the workers idle half of their 4 worker-seconds, 0.4 s of 2 s (20 %)
    measuring noise and re-verifying."""
    stages = {"calibrate": 0.1, "evaluate": 1.5, "verify": 0.3}
    figures = bench.run_figures(221, 2, 2.0, [0.5, 0.5, 1.0], stages)
    assert figures == {"workers": 2, "n_parameters": 221, "wall_seconds": 2.0, "params_per_second": 110.5,
                       "n_tasks": 3, "mean_task_seconds": pytest.approx(2 / 3), "overhead_fraction": 0.5,
                       "verification_fraction": pytest.approx(0.2), "seconds": stages}
    busier = bench.run_figures(10, 1, 1.0, [0.75, 0.5], {})   # tasks overlapping the wall clock: never negative
    assert (busier["overhead_fraction"], busier["verification_fraction"], busier["mean_task_seconds"]) == (0.0, 0.0, 0.625)
    assert bench.run_figures(5, 1, 0.5, [], {})["mean_task_seconds"] == 0.0


def test_baseline_figures_from_seconds_per_parameter():
    """gradjob at 110.5 params/s; the seed loop at 0.01 s per parameter (100 params/s) is 1.105× slower;
    torch at 0.002 s (500 params/s) is faster than gradjob (0.221×); without torch, no torch figures."""
    assert bench.baseline_figures(110.5, 0.01, 0.002) == {
        "seed_loop_params_per_second": 100.0, "torch_params_per_second": 500.0,
        "speedup_vs_seed_loop": pytest.approx(1.105), "speedup_vs_torch": pytest.approx(0.221)}
    assert bench.baseline_figures(110.5, 0.01, None) == {
        "seed_loop_params_per_second": 100.0, "torch_params_per_second": None,
        "speedup_vs_seed_loop": pytest.approx(1.105), "speedup_vs_torch": None}


def test_seed_loop_runs_the_forward_twice_per_sampled_element(monkeypatch):
    """The seed's loop, as timed: for each of the 64 sampled elements, the full forward at θ + ε·eᵢ
    and θ − ε·eᵢ on a freshly built dict."""
    from gradjob.model.cases import random_case
    from gradjob.model.layout import Layout

    case = random_case([20, 10, 1], 8, 0)
    layout = Layout.of(case.parameters)
    theta = layout.flatten(case.parameters)
    calls = []

    def counting_forward(X, Y, parameters):
        calls.append(layout.flatten(parameters) - theta)
        return network_forward(X, Y, parameters)

    monkeypatch.setattr(baselines, "network_forward", counting_forward)
    seconds = baselines.seed_loop_seconds_per_parameter([20, 10, 1], 8, epsilon=1e-3)
    assert seconds > 0
    picked = baselines.subset(layout).tolist()
    assert len(calls) == 2 * len(picked) == 2 * baselines.SUBSET
    for k, i in enumerate(picked):
        for delta, sign in ((calls[2 * k], 1), (calls[2 * k + 1], -1)):
            assert np.flatnonzero(delta).tolist() == [i] and delta[i] == pytest.approx(sign * 1e-3)


def test_bench_of_a_model_file_alone(gradjob):
    """--model times a user's own file (here the tanh + softmax + L2 example, with its case) and skips
    the built-in network."""
    from gradjob import examples

    path = examples.path("tanh_softmax_l2")
    run = gradjob("bench", "--model", path, "--case", f"{path}:small_case", "--workers", "1", "--json")
    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    assert "runs" not in result
    user = result["user_model"]
    assert (user["model"], user["evaluator"], user["passed"], user["n_parameters"]) == (path, "traced", True, 12 * 10 + 10 + 10 * 8 + 8 + 8 * 4 + 4)
    assert user["generic_sample"]["max_deviation_in_noise_bounds"] < 1
    assert user["evaluator_note"] is None   # issue 18.3: the replay measured faster, nothing to explain
    assert not any(line.startswith("  evaluator: ") for line in bench.to_text(result).splitlines())
    startup = result["startup"]  # issue 18: README's main job against a bare import, timed in the same run
    assert startup["ratio"] == pytest.approx(startup["main_job_seconds"] / startup["import_seconds"])
    assert bench.to_text(result).splitlines()[-1] == (
        f"start-up: `gradjob submit --epsilon 1e-7 --json` (seed network, in-process) {startup['main_job_seconds']:.2f} s "
        f"against `python -c \"import gradjob\"` {startup['import_seconds']:.2f} s: {startup['ratio']:.1f}×")


def test_bench_of_the_rnn_example_names_its_evaluator_and_why(gradjob):
    """Issue 18's acceptance models are bench-able: the text names the evaluator on the run's line
    and why in the next lines, as the JSON does (traced or not, whichever this build's trace allows)."""
    from gradjob import examples

    path = examples.path("rnn")
    run = gradjob("bench", "--model", path, "--case", f"{path}:small_case", "--workers", "1", "--json")
    assert run.exit_code == 0, run.stderr
    user = json.loads(run.stdout)["user_model"]
    assert (user["passed"], user["n_parameters"]) == (True, 7 * 4 + 4 * 6 + 6 * 6 + 6 + 6 * 7 + 7)
    note = user["evaluator_note"]   # why the forward runs; none where the replay does
    assert (user["evaluator"] == "traced" and note is None) or note.startswith(
        ("evaluator: forward, ", "the traced fast path is off for this model: "))
    text = bench.to_text(json.loads(run.stdout)).splitlines()
    assert text[1].startswith(f"  gradjob, 1 worker(s), {user['evaluator']}: ") and (note is None or f"  {note}" in text)
    assert text[2].startswith("  black-box floor (2 forward calls per parameter, 1 worker(s)): ")


def test_baseline_subset_is_fixed_and_spread_over_the_tensors():
    from gradjob.model.cases import random_case
    from gradjob.model.layout import Layout

    layout = Layout.of(random_case([30, 20, 1], 4, 0).parameters)
    picked = baselines.subset(layout)
    assert picked.tolist() == baselines.subset(layout).tolist() and len(set(picked.tolist())) == baselines.SUBSET
    assert {layout.describe(int(i)).split("[")[0] for i in picked} >= {"W1", "W2"}


@pytest.mark.parametrize("args, message", [
    (("--workers", "0"), "--workers must be at least 1; got 0"),
    (("--workers", "two"), "--workers must be a whole number; got 'two'"),
    (("--layers", "3,x"), "--layers must be comma-separated sizes such as 784,512,256,1; got '3,x'"),
    (("--examples", "0"), "--examples must be at least 1; got 0"),
    (("--layers", "5"), "--layers needs at least two positive sizes, e.g. 784,512,256,1; got 5"),
    (("--growth-layers", "784,10"), "--growth-layers must end in 1 (one sigmoid output); got 784,10"),
    (("--growth-layers", "7,,1"), "--growth-layers must be comma-separated sizes such as 784,512,256,1; got '7,,1'"),
])
def test_bench_bad_options_are_refused_in_one_line(gradjob, args, message):
    run = gradjob("bench", *args)
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", f"gradjob: error: {message}\n")


def test_the_generic_paths_overhead_is_timed_on_as_many_calls_as_its_budget_affords():
    """A forward of 0.1 s (a naive conv's is 40 ms) is timed over at most 2 × 5 calls a side, not 2,000
    calls 14 times: the bench of a slow model finishes."""
    import time

    from gradjob.model.cases import random_case
    from gradjob.model.spec import Model

    def slow_forward(X, Y, parameters):
        time.sleep(0.1)
        return network_forward(X, Y, parameters)

    case = random_case([3, 2, 1], 4, 0)
    figures = baselines.generic_overhead(Model(slow_forward, None), case, repeats=1)
    assert 2 <= figures["forward_calls"] <= 2 * int(baselines.GENERIC_BUDGET_SECONDS / 0.2)
