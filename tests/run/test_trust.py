"""Issue 11: verdicts users can trust on the models they have: float32 parameters, ReLU kinks stacked
in consecutive layers, forwards that compute in float32 whatever they are given, regularisation,
and code copied from courses. No false alarm; every real bug named, and only it.

The models are in tests/families/ (each lists its ``EXPECTED`` failing tensors and ``DIAGNOSES``);
most checks run in-process on the serial executor, a few through the CLI on a real cluster.
"""

import json
import math
import re
import shutil
from types import SimpleNamespace

import pytest
from conftest import FAMILIES, family

from gradjob.executors.serial import SerialExecutor
from gradjob.report import text as report
from gradjob.report.model import Kinks, Report, TensorSuspects
from gradjob.run import job
from gradjob.types import Request


def run(name: str, case: str, backward: str, tmp_path, **options):
    path = str(FAMILIES / f"{name}.py")
    request = Request(model=path, forward="forward", backward=backward, case=f"{path}:{case}",
                      store=str(tmp_path / f"{case}-{backward}.zarr"), **options)
    return job.run(request, executor=SerialExecutor)


def cases_of(*names):
    return [(name, case, backward, failing) for name in names
            for (case, backward), failing in sorted(family(name).EXPECTED.items())]


def assert_named(outcome, name, backward, failing):
    """Exit code, exactly the failing tensors, and the diagnosis a person would want."""
    assert report.exit_code(outcome) == (1 if failing else 0), report.to_text(outcome)
    assert outcome.reduction.failing == failing, report.to_text(outcome)
    for tensor, wanted in family(name).DIAGNOSES.get(backward, {}).items():
        result = next(t for t in outcome.reduction.tensors if t.name == tensor)
        diagnosis = result.diagnosis
        factor = re.fullmatch(rf"d{tensor} is (\d+\.\d+)× the numerical gradient", wanted)
        if factor and math.prod(result.shape) == 1:  # one element: its two numbers, not a factor
            g, a = map(float, re.fullmatch(rf"d{tensor} is (\S+) but the numerical derivative is (\S+)",
                                           diagnosis).groups())
            assert round(g / a, 2) == float(factor.group(1))
        elif wanted.startswith("key words: "):
            for word in wanted.removeprefix("key words: ").split(", "):
                assert word.lower() in diagnosis.lower(), (word, diagnosis)
        else:
            assert diagnosis == wanted
    text = report.to_text(outcome)
    assert ("PASS" if not failing else "FAIL") == text[:4]
    assert "1.00×" not in text and "step is too small" not in text


FLOAT32_RELU = cases_of("relu_float32")


@pytest.mark.parametrize("name, case, backward, failing", FLOAT32_RELU, ids=[f"{c}-{b}" for _, c, b, _ in FLOAT32_RELU])
def test_float32_relu_networks_correct_pass_and_one_percent_bugs_are_named(name, case, backward, failing, tmp_path):
    """Three sizes (193, 5,017 and 41,409 parameters), five seeds each; float32 parameters are checked
    in float64, so a correct backward passes and a 1 % error on one tensor names that tensor alone."""
    outcome = run(name, case, backward, tmp_path)
    assert_named(outcome, name, backward, failing)
    assert (outcome.precision.checked, outcome.precision.model) == ("float64", "float32")
    assert outcome.precision.describe() == "checked in float64; parameters are float32"


KINKS = cases_of("stacked_kinks")


@pytest.mark.parametrize("name, case, backward, failing", KINKS, ids=[b for _, _, b, _ in KINKS])
def test_stacked_kinks_pass_with_their_kinks_listed_and_five_percent_bugs_are_named(name, case, backward, failing,
                                                                                   tmp_path):
    """Pre-activations exactly 0 (an all-zero example, zero bias) and within 1e-10 of 0 in two
    consecutive layers; × 1.05 on any one tensor, the kinked bias included, names only it."""
    outcome = run(name, case, backward, tmp_path)
    assert_named(outcome, name, backward, failing)
    tensors = {t.name: t for t in outcome.reduction.tensors}
    if not failing:
        assert sum(t.kinks for t in tensors.values()) > 0
        assert tensors["b1"].kinks > 0 and tensors["b1"].kink_elements  # the kinked bias: listed, left out
        assert "at a kink, left out" in report.to_text(outcome)


FLOAT32_INSIDE = cases_of("float32_inside")


@pytest.mark.parametrize("name, case, backward, failing", FLOAT32_INSIDE, ids=[b for _, _, b, _ in FLOAT32_INSIDE])
def test_a_forward_computing_in_float32_inside(name, case, backward, failing, tmp_path):
    """It casts whatever it gets to float32: the check stays in float32, says so, and judges each
    tensor against the noise it measured; × 1.2 on one tensor names only that tensor."""
    outcome = run(name, case, backward, tmp_path)
    assert_named(outcome, name, backward, failing)
    assert outcome.precision.checked == "float32"
    assert outcome.precision.note == "the forward computes in float32 whatever it is given"
    result = report.to_json(outcome)
    for tensor in result["tensors"].values():
        assert tensor["noise"] > 1e-9 and tensor["resolution"] >= 2 * tensor["threshold"] > 0


