"""Issue 18's acceptance models shipped in pipeline/examples/: cs231n's naive conv + max-pool net and
its vanilla RNN (slice stores into np.zeros, ``+=`` accumulation over time), each at its small case,
pass with their correct backwards and fail, naming the tensor, with a planted bug."""

import json

import pytest

from gradjob import examples

BUGGY = '''
import numpy as np
from gradjob.examples import conv_pool, rnn

conv_pool_forward, rnn_forward = conv_pool.forward_propagation_n, rnn.forward_propagation_n


def conv_W1_without_regularisation(X, Y, cache):
    grads = conv_pool.backward_propagation_n(X, Y, cache)
    grads["W1"] = grads["W1"] - conv_pool.REG * cache[0][1]
    return grads


def rnn_Wh_assigned_not_accumulated(X, Y, cache):
    """The classic slip: ``dWh = dWh_t`` in the loop over time keeps only the first step's share."""
    grads = rnn.backward_propagation_n(X, Y, cache)
    embed_cache, rnn_cache, affine_cache, dscores = cache
    dh, _, _ = rnn.temporal_affine_backward(dscores, affine_cache)
    dprev_h = np.zeros_like(dh[:, 0, :])
    for t in reversed(range(dh.shape[1])):
        _, dprev_h, _, dWh_t, _ = rnn.rnn_step_backward(dh[:, t, :] + dprev_h, rnn_cache[t])
        grads["Wh"] = dWh_t
    return grads
'''
TENSORS = {"conv_pool": ["W1", "b1", "W2", "b2", "W3", "b3"],
           "rnn": ["W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"]}


@pytest.mark.parametrize("name, backward, failing", [
    ("conv_pool", None, []),
    ("conv_pool", "conv_W1_without_regularisation", ["W1"]),
    ("rnn", None, []),
    ("rnn", "rnn_Wh_assigned_not_accumulated", ["Wh"]),
])
def test_the_examples_pass_and_a_planted_bug_fails_naming_its_tensor(name, backward, failing, gradjob, write_model,
                                                                    cluster_address):
    functions = ["--forward", f"{name}_forward", "--backward", backward] if backward else []
    run = gradjob("submit", "--json", "--model", write_model(BUGGY) if backward else examples.path(name), *functions,
                  "--case", f"{examples.path(name)}:small_case", "--scheduler", cluster_address)
    assert run.exit_code == (1 if failing else 0), run.stderr
    result = json.loads(run.stdout)
    assert list(result["tensors"]) == TENSORS[name]
    assert (result["passed"], result["failing"]) == (not failing, failing)
