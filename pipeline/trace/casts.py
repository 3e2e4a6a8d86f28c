"""Where NumPy converts a traced value instead of dispatching to it, and how it stays traced
there: NumPy's scalar types used as casts (``np.int64(A > 0)`` gives a ``Cast``), and
``X.dot(W)`` with X a plain array (``_Dot``, caught by a profile hook, ``Profile``).
``untangle`` turns a cast back into the ``Traced`` it stands for.

``Traced`` (``array``) and the record rules (``functions``) import this module; a cast hands
every call on to the ``Traced`` it stands for by calling NumPy again, so imports neither.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from gradjob.trace.attrs import NoAttrs
from gradjob.trace.graph import Ref, TracedValue, Untraceable, current_tape, refuse


class Cast(np.ndarray):
    """What ``np.int64(A > 0)`` returns: NumPy's scalar types call ``__array__(dtype)`` and keep
    an ndarray subclass, so the cast stays traced. Every use goes to the ``Traced`` it carries.
    Its own memory is filled with a sentinel, not the values: were it ever read as a plain array
    (``np.asarray`` strips subclasses), the forward's cost would differ from the real one, which
    the caller's comparison at θ reports."""

    _traced: TracedValue
    __array_priority__ = 1_000_000  # NumPy makes X.dot(W)'s result of this type (see _Dot)

    @classmethod
    def of(cls, traced: TracedValue) -> "Cast":
        out = np.empty(traced.shape, dtype=traced.dtype).view(cls)
        poison(out, traced._value)
        out._traced = traced
        traced._tape.casts.append(weakref.ref(out))
        return out

    def __array_finalize__(self, obj):
        self._traced = None  # an array NumPy derived from a cast on its own: refused on use
        tape = current_tape.get()
        calls = tape.profile.calls if tape is not None and tape.profile is not None else None
        if calls and calls[-1][1] is not None:  # made within X.dot(W): maybe the product
            calls[-1][1].results.append(self)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return getattr(ufunc, method)(*untangle(inputs), **untangle(kwargs))  # to the Traced it stands for

    def __array_function__(self, func, types, args, kwargs):
        return func(*untangle(args), **untangle(kwargs))  # to the Traced it stands for

    def __getattribute__(self, name):
        if name in ("_traced", "__class__", "__array_ufunc__", "__array_function__", "__array_finalize__",
                    "__array_priority__", "__array_interface__", "__array_struct__", "__array_wrap__",
                    "__dict__", "shape", "ndim", "dtype", "size", "strides", "flags", "base", "data",
                    "itemsize", "nbytes", "__len__", "view", "__reduce_ex__", "__array__"):
            return super().__getattribute__(name)
        return getattr(untangle(self), name)


def poison(array: np.ndarray, value) -> None:
    """Fill an array that stands for a traced value with values that differ from ``value``."""
    if array.dtype.kind == "b":
        np.ndarray.__setitem__(array, Ellipsis, ~np.asarray(value, dtype=bool))
    elif array.dtype.kind in "iu":
        np.ndarray.fill(array, np.iinfo(array.dtype).min)
    else:
        np.ndarray.fill(array, np.nan)


class _Dot:
    """``X.dot(W)`` with X a plain array and W traced. ``ndarray.dot`` has no dispatch: it
    converts W with ``__array__``, which cannot return a traced value. So during the trace a
    profile hook follows C calls; when ``__array__`` is asked for within ``X.dot``, it gives a
    ``Cast`` holding W's values, of higher priority, so that NumPy makes the product a ``Cast``
    too; when the call returns, the product is recorded and that array from then on stands for it
    (its memory poisoned, like every ``Cast``'s)."""

    def __init__(self, X: np.ndarray, traced: TracedValue):
        self.X, self.traced, self.results = X, traced, []
        self.argument = np.array(traced._value).view(Cast)
        self.argument._traced = traced
        self.converted: list[Cast] = []

    def argument_as(self, dtype: np.dtype) -> "Cast":
        """W's values in the dtype NumPy asks for (it converts W to the product's type)."""
        if dtype == self.argument.dtype:
            return self.argument
        converted = np.array(self.traced._value, dtype=dtype).view(Cast)
        converted._traced = self.traced.astype(dtype)
        self.converted.append(converted)
        return converted

    def finish(self, returned: bool, frame) -> None:
        expected = self.X.shape[:-1] + self.traced.shape[1:]
        given = [a.view(np.ndarray) for a in [self.argument, *self.converted]]
        results = [r for r in self.results if r.shape == expected
                   and not any(np.shares_memory(r.view(np.ndarray), a) for a in given)]
        for a in [self.argument, *self.converted]:
            poison(a, np.ndarray.__getattribute__(a, "_traced")._value)
        if not returned:
            return
        tape = self.traced._tape
        if len(results) != 1:
            where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
            if tape.refused is None:
                tape.refused = Untraceable("X.dot(W) with X a plain array and W traced, with out= or giving a "
                                           "scalar, is not supported: write np.dot(X, W)", where)
            return
        product = results[0]
        value = np.array(product.view(np.ndarray))
        node = tape.add("matmul", (tape.constant(self.X), Ref(self.traced._id)), NoAttrs(), value)
        product._traced = tape.make(tape, node, value)
        poison(product, value)
        tape.casts.extend(weakref.ref(a) for a in (product, self.argument, *self.converted))


