"""The traced fast path: a user's NumPy forward recorded once (``record``) and replayed
incrementally under single-element perturbations (``replay``)."""

from gradjob.trace.array import Traced
from gradjob.trace.graph import Untraceable
from gradjob.trace.record import record
from gradjob.trace.replay import Replay

__all__ = ["Replay", "Traced", "Untraceable", "record"]
