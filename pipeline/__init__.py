"""gradjob: numerical proof that a hand-written backpropagation is correct, as a Dask batch job.

``job`` runs one check top to bottom (prepare → plan → evaluate → verify → reduce); README's
"Layout of the code" names the module of every stage.

The Python API (``api``): ``gradjob.check(forward, backward, X, Y, parameters, **options)``,
``gradjob.check_loss(loss, params, X, y)``, ``gradjob.check_lists(cost, backprop, lists, data)``,
``gradjob.assert_backprop(...)`` and ``gradjob.assert_passed(outcome)``.
"""

from gradjob.api import assert_backprop, assert_passed, check, check_lists, check_loss
from gradjob.version import __version__

__all__ = ["__version__", "check", "check_loss", "check_lists", "assert_backprop", "assert_passed"]
