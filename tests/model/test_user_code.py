"""Issue 17 (points 2, 3, 6), 19 and 20: what the user's model file does can neither end the check as a
pass nor lose where it went wrong. Model files through the CLI, on the session's real cluster."""

import json
import re

import pytest

NETWORK = '''
import sys
import numpy as np
from gradjob.model.networks import network_forward, network_backward, forward_propagation_n

B3, W1 = [], []


def backward(X, Y, cache):
    return network_backward(X, Y, cache)


def exiting_backward(X, Y, cache):
    raise SystemExit(0)


def exiting_forward(X, Y, parameters):
    sys.exit(0)


def exiting_three(X, Y, parameters):
    sys.exit(3)


def empty_forward(X, Y, parameters):
    return ()


def complex_forward(X, Y, parameters):
    cost, cache = network_forward(X, Y, parameters)
    return cost + 1j, cache


def exit_when_b3_moves(X, Y, parameters):
    B3.append(float(parameters["b3"][0, 0])) if not B3 else None
    if float(parameters["b3"][0, 0]) != B3[0]:
        sys.exit(0)
    return network_forward(X, Y, parameters)


def misaligned(X, Y, parameters):
    cost, cache = network_forward(X, Y, parameters)
    return np.dot(np.ones((8, 6)), np.ones((3, 20)))


def clipping(X, Y, parameters):
    parameters["W1"] = np.clip(parameters["W1"], -10, 10)   # rebinds the key: a new array, not θ's view
    return network_forward(X, Y, parameters)


def flat_db1(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["db1"] = gradients["db1"].reshape(-1)
    return gradients


def row_db1(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["db1"] = gradients["db1"].reshape(1, -1)
    return gradients


def transposed_dw1(X, Y, cache):
    gradients = network_backward(X, Y, cache)
    gradients["dW1"] = gradients["dW1"].T
    return gradients


def complex_when_b3_moves(X, Y, parameters):
    B3.append(float(parameters["b3"][0, 0])) if not B3 else None
    cost, cache = network_forward(X, Y, parameters)
    return (cost + 1j if float(parameters["b3"][0, 0]) != B3[0] else cost), cache


def exit_when_w1_moves_far(X, Y, parameters):
    if isinstance(parameters["W1"], np.ndarray):
        W1.append(parameters["W1"].copy()) if not W1 else None   # per process: a worker's first W1 is θ's ± h
        if np.abs(parameters["W1"] - W1[0]).max() > 5e-4:
            sys.exit(0)
    return network_forward(X, Y, parameters)


def none_forward(X, Y, parameters):
    return None


def text_forward(X, Y, parameters):
    return "1.0", None
'''

CASE = '''
import sys
from gradjob.model.cases import seed_case


def exiting():
    sys.exit(0)


def good():
    case = seed_case()
    return case.X, case.Y, case.parameters
'''


@pytest.fixture
def model(write_model):
    return write_model(NETWORK)


def submit(gradjob, cluster_address, model, forward, backward="backward", *more):
    return gradjob("submit", "--model", model, "--forward", forward, "--backward", backward, "--case", "seed",
                   "--scheduler", cluster_address, "--store", "check.zarr", *more)


# --- 17.3: sys.exit in the user's code is an error, never a pass ----------------------------------

@pytest.mark.parametrize("forward, backward, where", [
    ("exiting_forward", "backward", "the forward raised at the case's parameters: SystemExit: sys.exit(0) was called"),
    ("exiting_three", "backward", "the forward raised at the case's parameters: SystemExit: sys.exit(3) was called"),
    ("network_forward", "exiting_backward", "the backward raised: SystemExit: sys.exit(0) was called"),
])
def test_sys_exit_in_the_forward_or_backward_is_one_line_exit_2(gradjob, cluster_address, model, tmp_path,
                                                                  forward, backward, where):
    run = submit(gradjob, cluster_address, model, forward, backward)
    assert run.exit_code == 2 and run.stdout == ""
    assert run.stderr.splitlines()[0] == f"gradjob: error: {where}"
    assert not (tmp_path / "check.zarr").exists()


def test_sys_exit_at_import_and_in_the_case_function(gradjob, cluster_address, write_model, tmp_path):
    exiting = write_model("import sys\nsys.exit(0)\n", "exiting.py")
    run = gradjob("submit", "--model", exiting, "--scheduler", cluster_address)
    assert run.exit_code == 2
    assert run.stderr.splitlines() == [
        f"gradjob: error: model file {exiting} failed to load: SystemExit: sys.exit(0) was called",
        f'  File "{exiting}", line 2, in <module>', "    sys.exit(0)"]
    case = write_model(CASE, "case.py")
    run = gradjob("submit", "--model", write_model(NETWORK), "--forward", "network_forward", "--backward", "backward",
                  "--case", f"{case}:exiting", "--scheduler", cluster_address)
    assert run.exit_code == 2
    assert run.stderr.splitlines()[0] == (f"gradjob: error: case function exiting in {case} raised SystemExit: "
                                          "sys.exit(0) was called")


