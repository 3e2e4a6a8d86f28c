"""Issue 4: `gradjob bench` runs the real pipeline and both baselines in one process and reports
the figures the issue names; bad options are refused in one line."""

import importlib.util
import json

import pytest

from gradjob.bench import baselines
from gradjob.bench import benchmark as bench

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_bench_json_has_the_figures_and_a_passing_check(gradjob):
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
        assert r["params_per_second"] == pytest.approx(221 / r["wall_seconds"])
        assert r["verification_fraction"] == pytest.approx(
            (r["seconds"]["calibrate"] + r["seconds"]["verify"]) / r["wall_seconds"])
    assert result["scaling"] == pytest.approx(result["runs"][1]["params_per_second"] / result["runs"][0]["params_per_second"])
    assert result["seed_loop_params_per_second"] > 0
    assert result["speedup_vs_seed_loop"] == pytest.approx(result["params_per_second"] / result["seed_loop_params_per_second"])
    if HAVE_TORCH:
        assert result["torch_params_per_second"] > 0
    else:
        assert result["torch_params_per_second"] is None and result["speedup_vs_torch"] is None

    user = result["user_model"]  # the shipped seed-style model file, traced, at the same layers
    assert user["model"].endswith("examples/seed_style.py") and user["evaluator"] == "traced" and user["passed"]
    assert user["n_parameters"] == 221 and user["workers"] == 2
    assert user["speedup_vs_floor"] == pytest.approx(user["params_per_second"] / user["floor_params_per_second"])
    sample = user["generic_sample"]
    assert sample["elements"] == 64 and sample["max_deviation_in_noise_bounds"] < 1  # equal to round-off
    generic = user["generic_path"]
    assert generic["overhead"] == pytest.approx(generic["generic_seconds"] / generic["bare_seconds"] - 1)
    assert user["peak_rss_vs_builtin"] == pytest.approx(user["peak_worker_rss_bytes"] / result["peak_worker_rss_bytes"])

    larger = result["memory_growth"]
    assert (larger["layers"], larger["n_parameters"], larger["workers"], larger["passed"]) == ([40, 30, 1], 1261, 2, True)
    assert larger["growth"] == pytest.approx(larger["peak_worker_rss_bytes"] / result["peak_worker_rss_bytes"] - 1)

    text = bench.to_text(result).splitlines()
    assert text[0] == "built-in network 20,10,1, 8 examples: 221 parameters"
    assert text[3] == f"  scaling 1 → 2 workers: {result['scaling']:.2f}×"
    assert text[7].startswith("  memory: peak worker RSS ") and text[7].endswith(f"{100 * larger['growth']:+.1f}%")
    assert "MiB at 1,261 (40,30,1, " in text[7]
    assert text[8].startswith("model file ") and text[8].endswith("seed_style.py: 221 parameters")
    assert text[10].startswith("  black-box floor (2 forward calls per parameter, 2 worker(s)): ")
    if not HAVE_TORCH:
        assert text[5] == "  torch.autograd.gradcheck, full mode: n/a (torch not installed: pip install 'gradjob[torch]')"


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
    startup = result["startup"]  # issue 18: README's main job against a bare import, timed in the same run
    assert startup["ratio"] == pytest.approx(startup["main_job_seconds"] / startup["import_seconds"])
    assert bench.to_text(result).splitlines()[-1] == (
        f"start-up: `gradjob submit --epsilon 1e-7 --json` (seed network, in-process) {startup['main_job_seconds']:.2f} s "
        f"against `python -c \"import gradjob\"` {startup['import_seconds']:.2f} s: {startup['ratio']:.1f}×")


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
