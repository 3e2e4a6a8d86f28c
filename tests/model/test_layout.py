import numpy as np
import pytest

from gradjob.errors import InputError
from gradjob.model.layout import Layout


def parameters():
    return {"W1": np.arange(6.0).reshape(2, 3), "b1": np.array([[7.0], [8.0]]), "s": np.array(9.0),
            "T": np.arange(24.0).reshape(2, 3, 4) + 10}


def test_flatten_and_views_round_trip_any_shapes():
    layout = Layout.of(parameters())
    theta = layout.flatten(parameters())
    assert layout.n_parameters == 6 + 2 + 1 + 24
    assert [t.offset for t in layout.tensors] == [0, 6, 8, 9]
    views = layout.views(theta)
    for name, value in parameters().items():
        np.testing.assert_array_equal(views[name], value)
        assert views[name].shape == value.shape


def test_views_share_memory_so_perturbing_theta_changes_the_parameter():
    layout = Layout.of(parameters())
    theta = layout.flatten(parameters())
    views = layout.views(theta)
    theta[layout.tensors[3].offset + 5] += 1.0
    assert views["T"][0, 1, 1] == 16.0
    theta[8] = -1.0
    assert float(views["s"]) == -1.0


def test_locate_names_tensor_and_index():
    layout = Layout.of(parameters())
    assert layout.describe(0) == "W1[0, 0]"
    assert layout.describe(5) == "W1[1, 2]"
    assert layout.describe(7) == "b1[1, 0]"
    assert layout.describe(8) == "s"
    assert layout.describe(9 + 23) == "T[1, 2, 3]"


def test_layout_json_round_trip():
    layout = Layout.of(parameters())
    assert Layout.from_json(layout.to_json()) == layout


def test_a_narrower_backward_dtype_is_noted_and_widens_only_the_gradients_round_off():
    layout = Layout.of({"W": np.zeros((2, 2)), "b": np.zeros(2)})
    noted = layout.with_gradient_shapes({"dW": np.ones((2, 2), np.float32), "db": np.ones(2)})
    assert (noted.dtype, noted.gradient_dtype) == ("float64", "float32")
    assert noted.gradient_eps == float(np.finfo(np.float32).eps) and layout.gradient_eps == float(np.finfo(float).eps)
    assert Layout.from_json(noted.to_json()) == noted and noted.to_json()["gradient_dtype"] == "float32"
    same = layout.with_gradient_shapes({"dW": np.ones((2, 2)), "db": np.ones(2)})
    assert same.gradient_dtype is None and "gradient_dtype" not in same.to_json()


def test_gradients_flatten_by_d_prefix_and_ignore_other_keys():
    layout = Layout.of({"W": np.zeros((2, 2)), "b": np.zeros((2, 1))})
    grad = layout.flatten_gradients({"dW": np.ones((2, 2)), "db": np.array([2.0, 3.0]), "dZ": "ignored"})
    np.testing.assert_array_equal(grad, [1, 1, 1, 1, 2, 3])


@pytest.mark.parametrize("gradients, message", [
    ({"dW": np.ones((2, 2))}, "backward returned no gradient for db; add them to its dict"),
    ({"W": np.ones((2, 2))}, "backward's gradients have no key 'b' (they have 'W'); add the gradient of each "
                             "parameter under its name, e.g. grads['b']"),
    ({"W": np.ones((2, 2)), "dZ": np.ones(2)}, "backward's gradients have no key 'b' (they have 'W'); add"),
    ({"dZ": np.ones(2)}, "backward returned no gradient for dW, db; add them to its dict"),
    ({"dW": np.ones((2, 3)), "db": np.ones(2)}, "gradient 'dW' has shape (2, 3) but parameter 'W' has shape (2, 2)"),
    ({"dW": np.array([["a", "b"], ["c", "d"]]), "db": np.ones(2)}, "gradient 'dW' is not a numeric array (dtype <U1)"),
    ([1, 2], "backward returned list; it must return a dict"),
])
def test_bad_gradients_are_named(gradients, message):
    layout = Layout.of({"W": np.zeros((2, 2)), "b": np.zeros((2, 1))})
    with pytest.raises(InputError) as info:
        layout.flatten_gradients(gradients)
    assert str(info.value).startswith(message)


def test_non_numeric_parameters_are_refused():
    with pytest.raises(InputError, match="parameter 'W' is not a numeric array"):
        Layout.of({"W": np.array(["x"])})


def test_gradients_shaped_unlike_their_parameters_are_noted_and_stored():
    """Issue 17.2: a (2,) gradient for a (2, 1) bias is compared by value but noted, JSON and all."""
    layout = Layout.of({"W": np.zeros((2, 2)), "b": np.zeros((2, 1))})
    gradients = {"dW": np.ones((2, 2)), "db": np.array([2.0, 3.0])}
    noted = layout.with_gradient_shapes(gradients)
    assert [t.gradient_shape for t in noted.tensors] == [None, (2,)]
    assert noted.to_json()["gradient_shapes"] == {"b": [2]}
    assert Layout.from_json(noted.to_json()) == noted
    assert "gradient_shapes" not in layout.with_gradient_shapes({**gradients, "db": np.ones((2, 1))}).to_json()