def test_sys_exit_at_a_perturbation_ends_the_job_with_exit_3(gradjob, cluster_address, model):
    run = submit(gradjob, cluster_address, model, "exit_when_b3_moves", "backward", "--no-fast")
    assert run.exit_code == 3 and run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.startswith("gradjob: error:")]
    assert errors == ["gradjob: error: the forward failed at b3[0, 0] + step (parameter 46, chunk 15): SystemExit: "
                      "sys.exit(0) was called; finished chunks are kept in the store"]
    assert run.stderr.splitlines()[-2:] == [f'  File "{model}", line 37, in exit_when_b3_moves', "    sys.exit(0)"]


def test_a_forward_failing_only_where_the_replay_is_validated_falls_back(gradjob, cluster_address, model):
    """The traced replay is validated at θ moved by 1e-3; a forward failing only that far away (5e-4) is
    checked by the forward at its real steps (it was a PerturbationFailure traceback, exit 1)."""
    run = submit(gradjob, cluster_address, model, "exit_when_w1_moves_far", "backward", "--json")
    assert run.exit_code == 0
    assert json.loads(run.stdout)["evaluator"] == "forward"
    assert ("gradjob: note: the traced fast path is off for this model: the forward itself failed at W1[0, 1] moved "
            "by 1e-3 (SystemExit: sys.exit(0) was called); each evaluation calls the forward") in run.stderr


# --- 19: costs that are no costs -------------------------------------------------------------------

@pytest.mark.parametrize("forward, message", [
    ("empty_forward", "forward must return a scalar cost or (cost, cache); it returned an empty tuple ()"),
    ("none_forward", "forward must return a scalar cost or (cost, cache); it returned None"),  # was "NoneType of shape ()"
    ("text_forward", "forward must return a scalar cost or (cost, cache); it returned str '1.0'"),
    ("complex_forward", "the forward's cost at the case's parameters is complex ((2.407833389834357+1j)); the cost "
                        "must be a real number"),
])
def test_an_empty_or_complex_cost_is_one_line_exit_2(gradjob, cluster_address, model, forward, message):
    run = submit(gradjob, cluster_address, model, forward)
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: {message}\n")


def test_a_complex_cost_at_a_perturbation_ends_the_job_with_exit_3(gradjob, cluster_address, model):
    """Real at θ, complex at θ ± h: it was a TypeError traceback (exit 1, read as a FAIL) from the calibration."""
    run = submit(gradjob, cluster_address, model, "complex_when_b3_moves", "backward", "--no-fast")
    assert run.exit_code == 3 and run.stdout == ""
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("gradjob: error:")]
    assert len(errors) == 1 and re.fullmatch(
        r"gradjob: error: the forward failed at b3\[0, 0\] \+ step \(parameter 46, chunk 15\): the cost is complex "
        r"\(\(2\.4078\d+\+1j\)\); the cost must be a real number; finished chunks are kept in the store", errors[0])


# --- 20: the user's frames under the line ----------------------------------------------------------

def test_an_error_in_the_forward_keeps_the_users_frames(gradjob, cluster_address, model):
    run = submit(gradjob, cluster_address, model, "misaligned")
    assert run.exit_code == 2
    assert run.stderr.splitlines() == [
        "gradjob: error: the forward raised at the case's parameters: ValueError: shapes (8,6) and (3,20) not "
        "aligned: 6 (dim 1) != 3 (dim 0)",
        f'  File "{model}", line 43, in misaligned', "    return np.dot(np.ones((8, 6)), np.ones((3, 20)))"]


# --- 17.6: a forward that rebinds a key of its dict still reads θ ---------------------------------

def test_a_forward_rebinding_its_parameters_passes_on_the_generic_path(gradjob, cluster_address, model):
    run = submit(gradjob, cluster_address, model, "clipping", "backward", "--no-fast", "--json")
    assert run.exit_code == 0, run.stdout
    result = json.loads(run.stdout)
    assert result["passed"] and result["evaluator"] == "forward" and result["failing"] == []


# --- 17.2: a gradient shaped unlike its parameter fails that tensor --------------------------------

@pytest.mark.parametrize("backward, tensor, diagnosis", [
    ("flat_db1", "b1", "db1 has shape (5,) but b1 is (5, 1)"),
    ("row_db1", "b1", "db1 has shape (1, 5) but b1 is (5, 1)"),
    ("transposed_dw1", "W1", "dW1 has shape (4, 5) but W1 is (5, 4)"),
])
def test_a_gradient_of_another_shape_fails_its_tensor_and_report_agrees(gradjob, cluster_address, model,
                                                                        backward, tensor, diagnosis):
    run = submit(gradjob, cluster_address, model, "network_forward", backward, "--json")
    assert run.exit_code == 1, run.stderr
    result = json.loads(run.stdout)
    assert result["failing"] == [tensor]
    assert result["tensors"][tensor]["diagnosis"].startswith(diagnosis)
    others = {name: t for name, t in result["tensors"].items() if name != tensor}
    assert len(others) == 5 and all(t["passed"] and t["difference"] < 2e-7 for t in others.values())
    reported = gradjob("report", "check.zarr", "--json")
    assert reported.exit_code == 1
    again = json.loads(reported.stdout)
    assert again["failing"] == [tensor]
    assert again["tensors"][tensor]["diagnosis"] == result["tensors"][tensor]["diagnosis"]
    text = gradjob("report", "check.zarr").stdout
    assert f"wrong: {tensor}" in text and diagnosis in text


