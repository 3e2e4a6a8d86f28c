"""Issue 13: the Python API. One call from a test suite, in-process by default, and the shapes real
code comes in (cs231n's ``model.loss``, Nielsen's lists, grads keyed ``W1``) with no glue. The
model code is the real family files in tests/families/; float32 parameters throughout them.
"""


import numpy as np
import pytest
from conftest import SEED_BUGGY_DIFFERENCE, SEED_CORRECT_DIFFERENCE, family, seed_arrays

import gradjob
from gradjob.errors import InputError, JobError
from gradjob.model import networks
from gradjob.report import text as report


def _renamed(backward):
    """A backward returning cs231n's keys: W1 for the gradient of W1."""
    def keyed_by_name(X, Y, cache):
        return {k[1:]: v for k, v in backward(X, Y, cache).items() if k[:2] in ("dW", "db")}
    return keyed_by_name


# --- gradjob.check: the seed's numbers, in-process ----------------------------------------------

def test_seed_numbers_through_the_api(private_tmp):
    buggy = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *seed_arrays(),
                          epsilon=1e-7, fast=False)
    assert buggy.reduction.difference == SEED_BUGGY_DIFFERENCE
    assert sorted(buggy.reduction.failing) == ["W2", "b1"] and not buggy.reduction.passed
    correct = gradjob.check(networks.network_forward, networks.network_backward, *seed_arrays(), epsilon=1e-7, fast=False)
    assert correct.reduction.difference == SEED_CORRECT_DIFFERENCE and correct.reduction.passed
    # the traced replay (the default) agrees to round-off amplified by 1/2ε
    traced = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *seed_arrays(), epsilon=1e-7)
    assert traced.evaluator == "traced"
    assert traced.reduction.difference == pytest.approx(SEED_BUGGY_DIFFERENCE, rel=1e-8)
    for outcome in (buggy, correct, traced):  # each store was temporary and is gone, lock and all
        assert outcome.store is None  # removed, and named nowhere
    assert list(private_tmp.iterdir()) == []
    assert report.to_json(correct)["passed"] is True and "PASS" in report.to_text(correct)


def test_assert_backprop_names_the_tensor_and_the_diagnosis(private_tmp):
    outcome = gradjob.assert_backprop(networks.network_forward, networks.network_backward, *seed_arrays())
    assert outcome.reduction.passed

    with pytest.raises(AssertionError) as raised:
        gradjob.assert_backprop(networks.forward_propagation_n, networks.backward_propagation_n, *seed_arrays())
    message = str(raised.value)
    assert message.startswith("FAIL  backprop disagrees with the numerical gradient")
    assert "dW2 is 2.00× the numerical gradient" in message and "db1 is 4.00× the numerical gradient" in message
    assert "worst elements of W2" in message
    assert list(private_tmp.iterdir()) == []
    # the notes the CLI prints on stderr (a path fallen back, a precision kept) end the message
    failed = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *seed_arrays(), fast=False)
    failed.notes = ["the traced fast path is off for this model: …"]
    with pytest.raises(AssertionError) as raised:
        gradjob.assert_passed(failed)
    assert str(raised.value).endswith("\nnote: the traced fast path is off for this model: …")


def test_gradients_keyed_by_parameter_name():
    passed = gradjob.check(networks.network_forward, _renamed(networks.network_backward), *seed_arrays())
    assert passed.reduction.passed
    failed = gradjob.check(networks.forward_propagation_n, _renamed(networks.backward_propagation_n), *seed_arrays())
    diagnoses = {t.name: t.diagnosis for t in failed.reduction.tensors if not t.passed}
    assert diagnoses == {"b1": "db1 is 4.00× the numerical gradient", "W2": "dW2 is 2.00× the numerical gradient"}


def test_options_map_to_the_request(tmp_path):
    path = tmp_path / "kept.zarr"
    first = gradjob.check(networks.network_forward, networks.network_backward, *seed_arrays(), store=path, chunk_size=10,
                          method="five-point", threshold=1e-6)
    assert first.reduction.passed and path.is_dir()
    assert first.meta.chunk_size == 10 and first.meta.method == "five-point"
    again = gradjob.check(networks.network_forward, networks.network_backward, *seed_arrays(), store=str(path),
                          method="five-point", threshold=1e-6)
    assert again.evaluated_chunks == 0 and again.reduction.difference == first.reduction.difference
    screen = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *seed_arrays(),
                           mode="directional", directions=2)
    assert screen.store is None and sorted(screen.reduction.failing) == ["W2", "b1"]


# --- bad input: InputError with the CLI's own line ---------------------------------------------