CAST_INSIDE = '''
"""float64 parameters, a float32 forward inside, a float64 cost returned: only its noise tells."""
import numpy as np


def forward(X, Y, p):
    W1, b1, W2, b2 = (p[k].astype(np.float32) for k in ("W1", "b1", "W2", "b2"))
    A1 = np.tanh(W1 @ X.astype(np.float32) + b1)
    Z2 = W2 @ A1 + b2
    cost = np.sum((Z2 - Y.astype(np.float32)) ** 2) / (2 * X.shape[1])
    return cost.astype(np.float64), (X, Y, W1, W2, A1, Z2)


def backward(X, Y, cache, scale=None):
    X, Y, W1, W2, A1, Z2 = cache
    dZ2 = (Z2 - Y) / X.shape[1]
    dZ1 = (W2.T @ dZ2) * (1 - A1 ** 2)
    g = {"dW1": dZ1 @ X.T, "db1": dZ1.sum(1, keepdims=True), "dW2": dZ2 @ A1.T, "db2": dZ2.sum(1, keepdims=True)}
    g = {k: v.astype(np.float64) for k, v in g.items()}
    for k, factor in (scale or {}).items():
        g[k] = g[k] * factor
    return g


def backward_W1_x1_01(X, Y, cache):
    return backward(X, Y, cache, {"dW1": 1.01})


def backward_b2_x1_05(X, Y, cache):
    return backward(X, Y, cache, {"db2": 1.05})


def case():
    rng = np.random.default_rng(2)
    return (rng.standard_normal((6, 20)), rng.standard_normal((2, 20)),
            {"W1": 0.5 * rng.standard_normal((8, 6)), "b1": 0.1 * rng.standard_normal((8, 1)),
             "W2": 0.5 * rng.standard_normal((2, 8)), "b2": 0.1 * rng.standard_normal((2, 1))})
'''


@pytest.mark.parametrize("backward, failing", [("backward", []), ("backward_W1_x1_01", ["W1"]),
                                               ("backward_b2_x1_05", ["b2"])])
def test_float32_arithmetic_behind_a_float64_cost_is_measured_not_assumed(backward, failing, tmp_path):
    """Every dtype the forward shows is float64, its noise is float32's: the check is judged at
    float32's noise (no false alarm), says why, and still names a 1 % bug and only it."""
    (tmp_path / "cast_inside.py").write_text(CAST_INSIDE)
    path = str(tmp_path / "cast_inside.py")
    outcome = job.run(Request(model=path, forward="forward", backward=backward, case=f"{path}:case",
                              store=str(tmp_path / "s.zarr")), executor=SerialExecutor)
    assert (outcome.precision.checked, outcome.precision.model) == ("float32", "float64")
    assert re.fullmatch(r"the forward computes in float32 inside: its cost is that noisy \(relative noise "
                        r"\d\.\de-0[78]\)", outcome.precision.note)
    assert outcome.precision.describe() == f"checked in float32; parameters are float64 ({outcome.precision.note})"
    assert outcome.reduction.failing == failing, report.to_text(outcome)
    assert report.exit_code(outcome) == (1 if failing else 0)


REGULARISED_AND_COURSES = cases_of("regularised", "cs231n_style", "nielsen_style")


@pytest.mark.parametrize("name, case, backward, failing", REGULARISED_AND_COURSES,
                         ids=[f"{n}-{b}" for n, _, b, _ in REGULARISED_AND_COURSES])
def test_regularised_and_course_code(name, case, backward, failing, tmp_path):
    """L2-regularised backwards: a bug in the data term (× 2, sign, transpose) or a missing or doubled
    λ·W is diagnosed by name; cs231n-style batchnorm/dropout and Nielsen-style nets in float32."""
    assert_named(run(name, case, backward, tmp_path), name, backward, failing)


def test_json_carries_precision_noise_resolution_kinks_and_suspects(tmp_path):
    outcome = run("stacked_kinks", "case_kinks", "backward_W2_x1_05", tmp_path)
    result = json.loads(json.dumps(report.to_json(outcome)))
    assert result["precision"] == {"checked": "float64", "model": "float64", "note": None, "text": "checked in float64"}
    assert result["raw_difference"] > result["difference"]  # the kinks, left out of the second
    w2 = result["tensors"]["W2"]
    assert set(w2) >= {"noise", "resolution", "threshold", "kinks", "suspects"}
    assert w2["suspects"]["wrong"] > 0 and w2["suspects"]["wrong_elements"]
    assert result["tensors"]["b1"]["kinks"]["count"] > 0
    assert set(result["tensors"]["b1"]["suspects"]) == {"verified", "agrees", "kink", "wrong", "near_kink",
                                                        "unresolved", "beyond_cap", "wrong_elements"}
    assert set(result["seconds"]) >= {"calibrate", "evaluate", "verify"}


