"""``x[mask]`` with a mask computed from the parameters, as cs231n's stable sigmoid uses it:
``z[pos] = np.exp(-x[pos])``. Its length changes with the mask, which a replay of fixed shapes
cannot follow; so it is held as all of x's lanes (``Lanes``: its node is x's, its value the
selected elements, as the forward sees them). Elementwise operations with scalars act on every lane
(the lanes the forward does not compute are computed and never read), and storing the result back
with the same mask is ``np.where(mask, result, z)`` (see ``writes.masked``): per perturbation, the
lanes the mask then selects, each computed as the forward computes it. Any other use is refused.
"""

from __future__ import annotations

import numpy as np

from gradjob.trace.array import Traced
from gradjob.trace.functions import LANES_REFUSED as REFUSED
from gradjob.trace.graph import refuse


class Lanes(Traced):
    """``x[mask]``: x's node and every lane at θ (``_full``), the mask's node, the selected values."""

    __slots__ = ("_mask_id", "_mask_value", "_full")
    is_lanes = True

    def _inplace(self, ufunc, other):
        refuse(REFUSED)

    def _number(self, convert, what):
        refuse(REFUSED)

    def whole(self) -> Traced:
        """Every lane, as a traced array of the mask's shape."""
        return Traced(self._tape, self._id, self._full)

    def elementwise(self, record, function, inputs, kwargs) -> "Lanes":
        """An elementwise ufunc of lanes of one mask (this one's among them) and scalars, on every
        lane; ``record`` is ``functions.record_ufunc``, which calls this."""
        lanes = [x for x in inputs if isinstance(x, Lanes)]
        if any(x._mask_id != self._mask_id for x in lanes) \
                or any(np.ndim(x._value if isinstance(x, Traced) else x) != 0 for x in inputs if not isinstance(x, Lanes)):
            refuse(REFUSED)
        with np.errstate(all="ignore"):  # lanes the forward does not compute may overflow: never read
            result = record(function, "__call__", [x.whole() if isinstance(x, Lanes) else x for x in inputs], kwargs)
        out = Lanes(result._tape, result._id, result._value[self._mask_value])
        out._mask_id, out._mask_value, out._full = self._mask_id, self._mask_value, result._value
        return out


def select(a: Traced, mask: Traced) -> Lanes:
    """``a[mask]``, mask a traced boolean array of a's shape."""
    if mask.dtype != bool or mask.shape != a.shape or isinstance(a, Lanes):
        refuse("indexing with a traced array (an index computed from the parameters) is not supported")
    lanes = Lanes(a._tape, a._id, a._value[mask._value])
    lanes._mask_id, lanes._mask_value, lanes._full = mask._id, mask._value, a._value
    return lanes