def test_bad_input_raises_the_clis_message(gradjob_cli, tmp_path, private_tmp):
    X, Y, parameters = seed_arrays()
    run = lambda **kw: gradjob.check(networks.network_forward, networks.network_backward, X, Y,  # noqa: E731
                                     kw.pop("parameters", parameters), **kw)
    for option, value in (("epsilon", 0), ("method", "forward"), ("chunk_size", 0), ("threshold", "x")):
        with pytest.raises(InputError) as raised:
            run(**{option: value})
        cli = gradjob_cli("submit", f"--{option.replace('_', '-')}", str(value))
        assert cli.exit_code == 2 and cli.stderr.strip() == f"gradjob: error: {raised.value}"

    np.savez(tmp_path / "text.npz", X=X, Y=Y, W1=np.array(["a", "b"]))
    with pytest.raises(InputError) as raised:
        run(parameters={"W1": np.array(["a", "b"])})
    cli = gradjob_cli("submit", "--case", tmp_path / "text.npz")
    assert cli.exit_code == 2 and cli.stderr.strip() == f"gradjob: error: {raised.value}"
    assert str(raised.value) == "parameter 'W1' is not a numeric array (dtype <U1); give real numbers"

    with pytest.raises(InputError, match=r"^backward returned no gradient for dW3, db3; add them to its dict$"):
        gradjob.check(networks.network_forward,
                      lambda X, Y, c: {k: v for k, v in networks.network_backward(X, Y, c).items() if "3" not in k},
                      X, Y, parameters)
    with pytest.raises(InputError, match="^--workers sizes the embedded cluster"):
        run(workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="unexpected keyword argument 'epsilom'"):
        run(epsilom=1e-7)
    assert list(private_tmp.iterdir()) == []


def test_a_failing_forward_raises_job_error_and_the_temporary_store_goes(private_tmp):
    X, Y, parameters = seed_arrays()
    limit = parameters["W2"][1, 2]

    def forward(X, Y, p):
        if p["W2"][1, 2] > limit:
            raise ValueError("boom")
        return networks.network_forward(X, Y, p)

    with pytest.raises(JobError, match=r"the forward failed at W2\[1, 2\] \+ step .*ValueError: boom; the "
                                       r"temporary store is removed"):
        gradjob.check(forward, networks.network_backward, X, Y, parameters, fast=False)
    assert list(private_tmp.iterdir()) == []


# --- the families' own seed-signature glue, float32 parameters ----------------------------------

@pytest.mark.parametrize("name", ["cs231n_style", "nielsen_style"])
def test_family_glue_through_check(name):
    module = family(name)
    for (case, backward), failing in module.EXPECTED.items():
        X, Y, parameters = getattr(module, case)()
        assert {v.dtype for v in parameters.values()} == {np.dtype(np.float32)}
        outcome = gradjob.check(module.forward, getattr(module, backward), X, Y, parameters)
        assert outcome.reduction.failing == failing, report.to_text(outcome)
        for tensor, diagnosis in module.DIAGNOSES.get(backward, {}).items():
            assert next(t for t in outcome.reduction.tensors if t.name == tensor).diagnosis == diagnosis


# --- cs231n: model.loss(X, y) -> (loss, grads), reading model.params ----------------------------

def _counting(cs, scale_b3=None):
    """The family's FullyConnectedNet (float32), counting its loss calls; ``scale_b3``: its
    broken twin, grads['b3'] scaled."""
    class Net(cs.FullyConnectedNet):
        calls = 0

        def loss(self, X, y=None):
            type(self).calls += 1
            loss, grads = super().loss(X, y)
            if scale_b3 is not None:
                grads["b3"] = grads["b3"] * np.float32(scale_b3)
            return loss, grads

    model = cs.make_model(seed=231)
    model.__class__ = Net
    return model


def test_check_loss_on_cs231n_code(private_tmp):
    cs = family("cs231n_style")
    X, y, _ = cs.case_bn_dropout()
    model = _counting(cs)
    own = dict(model.params)
    assert all(v.dtype == np.float32 for v in own.values())
    n = sum(v.size for v in own.values())

    traced = gradjob.check_loss(model.loss, model.params, X, y)
    assert traced.reduction.passed and traced.evaluator == "traced", report.to_text(traced)
    assert all(model.params[k] is own[k] for k in own) and list(model.params) == list(own)
    traced_calls, type(model).calls = type(model).calls, 0
    plain = gradjob.check_loss(model.loss, model.params, X, y, fast=False)
    assert plain.reduction.passed and plain.evaluator == "forward"
    # forward path: every perturbation runs the whole loss, backward part included (2 per parameter);
    # traced: a fixed number of calls (gradient, trace, validation of every tensor on both sides before the job
    # and per chunk, the workers' check of J), none per parameter
    assert type(model).calls >= 2 * n and traced_calls < 150 < n

    broken = _counting(cs, scale_b3=1.05)
    with pytest.raises(AssertionError) as raised:
        gradjob.assert_passed(gradjob.check_loss(broken.loss, broken.params, X, y))
    assert "wrong: b3" in str(raised.value) and cs.DIAGNOSES["backward_b3_x1_05"]["b3"] in str(raised.value)
    assert list(private_tmp.iterdir()) == []


