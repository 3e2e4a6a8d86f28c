"""The typed attributes of the graph's nodes, one small frozen dataclass per kind of node (see
``ops``, where each operation names the class of its attributes). The bottom of the trace: it
imports nothing of it, so the recording rules and the replay rules can both read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NoAttrs:
    """An operation that needs nothing beyond its operands (``matmul``, ``copy``)."""


@dataclass(frozen=True)
class Param:
    name: str


@dataclass(frozen=True)
class Ufunc:
    """An elementwise ufunc (or ``np.where``, ``np.clip``) and its keywords (``dtype``, ``casting``)."""

    function: Any
    kwargs: dict


@dataclass(frozen=True)
class DType:
    dtype: np.dtype


@dataclass(frozen=True)
class Axes:
    axes: tuple


@dataclass(frozen=True)
class Shape:
    shape: tuple


@dataclass(frozen=True)
class Reduction:
    kind: str                 # "sum", "mean", "max", "min", "nansum", "nanmax", "nanmin"
    axes: tuple
    keepdims: bool
    dtype: np.dtype | None


@dataclass(frozen=True)
class Key:
    key: tuple                # integers, slices, None, ..., constant integer or boolean arrays


@dataclass(frozen=True)
class Write:
    """``A[key] = v`` (``function`` None) or ``function.at(A, key, v)`` (``np.add.at``): operands A's
    previous version and v."""

    key: tuple                # as ``Key``'s, arrays recorded as constants
    function: Any = None      # the ufunc of ``ufunc_at``


@dataclass(frozen=True)
class Slot:
    """In a ``Call``'s arguments: the node's operand number ``n``."""

    n: int


@dataclass(frozen=True)
class Call:
    """A NumPy function called on the operands: ``args`` is the call's positional arguments with
    each array replaced by its ``Slot`` (inside lists and tuples too), ``kwargs`` its constant keywords."""

    function: Any
    args: tuple
    kwargs: dict

    def arguments(self, values) -> tuple:
        """The positional arguments with the slots filled from ``values`` (one per operand)."""
        return fill(self.args, values)


def fill(template, values):
    if isinstance(template, Slot):
        return values[template.n]
    if isinstance(template, tuple):
        return tuple(fill(t, values) for t in template)
    if isinstance(template, list):
        return [fill(t, values) for t in template]
    return template
