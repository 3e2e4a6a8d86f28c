"""Issue 17, points 5 and 9: the traced path is never trusted where it was found wrong, never leaks a
value at θ as a constant, and gives an element the same numbers in any batch, so in any chunking."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from gradjob.executors.serial import SerialExecutor
from gradjob.run import job, preflight
from gradjob.trace import Replay
from gradjob.types import Request

EXAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "examples"
FAMILIES = Path(__file__).resolve().parents[1] / "families"
SEED_STYLE = dict(model=str(EXAMPLES / "seed_style.py"), case="random", layers=(20, 16, 12, 1), examples=33)


def test_an_element_costs_the_same_to_the_last_bit_in_any_batch():
    """Alone, in pairs, in batches of 3, 8, 21 and all at once (other rows pinned beside it, other
    examples changed by its neighbours): the same bits for every W1 element, on both sides."""
    prepared = preflight.prepare(Request(**SEED_STYLE))
    replay = Replay.of(prepared.model.forward, prepared.case.X, prepared.case.Y, prepared.layout, prepared.theta)
    theta = prepared.theta
    index = np.arange(prepared.layout.n_parameters)
    for sign in (1, -1):
        values = theta + sign * 1e-6 * np.maximum(1, np.abs(theta))
        alone = np.array([replay.costs(index[k:k + 1], values[k:k + 1])[0] for k in index])
        for size in (2, 3, 8, 21, index.size):
            batched = np.concatenate([replay.costs(index[s:s + size], values[s:s + size])
                                      for s in range(0, index.size, size)])
            assert np.array_equal(batched, alone), (sign, size, np.flatnonzero(batched != alone))


@pytest.mark.parametrize("epsilon", [None, 1e-7])
def test_chunk_sizes_7_and_14_give_bit_identical_gradapprox_on_the_traced_path(epsilon, tmp_path):
    arrays = {}
    for size in (7, 14):
        outcome = job.run(Request(**SEED_STYLE, chunk_size=size, epsilon=epsilon, store=str(tmp_path / f"{size}.zarr")),
                          executor=SerialExecutor)
        assert outcome.evaluator == "traced"
        arrays[size] = zarr.open_group(str(tmp_path / f"{size}.zarr"), mode="r")["gradapprox"][:]
    assert np.array_equal(arrays[7], arrays[14]), np.flatnonzero(arrays[7] != arrays[14])