def test_check_loss_whose_grads_lack_a_parameter_names_the_key(private_tmp):
    cs = family("cs231n_style")
    X, y, _ = cs.case_bn_dropout()
    model = cs.make_model(seed=231)

    def forgetful(X, y=None):  # grads['b3'] and grads['gamma1'] left out, as a half-written loss leaves them
        loss, grads = model.loss(X, y)
        return loss, {k: v for k, v in grads.items() if k not in ("b3", "gamma1")}

    with pytest.raises(InputError) as raised:
        gradjob.check_loss(forgetful, model.params, X, y)
    kept = ", ".join(repr(k) for k in model.loss(X, y)[1] if k not in ("b3", "gamma1"))
    assert str(raised.value) == (f"loss's grads have no gradient for gamma1, b3 (its keys: {kept}); add "
                                 "grads['gamma1'] and grads['b3'], the gradient of the loss with respect to "
                                 "params['gamma1'] and so on")
    assert list(private_tmp.iterdir()) == []


# --- Nielsen: net.weights / net.biases lists, backprop(x, y) -> (nabla_b, nabla_w) --------------

def _nielsen(ns, scale_w0=None):
    class Net(ns.Network):
        def backprop(self, x, y):
            nabla_b, nabla_w = super().backprop(x, y)
            if scale_w0 is not None:
                nabla_w[0] = nabla_w[0] * np.float32(scale_w0)
            return nabla_b, nabla_w

    X, Y, _ = ns.case_sigmoid_quadratic()
    net = Net(ns.SIZES, np.random.default_rng(1989))
    return net, ns.examples(X, Y)


def test_check_lists_on_nielsen_code(private_tmp):
    ns = family("nielsen_style")
    net, data = _nielsen(ns)
    weights = list(net.weights)
    assert all(w.dtype == np.float32 for w in weights)
    outcome = gradjob.check_lists(net.total_cost, net.backprop, {"biases": net.biases, "weights": net.weights}, data)
    assert outcome.reduction.passed, report.to_text(outcome)
    assert [t.name for t in outcome.reduction.tensors] == ["biases[0]", "biases[1]", "biases[2]",
                                                           "weights[0]", "weights[1]", "weights[2]"]
    assert all(a is b for a, b in zip(net.weights, weights))

    broken, data = _nielsen(ns, scale_w0=1.05)
    with pytest.raises(AssertionError) as raised:
        gradjob.assert_passed(gradjob.check_lists(broken.total_cost, broken.backprop,
                                                  {"biases": broken.biases, "weights": broken.weights}, data))
    message = str(raised.value)
    assert "wrong: weights[0]\n" in message and "weights[0] is 1.05× the numerical gradient" in message

    with pytest.raises(InputError, match=r"backprop's list 1 has shapes \[\(8, 1\), \(5, 1\), \(3, 1\)\] but "
                                         r"'weights' has \[\(8, 6\), \(5, 8\), \(3, 5\)\]; list the parameters in the "
                                         r"order backprop returns"):
        gradjob.check_lists(net.total_cost, net.backprop, {"weights": net.weights, "biases": net.biases}, data)
    assert all(a is b for a, b in zip(net.weights, weights))
    assert list(private_tmp.iterdir()) == []


# --- on a real cluster: functions travel by cloudpickle ------------------------------------------

def test_on_a_local_cluster(cluster_address):
    def broken(X, Y, cache):  # defined here: it reaches the workers by value
        gradients = networks.network_backward(X, Y, cache)
        gradients["dW3"] = -gradients["dW3"]
        return gradients

    outcome = gradjob.check(networks.network_forward, broken, *seed_arrays(), scheduler=cluster_address)
    assert outcome.reduction.failing == ["W3"]
    assert outcome.reduction.tensors[4].diagnosis.startswith("dW3 has the wrong sign")
    assert outcome.store is None

    cs = family("cs231n_style")
    X, y, _ = cs.case_bn_dropout()
    model = cs.make_model(seed=231)
    assert gradjob.check_loss(model.loss, model.params, X, y, scheduler=cluster_address).reduction.passed


@pytest.fixture
def gradjob_cli(gradjob):
    """conftest's CLI runner; named apart from the package this file calls."""
    return gradjob
