"""The seed case is the notebook's numbers, and building it leaves the process's global NumPy
random state alone: a user's weights drawn at import after it must still differ between processes,
or the workers' J(θ) probe cannot see randomness drawn without a seed."""

import numpy as np

from gradjob.model.cases import seed_case


def test_the_seed_case_is_the_notebooks_and_leaves_the_global_random_state_alone():
    np.random.seed(12345)
    before = np.random.get_state()
    case = seed_case()
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert case.X[0, 0] == 1.6243453636632417 and case.parameters["b3"][0, 0] == 0.2855873252542588
    assert [v.shape for v in case.parameters.values()] == [(5, 4), (5, 1), (3, 5), (3, 1), (1, 3), (1, 1)]