def test_precision_model_keeps_the_model_dtype(tmp_path):
    outcome = run("relu_float32", "case_small_s0", "backward", tmp_path, precision="model")
    assert (outcome.precision.checked, outcome.precision.model, outcome.precision.note) == ("float32", "float32", None)
    assert outcome.reduction.passed, report.to_text(outcome)
    assert outcome.reduction.threshold == 1e-3


PICKY_FORWARD = '''
import numpy as np
from gradjob.model.networks import network_forward, network_backward as backward


def forward(X, Y, parameters):
    assert parameters["W1"].dtype == np.float32, "this forward only takes float32 weights"
    return network_forward(X, Y, parameters)


def case():
    rng = np.random.default_rng(0)
    p = {"W1": rng.standard_normal((4, 3)), "b1": np.zeros((4, 1)), "W2": rng.standard_normal((1, 4)),
         "b2": np.zeros((1, 1))}
    return (rng.standard_normal((3, 6)).astype(np.float32), np.array([[0, 1, 1, 0, 1, 0]], np.float32),
            {k: v.astype(np.float32) for k, v in p.items()})
'''


def test_a_forward_that_fails_when_promoted_falls_back_with_a_note(tmp_path):
    (tmp_path / "picky.py").write_text(PICKY_FORWARD)
    path = str(tmp_path / "picky.py")
    outcome = job.run(Request(model=path, forward="forward", backward="backward", case=f"{path}:case",
                                store=str(tmp_path / "s.zarr")), executor=SerialExecutor)
    assert outcome.precision.checked == "float32"
    assert outcome.precision.note.startswith("with float64 inputs it fails (the forward raised at the case's "
                                             "parameters: AssertionError: this forward only takes float32 weights)")
    assert outcome.reduction.passed, report.to_text(outcome)
    assert any("with float64 inputs it fails" in note for note in outcome.notes)


HELPER = '''
import numpy as np
from gradjob.model.networks import network_forward as forward, network_backward


def backward(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["dW2"] = gradients["dW2"] * SCALE
    return gradients


SCALE = 1.0
'''


def test_editing_a_module_the_model_imports_is_not_a_replay(gradjob, tmp_path, cluster_address):
    """The same command after the helper module beside the model file changed: a new check of the new
    code, saying what changed, instead of the earlier PASS replayed from the store."""
    (tmp_path / "netcode.py").write_text(HELPER)
    (tmp_path / "model.py").write_text("from netcode import forward, backward\n\nbackward_too = backward\n")
    command = ["submit", "--model", "model.py", "--forward", "forward", "--backward", "backward", "--case", "seed",
               "--scheduler", cluster_address]
    first = gradjob(*command)
    assert first.exit_code == 0, first.stdout
    (tmp_path / "netcode.py").write_text(HELPER.replace("SCALE = 1.0", "SCALE = 2.0"))
    second = gradjob(*command)
    assert second.exit_code == 1
    assert "FAIL  dW2 is 2.00× the numerical gradient" in second.stdout
    assert "gradjob: note: the modules the model imports changed since gradjob-stores/model-seed-" in second.stderr
    assert second.stderr.count("checking the new code in a new store") == 1
    # the same model file in another folder, beside a helper of its own, is another job too
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(tmp_path / "model.py", other / "model.py")
    (other / "netcode.py").write_text(HELPER)
    third = gradjob(*command[:2], str(other / "model.py"), *command[3:])
    assert third.exit_code == 0 and len(list((tmp_path / "gradjob-stores").glob("model-seed-*.zarr"))) == 3
    # another --backward of the same code is another check, not a change of code
    fourth = gradjob(*command[:6], "backward_too", *command[7:])
    assert fourth.exit_code == 1 and "changed since" not in fourth.stderr


DATA_MODEL = '''
import json
from pathlib import Path

from gradjob.model.networks import network_forward as forward, network_backward

HERE = Path(__file__).parent


def backward(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["db1"] = gradients["db1"] * json.loads((HERE / "scale.json").read_text())["db1"]
    return gradients
'''


