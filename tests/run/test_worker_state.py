"""Issue 17.4: workers must evaluate the function the client checked. Each worker evaluates J at θ before
its first chunk and compares it with the client's; a model whose
workers see other module state (a module-level dict the client's calls changed, weights drawn
without a seed at import) stops the job with one line naming the likely causes, exit 3: the
workers' state can only be seen once they run the model."""

import importlib
import sys

import numpy as np
import pytest

import gradjob
from gradjob.errors import JobError

CAUSES = ("the workers evaluate a different function than the client: J(θ) is {worker} on a worker but {client} "
          "on the client. Likely causes: module-level state the client's calls changed (a dict or global the "
          "forward reads), randomness drawn at import without a seed, or a cache kept between calls; make the "
          "forward depend only on its arguments")

UNSEEDED = """import numpy as np

NOISE = np.random.randn(2, 5)   # drawn at import, without a seed: each process draws its own


def forward(X, Y, p):
    Z = p["W"] @ X + NOISE
    return 0.5 * np.sum((Z - Y) ** 2), (X, Y, Z)


def backward(X, Y, cache):
    X, Y, Z = cache
    return {"dW": (Z - Y) @ X.T}


def case():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 5)), rng.standard_normal((2, 5)), {"W": rng.standard_normal((2, 3))}
"""


@pytest.mark.parametrize("fast", ["--fast", "--no-fast"])
def test_weights_drawn_unseeded_at_import_stop_the_job_with_the_likely_causes(fast, gradjob, write_model,
                                                                               cluster_address):
    path = write_model(UNSEEDED)
    run = gradjob("submit", "--model", str(path), "--forward", "forward", "--backward", "backward",
                  "--case", f"{path}:case", "--scheduler", cluster_address, fast)
    assert run.exit_code == 3, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr
    error = [line for line in lines if line.startswith("gradjob: error: ")]
    assert len(error) == 1, run.stderr
    assert "the workers evaluate a different function than the client: J(θ) is " in error[0]
    assert error[0].endswith(CAUSES.split("Likely causes: ")[1]), error[0]


STATEFUL = '''import numpy as np

SETTINGS = {"reg": 0.0}   # min-char-rnn style: module-level state the script sets up


def configure(reg):
    SETTINGS["reg"] = reg


class Net:
    def __init__(self):
        rng = np.random.default_rng(1)
        self.params = {"W1": rng.standard_normal((4, 3)), "W2": rng.standard_normal((2, 4))}

    def loss(self, X, y):
        W1, W2 = self.params["W1"], self.params["W2"]
        h = np.maximum(0, X @ W1.T)
        scores = h @ W2.T
        reg = SETTINGS["reg"]
        loss = 0.5 * np.sum((scores - y) ** 2) + 0.5 * reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
        d = scores - y
        dW2 = d.T @ h + reg * W2
        dh = d @ W2 * (h > 0)
        return loss, {"W1": dh.T @ X + reg * W1, "W2": dW2}
'''


@pytest.fixture
def stateful(tmp_path, monkeypatch):
    (tmp_path / "stateful_net.py").write_text(STATEFUL)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("stateful_net")
    yield module
    sys.modules.pop("stateful_net", None)


@pytest.mark.parametrize("fast", [True, False])
def test_check_loss_on_workers_with_a_module_dict_the_client_changed_raises_one_clear_error(fast, stateful,
                                                                                          monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(stateful.__file__).rsplit("/", 1)[0])  # workers import it, fresh
    stateful.configure(reg=0.5)  # on the client only: a worker imports the module with reg = 0
    net = stateful.Net()
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    with pytest.raises(JobError) as info:
        gradjob.check_loss(net.loss, net.params, X, y, workers=2, fast=fast)
    assert str(info.value).startswith("the workers evaluate a different function than the client: J(θ) is ")
    assert "module-level state the client's calls changed" in str(info.value)
    assert "Untraceable" not in str(info.value)
    in_process = gradjob.check_loss(net.loss, net.params, X, y, fast=fast)  # the same model in-process passes
    assert in_process.reduction.passed


def test_check_loss_whose_second_trace_is_refused_raises_input_error_not_untraceable():
    """A loss that is traceable once and then, because of what it kept, no longer: one clear error
    (exit 2 on the command line, before a store is written), never ``Untraceable``'s traceback."""
    from gradjob.errors import InputError

    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((3, 2))}
    kept = {"traces": 0}

    def loss(X, y):
        W = params["W"]
        if type(W).__name__ == "Traced":
            kept["traces"] += 1
            if kept["traces"] > 1:
                W = W.tolist()  # what a cache of the first trace's arrays would lead to: refused
        d = X @ W - y
        return 0.5 * np.sum(d * d), {"W": X.T @ d}

    X, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with pytest.raises(InputError) as info:
        gradjob.check_loss(loss, params, X, y)
    assert str(info.value).startswith("the forward was traced once but not a second time (.tolist() of a traced "
                                      "value is not supported (")
    assert str(info.value).endswith("make it so, or turn the traced fast path off (--no-fast, fast=False)")
