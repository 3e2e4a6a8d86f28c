"""Issue 17 (points 1, 2, 3) and 20 through the Python API: the answer is the verdict (``bool``),
gradients shaped unlike their parameters fail in every shape of code, user code cannot end the
check, and the outcome reads well at a prompt, in a notebook and in a failing pytest test."""

import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import family, seed_arrays

import gradjob
from gradjob.errors import InputError, JobError
from gradjob.model import networks
from gradjob.report import text as report


pytestmark = pytest.mark.usefixtures("private_tmp")  # every check's temporary store here


def buggy(**options):
    return gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *seed_arrays(), epsilon=1e-7,
                         fast=False, **options)


# --- 17.1: the outcome's truth is its verdict ------------------------------------------------------

def test_assert_on_an_outcome_asserts_its_verdict():
    outcome = buggy()
    assert outcome.passed is False and bool(outcome) is False
    with pytest.raises(AssertionError):
        assert outcome
    correct = gradjob.check(networks.network_forward, networks.network_backward, *seed_arrays())
    assert correct.passed is True and correct


# --- 17.2: a gradient shaped unlike its parameter fails its tensor, in every shape of code ---------

def test_check_fails_a_flat_bias_gradient_and_checks_the_rest():
    def flat_db1(X, Y, cache):
        gradients = networks.network_backward(X, Y, cache)
        gradients["db1"] = gradients["db1"].reshape(-1)
        return gradients

    outcome = gradjob.check(networks.network_forward, flat_db1, *seed_arrays())
    assert not outcome and outcome.reduction.failing == ["b1"]
    b1 = outcome.reduction.tensors[1]
    assert b1.diagnosis == "db1 has shape (5,) but b1 is (5, 1)" and b1.difference < 2e-7  # numbers right, shape not
    assert all(t.passed for t in outcome.reduction.tensors if t.name != "b1")
    assert "FAIL  db1 has shape (5,) but b1 is (5, 1)" in report.to_text(outcome)
    screened = gradjob.check(networks.network_forward, flat_db1, *seed_arrays(), mode="directional")
    assert screened.reduction.failing == ["b1"]
    assert screened.reduction.tensors[1].diagnosis == "db1 has shape (5,) but b1 is (5, 1)"


def test_check_loss_fails_a_bias_gradient_as_a_row():
    cs = family("cs231n_style")
    X, y, _ = cs.case_bn_dropout()
    model = cs.make_model(seed=231)
    loss = model.loss

    def row_b1(X, y=None):
        value, grads = loss(X, y)
        return value, {**grads, "b1": grads["b1"].reshape(1, -1)}

    outcome = gradjob.check_loss(row_b1, model.params, X, y)
    assert outcome.reduction.failing == ["b1"]
    width = model.params["b1"].size
    assert outcome.reduction.tensors[1].diagnosis == f"db1 has shape (1, {width}) but b1 is ({width},)"


def test_check_lists_fails_a_flat_bias_gradient():
    ns = family("nielsen_style")
    X, Y, _ = ns.case_sigmoid_quadratic()
    net = ns.Network(ns.SIZES, np.random.default_rng(1989))
    backprop = net.backprop

    def flat_biases(x, y):
        nabla_b, nabla_w = backprop(x, y)
        return [nb.reshape(-1) for nb in nabla_b[:1]] + nabla_b[1:], nabla_w

    outcome = gradjob.check_lists(net.total_cost, flat_biases, {"biases": net.biases, "weights": net.weights},
                                  ns.examples(X, Y))
    assert outcome.reduction.failing == ["biases[0]"]
    assert outcome.reduction.tensors[0].diagnosis == "the gradient of biases[0] has shape (8,) but biases[0] is (8, 1)"


# --- 17.3: sys.exit in the user's code raises InputError or JobError -------------------------------