def test_a_store_of_code_that_changed_unseen_is_started_afresh(gradjob, tmp_path, cluster_address):
    """Code identity cannot see a data file the backward reads; the analytic gradient, recomputed on
    every run, can: the store is started afresh and the new code checked (refused under --resume)."""
    (tmp_path / "model.py").write_text(DATA_MODEL)
    (tmp_path / "scale.json").write_text('{"db1": 1.0}')
    command = ["submit", "--model", "model.py", "--forward", "forward", "--backward", "backward", "--case", "seed",
               "--store", "s.zarr", "--scheduler", cluster_address]
    assert gradjob(*command).exit_code == 0
    (tmp_path / "scale.json").write_text('{"db1": 4.0}')
    resumed = gradjob(*command, "--resume")
    assert resumed.exit_code == 2
    assert resumed.stderr.startswith("gradjob: error: --resume: store s.zarr was made by other code (the analytic "
                                     "gradient at b1[0, 0] is now ")
    again = gradjob(*command)
    assert again.exit_code == 1 and "FAIL  db1 is 4.00× the numerical gradient" in again.stdout
    assert "gradjob: note: store s.zarr was made by other code (the analytic gradient at b1[0, 0] is now" in again.stderr
    assert "; starting afresh" in again.stderr


def test_a_tensor_whose_numbers_all_sit_at_kinks_is_said_to_be_unchecked(gradjob):
    """The directional screen's three directions in the stacked-kinks W2 all cross kinks: W2 is not
    passed silently, the head line and the tensor say it could not be checked."""
    path = str(FAMILIES / "stacked_kinks.py")
    run = gradjob("submit", "--mode", "directional", "--model", path, "--forward", "forward", "--backward",
                  "backward_W2_x1_05", "--case", f"{path}:case_kinks", "--json")
    result = json.loads(run.stdout)
    unchecked = [name for name, t in result["tensors"].items() if t["checked"] == 0]
    assert "W2" in unchecked
    typed = Report.from_json(result)  # the text report's head, from the same JSON parsed back
    word, rest = report.head_line(typed)
    assert (word, rest.endswith(f"not checked (all at kinks): {', '.join(unchecked)}")) == ("PASS", True)
    assert report.tensor_verdict(typed.tensors["W2"], typed.threshold).startswith("ok    (not checked: ")


def test_a_threshold_asked_again_applies_to_the_finished_store(tmp_path):
    """The same check re-run with another --threshold: nothing is evaluated again, and the verdict is
    judged by the threshold asked now, not the one the store was made with."""
    first = run("stacked_kinks", "case_kinks", "backward", tmp_path)
    assert first.reduction.passed and first.reduction.threshold == 2e-7
    again = run("stacked_kinks", "case_kinks", "backward", tmp_path, threshold=1e-4)
    assert again.evaluated_chunks == 0 and again.reduction.threshold == 1e-4
    assert all(t.threshold >= 1e-4 for t in again.reduction.tensors)
    assert "  W3      1×4                  4    1.2339e-10    1.0e-04  ok" in report.to_text(again)
    assert report.to_text(again).endswith("a smaller error there would pass unseen (asked threshold 0.0001).")
    loose = run("stacked_kinks", "case_kinks", "backward", tmp_path, threshold=1.5)  # no error could show
    assert json.loads(json.dumps(report.to_json(loose)))["tensors"]["W1"]["resolution"] is None


def test_the_resolution_line_names_only_passing_tensors_and_says_none_when_noise_is_the_gradient():
    """A failing tensor was seen, so it is not among "a smaller error there would pass unseen"; a tensor
    whose noise is as large as its gradient has no resolution (null in JSON), never "inf"."""
    tensor = SimpleNamespace(passed=True, checked=10, threshold=1e-3, resolution=2.002e-3)
    result = SimpleNamespace(threshold=2e-7, precision=SimpleNamespace(checked="float64", model="float64", note=None),
                             tensors={"W1": tensor, "W2": SimpleNamespace(**{**vars(tensor), "passed": False}),
                                      "b1": SimpleNamespace(**{**vars(tensor), "resolution": None}),
                                      "b2": SimpleNamespace(**{**vars(tensor), "threshold": 2e-7, "resolution": 4e-7})})
    assert report.resolution_line(result) == (
        "The forward's noise resolves only relative errors above: dW1 2.0e-03, db1 none (noise as large as the "
        "gradient); a smaller error there would pass unseen (asked threshold 2e-07).")


def test_a_passing_tensor_says_what_was_left_unverified():
    """Suspects past the per-tensor cap and suspects that never settled are judged on their numbers:
    the verdict words say so instead of a bare "ok"."""
    suspects = TensorSuspects(verified=256, agrees=250, kink=0, near_kink=0, wrong=0, unresolved=6, beyond_cap=40)
    t = SimpleNamespace(passed=True, checked=5000, difference=1e-8, threshold=2e-7, kinks=Kinks(0, ()),
                        suspects=suspects)
    assert report.tensor_verdict(t, 2e-7) == (
        "ok    (250 element(s) re-verified on smaller steps; 6 element(s) unsettled on smaller steps, counted as "
        "noise; 40 more suspect(s) beyond the re-verification cap, judged on their numbers)")
