"""What a traced value does once its trace is over: a ``Traced`` the forward kept in its own
objects (a running mean in a dict) acts as its value at θ, as the real forward's value would.
``_after_trace`` wraps ``Traced``'s methods (``traced_array`` applies it to them); ``_live`` tells
a value of the trace under way from one left by an earlier trace, ``_values`` unwraps the latter.

``traced_array`` imports this module, so ``_live`` and ``_values`` import ``Traced`` when called
(which is only ever after a trace).
"""

from __future__ import annotations

import builtins
import operator

import numpy as np

from gradjob.trace.casts import _Cast, _untangle


def _after_trace(name: str, method):
    """Once its trace is over, a Traced left in the user's objects (e.g. a running mean kept in
    a dict) behaves as its value at θ, as if the real forward had stored that."""

    def wrapper(self, *args, **kwargs):
        if self._tape.open:
            return method(self, *args, **kwargs)
        if _live(args, kwargs):  # a value of this trace meets one left by an earlier trace: a constant
            receiver = np.array(self._value)
            return receiver.T if name == "T" else getattr(receiver, name)(*args, **kwargs)
        args, kwargs = _values(args), _values(kwargs)
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


def _live(*objs) -> bool:
    """Whether a value of the trace under way is among ``objs`` (in tuples, lists, dicts)."""
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    for obj in objs:
        if isinstance(obj, _Cast):
            obj = np.ndarray.__getattribute__(obj, "_traced")
        if isinstance(obj, Traced):
            if obj._tape.open:
                return True
        elif isinstance(obj, (tuple, list)):
            if _live(*obj):
                return True
        elif isinstance(obj, dict):
            if _live(*obj.values()):
                return True
    return False


def _values(obj):
    """Traced → its value, inside argument tuples, lists and dicts (after the trace)."""
    from gradjob.trace.array import Traced  # lazy: see the module docstring

    obj = _untangle(obj)
    if isinstance(obj, Traced):
        return obj._value
    if isinstance(obj, tuple):
        return tuple(_values(o) for o in obj)
    if isinstance(obj, list):
        return [_values(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _values(v) for k, v in obj.items()}
    return obj