def test_sys_exit_in_user_code_raises_the_api_errors():
    def exiting(X, Y, parameters):
        sys.exit(0)

    with pytest.raises(InputError) as raised:
        gradjob.check(exiting, networks.network_backward, *seed_arrays())
    assert str(raised.value) == "the forward raised at the case's parameters: SystemExit: sys.exit(0) was called"
    assert raised.value.__notes__ == [f'  File "{__file__}", line {exiting.__code__.co_firstlineno + 1}, in exiting\n'
                                      "    sys.exit(0)"]

    def exiting_loss(X, y=None):
        raise SystemExit(1)

    cs = family("cs231n_style")
    X, y, _ = cs.case_bn_dropout()
    model = cs.make_model(seed=231)
    with pytest.raises(InputError) as raised:
        gradjob.check_loss(exiting_loss, model.params, X, y)
    assert str(raised.value) == "the forward raised at the case's parameters: SystemExit: sys.exit(1) was called"

    b3 = float(seed_arrays()[2]["b3"][0, 0])

    def exit_when_b3_moves(X, Y, parameters):
        if float(parameters["b3"][0, 0]) != b3:
            sys.exit(0)
        return networks.network_forward(X, Y, parameters)

    with pytest.raises(JobError, match=r"^the forward failed at b3\[0, 0\] \+ step .*: SystemExit: sys.exit\(0\) was "
                                       r"called; the temporary store is removed") as raised:
        gradjob.check(exit_when_b3_moves, networks.network_backward, *seed_arrays(), fast=False)
    assert raised.value.__notes__[0].endswith("in exit_when_b3_moves\n    sys.exit(0)")  # the user's frame


# --- 20: at a prompt, in a notebook, in pytest ----------------------------------------------------

def test_repr_is_a_few_lines_and_the_store_is_named_nowhere():
    outcome = buggy()
    assert repr(outcome) == (
        "<Outcome FAIL: difference 2.850932e-01 over 47 parameters in 6 tensors; "
        "forward_propagation_n / backward_propagation_n (Python functions)>\n"
        "  wrong: b1: db1 is 4.00× the numerical gradient\n"
        "  wrong: W2: dW2 is 2.00× the numerical gradient")
    assert outcome.store is None
    text = report.to_text(outcome)
    assert "gradjob-" not in text and "store" not in text and "  evaluator forward" in text


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_repr_html_is_the_reports_summary():
    page = _Page()
    page.feed(buggy()._repr_html_())
    text = " ".join(page.text)
    assert "FAIL" in text and "wrong: b1, W2" in text
    assert "FAIL  dW2 is 2.00× the numerical gradient" in text and "worst elements of W2:" in text
    assert page.tags.count("table") == 3 and "img" not in page.tags and "html" not in page.tags


def test_assert_backprop_in_pytest_shows_the_report_not_gradjobs_frames(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent('''
        import gradjob
        from gradjob.model import cases, networks

        def test_backprop():
            case = cases.seed_case()
            gradjob.assert_backprop(networks.forward_propagation_n, networks.backward_propagation_n,
                                    case.X, case.Y, case.parameters, fast=False)
    '''))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    assert "E       AssertionError: FAIL  backprop disagrees with the numerical gradient" in run.stdout
    assert "dW2 is 2.00× the numerical gradient" in run.stdout
    for hidden in ("pipeline/api.py", "def assert_passed", "Outcome(", "gradjob-", "store"):
        assert hidden not in run.stdout, hidden


def test_an_error_in_the_users_forward_in_pytest_shows_the_line_and_their_frames_not_gradjobs(tmp_path):
    """It showed every gradjob frame from api.py to precision.py, with θ and the case as locals."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent('''
        import numpy as np
        import gradjob
        from gradjob.model import cases, networks

        def broken(X, Y, parameters):
            return np.dot(np.ones((8, 6)), np.ones((3, 20)))

        def test_backprop():
            case = cases.seed_case()
            gradjob.assert_backprop(broken, networks.network_backward, case.X, case.Y, case.parameters)
    '''))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    failure = run.stdout.split("_ test_backprop _")[1].split("short test summary")[0]
    assert [line for line in failure.splitlines() if line.startswith(("E ", ">"))] == [
        ">       gradjob.assert_backprop(broken, networks.network_backward, case.X, case.Y, case.parameters)",
        "E       gradjob.errors.InputError: the forward raised at the case's parameters: ValueError: shapes (8,6) "
        "and (3,20) not aligned: 6 (dim 1) != 3 (dim 0)",
        f'E         File "{tmp_path / "test_user.py"}", line 7, in broken',
        "E           return np.dot(np.ones((8, 6)), np.ones((3, 20)))"]
    for hidden in ("pipeline/", "theta", "def analytic_gradient"):
        assert hidden not in failure, hidden