_PLAIN_ARRAY = (np.asarray, np.array, np.ascontiguousarray, np.asfortranarray)


class Profile:
    """The C calls under way while tracing (a profile hook, chained to any other profiler)."""

    def __init__(self, previous):
        self.previous, self.calls = previous, []

    def __call__(self, frame, event, arg):
        if event == "c_call":
            self.calls.append([arg, None])
        elif event in ("c_return", "c_exception") and self.calls:
            function, dot = self.calls.pop()
            if dot is not None:
                dot.finish(event == "c_return", frame)
        if self.previous is not None:
            self.previous(frame, event, arg)

    def converting(self) -> bool:
        """Whether the innermost C call under way makes a plain array (``np.asarray(x, dtype=...)``):
        a ``Cast`` given to it would lose its type and leave its poisoned memory behind."""
        if not self.calls:
            return False
        function = self.calls[-1][0]  # read first: a builtin called here (any, ...) is a C call too
        for plain in _PLAIN_ARRAY:
            if function is plain:
                return True
        return False

    def dot_of(self, traced: TracedValue):
        """The ``_Dot`` when ``traced`` is being converted as the argument of X.dot, else None."""
        if not self.calls:
            return None
        if self.calls[-1][1] is not None:  # NumPy may ask twice
            return self.calls[-1][1] if self.calls[-1][1].traced is traced else None
        function = self.calls[-1][0]
        X = getattr(function, "__self__", None)
        if type(X) is not np.ndarray or getattr(function, "__name__", "") != "dot" or function != X.dot:
            return None
        if not (1 <= X.ndim <= 2 and 1 <= traced.ndim <= 2) or X.ndim == traced.ndim == 1:
            return None
        self.calls[-1][1] = dot = _Dot(X, traced)
        return dot


def _cast_delegate(name):
    def method(self, *args):
        return getattr(untangle(self), name)(*args)

    method.__name__ = name
    return method


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__",
              "__matmul__", "__rmatmul__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
              "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__iadd__", "__isub__", "__imul__",
              "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
              "__imatmul__", "__neg__", "__pos__", "__abs__", "__invert__", "__bool__", "__float__", "__int__",
              "__complex__", "__index__", "__contains__", "__getitem__", "__setitem__", "__iter__", "__repr__",
              "__str__", "__format__", "__copy__", "__deepcopy__", "__reduce__"):
    setattr(Cast, _name, _cast_delegate(_name))


def untangle(obj):
    """``Cast`` → its ``Traced``, inside argument tuples, lists and dicts."""
    if isinstance(obj, Cast):
        traced = np.ndarray.__getattribute__(obj, "_traced")
        if traced is None and current_tape.get() is None:
            return obj.view(np.ndarray)  # after the trace: an array like any other
        if traced is None:
            refuse("converting a cast of a traced array again (e.g. np.float64(np.int64(A > 0))) is not supported")
        return traced
    if isinstance(obj, tuple):
        return tuple(untangle(o) for o in obj)
    if isinstance(obj, list):
        return [untangle(o) for o in obj]
    if isinstance(obj, dict):
        return {k: untangle(v) for k, v in obj.items()}
    return obj
