"""What a traced value does once its trace is over: a ``Traced`` the forward kept in its own
objects (a running mean in a dict) acts as its value at θ, as the real forward's value would.
``after_trace`` wraps ``Traced``'s methods (``array`` applies it to them); ``live`` tells
a value of the trace under way from one left by an earlier trace, ``values_of`` unwraps the latter.

``array`` imports this module, which knows ``Traced`` as ``graph.TracedValue``.
"""

from __future__ import annotations

import builtins
import operator

import numpy as np

from gradjob.trace.casts import Cast, untangle
from gradjob.trace.graph import TracedValue


def after_trace(name: str, method):
    """Once its trace is over, a Traced left in the user's objects (e.g. a running mean kept in
    a dict) behaves as its value at θ, as if the real forward had stored that."""

    def wrapper(self, *args, **kwargs):
        if self._tape.open:
            return method(self, *args, **kwargs)
        if live(args, kwargs):  # a value of this trace meets one left by an earlier trace: a constant
            receiver = np.array(self._value)
            return receiver.T if name == "T" else getattr(receiver, name)(*args, **kwargs)
        args, kwargs = values_of(args), values_of(kwargs)
        if name.startswith("__i") and name[3:-2] in _INPLACE_OPERATORS or name == "__setitem__":
            if isinstance(self._value, np.ndarray) and not self._value.flags.writeable:
                self._value = np.array(self._value)  # the recorded value stays as it was
            if name == "__setitem__":
                return self._value.__setitem__(*args)
            result = getattr(operator, name.strip("_"))(self._value, *args)
            if result is self._value:
                return self
            return result
        if name == "T":
            return self._value.T
        if name in ("__bool__", "__float__", "__int__", "__complex__", "__index__"):
            return getattr(builtins, name.strip("_"))(self._value) if name != "__index__" \
                else operator.index(self._value)
        if name in ("__copy__", "__deepcopy__"):
            return np.array(self._value)
        if name == "__reduce__":
            return np.array(self._value).__reduce__()
        return getattr(self._value, name)(*args, **kwargs)

    wrapper.__name__ = name
    return wrapper


_INPLACE_OPERATORS = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "matmul"}


def live(*objs) -> bool:
    """Whether a value of the trace under way is among ``objs`` (in tuples, lists, dicts)."""
    for obj in objs:
        if isinstance(obj, Cast):
            obj = np.ndarray.__getattribute__(obj, "_traced")
        if isinstance(obj, TracedValue):
            if obj._tape.open:
                return True
        elif isinstance(obj, (tuple, list)):
            if live(*obj):
                return True
        elif isinstance(obj, dict):
            if live(*obj.values()):
                return True
    return False


def values_of(obj):
    """Traced → its value, inside argument tuples, lists and dicts (after the trace)."""
    obj = untangle(obj)
    if isinstance(obj, TracedValue):
        return obj._value
    if isinstance(obj, tuple):
        return tuple(values_of(o) for o in obj)
    if isinstance(obj, list):
        return [values_of(o) for o in obj]
    if isinstance(obj, dict):
        return {k: values_of(v) for k, v in obj.items()}
    return obj
