"""Issue 3: where and how backprop is wrong, and no false alarms, over a suite of broken backwards."""

import json
import math
from pathlib import Path

import backprop_suite as suite
import numpy as np
import pytest

from gradjob.model.layout import Tensor
from gradjob.numerics.diagnose import diagnose
from gradjob.numerics.sums import Sums
from gradjob.numerics.verify import RUNGS

SUITE = str(Path(__file__).with_name("backprop_suite.py"))


def suite_args(arch, backward):
    return ["--model", SUITE, "--forward", f"forward_{arch}", "--backward", backward,
            "--case", f"{SUITE}:case_{arch}"]


CASES = sorted(suite.BROKEN.items())


@pytest.mark.parametrize("key, broken", CASES, ids=[f"{a}-{b}" for (a, b), _ in CASES])
def test_full_check_names_exactly_the_broken_tensors(key, broken, gradjob, cluster_address):
    arch, backward = key
    run = gradjob("submit", "--json", "--scheduler", cluster_address, *suite_args(arch, backward))
    result = json.loads(run.stdout)
    assert run.exit_code == (1 if broken else 0), run.stdout
    assert sorted(result["failing"]) == sorted(broken)
    for name, diagnosis in suite.DIAGNOSES.get(backward, {}).items():
        assert result["tensors"][name]["diagnosis"] == diagnosis
    if arch == "float32":  # float32 parameters, checked in float64: the forward computes in what it is given
        assert (result["precision"]["checked"], result["precision"]["model"]) == ("float64", "float32")
        assert result["threshold"] == 2e-7
    if arch == "kink" and not broken:
        kinks = sum(t["kinks"]["count"] for t in result["tensors"].values())
        assert kinks > 0  # the steps did cross the planted kinks, and they were recognised


@pytest.mark.parametrize("key, broken", CASES, ids=[f"{a}-{b}" for (a, b), _ in CASES])
def test_directional_screen_flags_every_broken_tensor(key, broken, gradjob):
    arch, backward = key
    run = gradjob("submit", "--json", "--mode", "directional", *suite_args(arch, backward))
    result = json.loads(run.stdout)
    # 2 per direction, a share of the noise measurement (at most 60 passes for the whole screen) and of the
    # ladders of the directions re-verified on smaller steps (1 + 2 per rung each)
    verified = sum(t["suspects"]["verified"] for t in result["tensors"].values())
    ladders = verified * (1 + 2 * RUNGS)
    assert result["forward_passes_per_tensor"] <= 2 * 3 + math.ceil((60 + ladders) / len(result["tensors"]))
    assert verified == 0 or broken or arch == "kink"  # a smooth correct model needs no re-verification
    assert sorted(result["failing"]) == sorted(broken)
    assert run.exit_code == (1 if broken else 0)


def submitted(gradjob, exit_code: int, *args: str) -> dict:
    """The JSON of a submit that must exit with ``exit_code`` (0 pass, 1 disagrees)."""
    run = gradjob("submit", "--json", *args)
    assert run.exit_code == exit_code, run.stderr
    return json.loads(run.stdout)


def test_seed_default_options_corrected_below_1e_9_and_factors_named(gradjob, cluster_address):
    correct = submitted(gradjob, 0, "--model", "network", "--case", "seed", "--scheduler", cluster_address)
    assert correct["difference"] < 1e-9 and correct["passed"]
    buggy = submitted(gradjob, 1, "--scheduler", cluster_address)
    assert buggy["tensors"]["W2"]["diagnosis"] == "dW2 is 2.00× the numerical gradient"
    assert buggy["tensors"]["b1"]["diagnosis"] == "db1 is 4.00× the numerical gradient"


@pytest.mark.parametrize("method, below", [("five-point", 1e-10), ("complex-step", 1e-12)])
def test_other_methods_on_the_seed(method, below, gradjob, cluster_address):
    result = submitted(gradjob, 0, "--model", "network", "--case", "seed", "--method", method,
                       "--scheduler", cluster_address)
    assert result["difference"] < below and result["method"] == method


def test_complex_step_refuses_a_forward_that_is_not_complex_safe(gradjob, write_model):
    model = write_model('''
import numpy as np
from gradjob.model.networks import network_forward, network_backward as backward


def forward(X, Y, parameters):
    cost, cache = network_forward(X, Y, parameters)
    return cost + 0.1 * np.abs(parameters["W1"]).sum(), cache
''')
    run = gradjob("submit", "--model", model, "--forward", "forward", "--backward", "backward", "--case", "seed",
                  "--method", "complex-step")
    assert run.exit_code == 2
    assert run.stderr.startswith("gradjob: error: the forward is not complex-safe: at W1[0, 0] complex step gives ")
    assert run.stderr.endswith("; use --method central or five-point\n") and run.stderr.count("\n") == 1


def test_dropout_with_a_fresh_mask_is_refused_and_a_fixed_mask_passes(gradjob, cluster_address):
    common = ["--model", SUITE, "--backward", "backward_dropout", "--case", f"{SUITE}:case_dropout"]
    fresh = gradjob("submit", *common, "--forward", "forward_dropout_fresh_mask")
    assert fresh.exit_code == 2
    assert fresh.stderr.startswith("gradjob: error: the forward is not deterministic: two evaluations at the same θ gave ")
    fixed = gradjob("submit", "--json", "--scheduler", cluster_address, *common, "--forward", "forward_dropout_fixed_mask")
    assert fixed.exit_code == 0 and json.loads(fixed.stdout)["difference"] < 1e-8


# ---------------------------------------------------------------------------------------------
# Choosing among the patterns: the fit that leaves least, the simpler on a near tie


def diagnosis_of(grad, approx, theta, noise=1e-12):
    sums = Sums()
    sums.add(grad.ravel(), approx.ravel(), theta.ravel(), np.full(grad.size, noise))
    return diagnose(Tensor("W2", grad.shape, 0), sums, [], [], lambda: {})


@pytest.mark.parametrize("lam", [0.1, 30.0])
def test_diagnosis_picks_the_pattern_that_fits_best_under_strong_regularisation(lam):
    """With λ·W2 most of the gradient, a dropped regulariser leaves grad ≈ 0·gradapprox: the factor
    fit nearly works too, but the λ·θ term fits exactly and is named, never "0.00×" or "-0.00×"."""
    rng = np.random.default_rng(7)
    theta, data = rng.standard_normal((12, 3)), 0.05 * rng.standard_normal((12, 3))
    true = data + lam * theta
    assert diagnosis_of(data, true, theta) == f"dW2 lacks a {lam:.4g}·W2 term (the L2 regularisation gradient λ·W2?)"
    assert diagnosis_of(true + lam * theta, true, theta) == \
        f"dW2 has an extra {lam:.4g}·W2 term (the L2 regularisation gradient counted twice?)"
    assert diagnosis_of(2 * true, true, theta) == "dW2 is 2.00× the numerical gradient"  # simpler wins the tie
    assert diagnosis_of(-true, true, theta) == "dW2 has the wrong sign (it is -1.00× the numerical gradient)"
    assert diagnosis_of(2 * data + lam * theta, true, theta) == \
        f"the data term of dW2 is 2.00× its numerical value (its regularisation term {lam:.4g}·W2 is right)"
    assert diagnosis_of(lam * theta, true, theta) == f"dW2 is only a {lam:.4g}·W2 term: its data term is missing"
    assert diagnosis_of(0.999 * true, true, theta) == "dW2 is 0.999× the numerical gradient"
