"""The layout of a model's parameters as one flat vector θ.

Any ordered dict of arrays flattens into θ (C order, tensor after tensor) and back. ``views``
returns arrays that *share memory* with θ, so perturbing θ[i] in place is seen by the forward
without copying the vector or rebuilding the dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from gradjob.errors import InputError
from gradjob.model.naming import element_name


@dataclass(frozen=True)
class Tensor:
    """One named parameter tensor and where it sits in θ."""

    name: str
    shape: tuple[int, ...]
    offset: int
    gradient_shape: tuple[int, ...] | None = None  # the backward's, where it differs: the tensor fails

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of every tensor, and the one dtype θ is held in."""

    tensors: tuple[Tensor, ...]
    dtype: str
    gradient_dtype: str | None = None  # the backward's, where narrower than θ's: its round-off is the gradient's

    @property
    def gradient_eps(self) -> float:
        """The analytic gradient's own relative round-off: θ's dtype's, or the backward's where it returned
        narrower arrays (float32 dW of a float64 check). It widens each element's tolerance by the
        gradient's rounding only; the check's precision and threshold stay θ's."""
        return max(float(np.finfo(d).eps) for d in (self.dtype, self.gradient_dtype or self.dtype))

    @property
    def n_parameters(self) -> int:
        return self.tensors[-1].stop if self.tensors else 0

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @classmethod
    def of(cls, parameters: Mapping[str, object]) -> "Layout":
        """Layout of a parameter dict; refuses anything that is not a real numeric array."""
        if not isinstance(parameters, Mapping) or not parameters:
            raise InputError("parameters must be a non-empty dict of numeric arrays")
        tensors, offset, dtypes = [], 0, []
        for name, value in parameters.items():
            array = numeric_array(value, f"parameter {name!r}")
            if array.size == 0:
                raise InputError(f"parameter {name!r} is empty; every parameter needs at least one element")
            tensors.append(Tensor(str(name), tuple(int(s) for s in array.shape), offset))
            dtypes.append(array.dtype if array.dtype.kind == "f" else np.dtype(np.float64))
            offset += array.size
        return cls(tuple(tensors), np.result_type(*dtypes).name)

    def flatten(self, parameters: Mapping[str, object]) -> np.ndarray:
        """θ as a new contiguous vector in this layout's dtype."""
        theta = np.empty(self.n_parameters, dtype=self.dtype)
        for t in self.tensors:
            theta[t.offset : t.stop] = np.asarray(parameters[t.name]).reshape(-1)
        return theta

    def views(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter dict whose arrays are views into ``theta`` (no copies)."""
        views = {t.name: theta[t.offset : t.stop].reshape(t.shape) for t in self.tensors}
        for t in self.tensors:  # a reshape that copied would silently break in-place perturbation
            assert np.shares_memory(views[t.name], theta), t.name
        return views

    def gradient_keys(self, gradients: Mapping) -> list[str]:
        """The key of each parameter's gradient: ``d<name>`` (the seed's convention) or, when the
        dict holds no ``d<name>`` key at all but some ``<name>``, ``<name>`` (cs231n's ``grads['W1']``)."""
        if not any(f"d{t.name}" in gradients for t in self.tensors) and any(t.name in gradients for t in self.tensors):
            return [t.name for t in self.tensors]
        return [f"d{t.name}" for t in self.tensors]

    def flatten_gradients(self, gradients: object) -> np.ndarray:
        """The analytic gradient as a vector, one key per parameter (see ``gradient_keys``)."""
        if not isinstance(gradients, Mapping):
            raise InputError(
                f"backward returned {type(gradients).__name__}; it must return a dict with a "
                f"gradient 'd<name>' for every parameter (e.g. {', '.join('d' + n for n in self.names[:3])})"
            )
        keys = self.gradient_keys(gradients)
        missing = [key for key in keys if key not in gradients]
        if missing and keys[0] == self.tensors[0].name:  # keyed by parameter name, cs231n's way: name what is there
            present = ", ".join(repr(k) for k in gradients if k in self.names)
            raise InputError(f"backward's gradients have no key {', '.join(repr(k) for k in missing)} (they have "
                             f"{present}); add the gradient of each parameter under its name, e.g. "
                             f"grads[{missing[0]!r}]")
        if missing:
            raise InputError(f"backward returned no gradient for {', '.join(missing)}; add them to its dict")
        grad = np.empty(self.n_parameters, dtype=self.dtype)
        for t, key in zip(self.tensors, keys):
            array = numeric_array(gradients[key], f"gradient {key!r}")
            if array.size != t.size:
                raise InputError(
                    f"gradient {key!r} has shape {array.shape} but parameter {t.name!r} has shape {t.shape}"
                )
            grad[t.offset : t.stop] = array.reshape(-1)
        return grad

    def with_gradient_shapes(self, gradients: Mapping) -> "Layout":
        """This layout noting each gradient whose shape differs from its parameter's although its
        size matches (a ``(5,)`` or ``(1, 5)`` ``db1`` for a ``(5, 1)`` ``b1``): its numbers are
        still compared, but the tensor fails, since ``b1 -= lr * db1`` would broadcast to ``(5, 5)``;
        and the backward's dtype, where narrower than θ's (see ``gradient_eps``)."""
        tensors = []
        for t, key in zip(self.tensors, self.gradient_keys(gradients)):
            shape = tuple(int(s) for s in np.shape(gradients[key]))
            tensors.append(dataclasses.replace(t, gradient_shape=shape if shape != t.shape else None))
        floats = [d for d in self.gradient_dtypes(gradients) if d.kind == "f"]
        narrowest = min(floats, key=lambda d: d.itemsize, default=np.dtype(self.dtype))
        narrower = narrowest.name if narrowest.itemsize < np.dtype(self.dtype).itemsize else None
        return Layout(tuple(tensors), self.dtype, narrower)

    def gradient_dtypes(self, gradients) -> list[np.dtype]:
        """The dtypes of the backward's arrays for these parameters (scalars: none)."""
        arrays = (gradients.get(key) for key in self.gradient_keys(gradients))
        return [a.dtype for a in arrays if isinstance(a, (np.ndarray, np.generic))]

    def locate(self, i: int) -> tuple[str, tuple[int, ...]]:
        """The tensor name and index within that tensor of θ[i]."""
        for t in self.tensors:
            if t.offset <= i < t.stop:
                return t.name, tuple(int(k) for k in np.unravel_index(i - t.offset, t.shape))
        raise IndexError(i)

    def describe(self, i: int) -> str:
        """``W1[2, 3]``: θ[i] as a reader names it."""
        return element_name(*self.locate(i))

    def to_json(self) -> dict:
        data = {"dtype": self.dtype, "tensors": [[t.name, list(t.shape), t.offset] for t in self.tensors]}
        mismatched = {t.name: list(t.gradient_shape) for t in self.tensors if t.gradient_shape is not None}
        data = {**data, "gradient_shapes": mismatched} if mismatched else data  # stores without: none differ
        return {**data, "gradient_dtype": self.gradient_dtype} if self.gradient_dtype else data  # without: θ's

    @classmethod
    def from_json(cls, data: dict) -> "Layout":
        shapes = data.get("gradient_shapes", {})
        return cls(tuple(Tensor(n, tuple(s), o, tuple(shapes[n]) if n in shapes else None)
                         for n, s, o in data["tensors"]), data["dtype"], data.get("gradient_dtype"))


def numeric_array(value: object, what: str, kinds: str = "fiu") -> np.ndarray:
    """``value`` as an array of one of the dtype ``kinds``, or ``InputError`` naming ``what``."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{what} is not a numeric array ({exc})") from None
    if array.dtype.kind not in kinds:
        raise InputError(f"{what} is not a numeric array (dtype {array.dtype}); give real numbers")
    return array