def test_a_job_files_check_that_raises_keeps_the_users_frames(gradjob, cluster_address, model, tmp_path):
    (tmp_path / "job.toml").write_text(f'''
[job]
name = "frames"
store_root = "stores"

[[check]]
name = "misaligned"
model = "{model}"
forward = "misaligned"
backward = "backward"
case = "seed"
''')
    run = gradjob("submit", "job.toml", "--scheduler", cluster_address)
    assert run.exit_code == 2
    lines = run.stderr.splitlines()
    at = lines.index("gradjob: error in check misaligned: the forward raised at the case's parameters: ValueError: "
                     "shapes (8,6) and (3,20) not aligned: 6 (dim 1) != 3 (dim 0)")
    assert lines[at + 1:at + 3] == [f'  File "{model}", line 43, in misaligned',
                                    "    return np.dot(np.ones((8, 6)), np.ones((3, 20)))"]


# --- a script without `if __name__ == "__main__":` that trains at import -------------------------------

NOTEBOOK_SCRIPT = '''
import pathlib
import numpy as np
from gradjob.model.networks import network_forward, network_backward
from gradjob.model.cases import seed_case


def forward_propagation_n(X, Y, parameters):
    return network_forward(X, Y, parameters)


def backward_propagation_n(X, Y, cache):
    return network_backward(X, Y, cache)


def update_parameters(parameters, grads, learning_rate):
    return {k: v - learning_rate * grads["d" + k] for k, v in parameters.items()}


def model(X, Y, learning_rate=0.1, num_iterations=3):
    parameters = seed_case().parameters
    for i in range(num_iterations):
        cost, cache = forward_propagation_n(X, Y, parameters)
        parameters = update_parameters(parameters, backward_propagation_n(X, Y, cache), learning_rate)
    return parameters


def case():
    case = seed_case()
    return case.X, case.Y, case.parameters


MASK = np.random.default_rng(7).random((5, 3)) < 0.8  # a constant built at import: fine
{script}
'''
SCRIPT = '''train_X, train_Y, _ = case()
parameters = model(train_X, train_Y)
pathlib.Path("trained.txt").write_text("the script part ran")
'''


def test_a_model_file_that_trains_at_import_is_refused_without_running_it(gradjob, write_model, tmp_path):
    script = write_model(NOTEBOOK_SCRIPT.replace("{script}", SCRIPT), "notebook.py")
    expected = (f"model file {script} trains at import (line 35: parameters = model(train_X, train_Y)), so loading "
                "it for its functions would run the training first; put the script part under "
                '`if __name__ == "__main__":`')
    run = gradjob("submit", script, "--case", f"{script}:case", "--store", "s.zarr")
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", f"gradjob: error: {expected}\n")
    assert not (tmp_path / "trained.txt").exists() and not (tmp_path / "s.zarr").exists()

    inline = write_model(NOTEBOOK_SCRIPT.replace("{script}", (  # a training loop written at top level
        "X, Y, p = case()\nfor i in range(3):\n    cost, cache = forward_propagation_n(X, Y, p)\n"
        "    p = update_parameters(p, backward_propagation_n(X, Y, cache), 0.1)\n")), "inline.py")
    run = gradjob("submit", inline, "--case", "seed", "--store", "s.zarr")
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: model file {inline} trains at import (line 35: for i "
                                              "in range(3):), so loading it for its functions would run the training "
                                              'first; put the script part under `if __name__ == "__main__":`\n')

    guarded = write_model(NOTEBOOK_SCRIPT.replace("{script}", 'if __name__ == "__main__":\n'
                                                 + "".join(f"    {line}\n" for line in SCRIPT.splitlines())),
                          "guarded.py")
    run = gradjob("submit", guarded, "--case", f"{guarded}:case", "--store", "s.zarr")
    assert run.exit_code == 0 and run.stdout.startswith("PASS") and not (tmp_path / "trained.txt").exists()

    case_only = write_model(NOTEBOOK_SCRIPT.replace("{script}", SCRIPT), "case_file.py")  # the same, as --case only
    run = gradjob("submit", "--model", "network", "--case", f"{case_only}:case", "--store", "s2.zarr")
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: case file {case_only} trains at import (line 35: "
                                              "parameters = model(train_X, train_Y)), so loading it for its functions "
                                              'would run the training first; put the script part under '
                                              '`if __name__ == "__main__":`\n')
    assert not (tmp_path / "trained.txt").exists()
