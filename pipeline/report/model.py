"""The report as typed values: what text, JSON, JUnit, HTML and the plots all read.

``of(outcome)`` builds it once from a check's ``Outcome``; ``Report.to_json`` is its one JSON
form, derived from the dataclasses' fields (a new field is a new key, with no key list to keep),
and ``Report.from_json`` parses that form back at the edge where a report is read from a file.
A field marked ``OPTIONAL`` is left out of the JSON while it is None (a full check has no
``directions`` and no ``forward_passes_per_tensor``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from gradjob.types import Outcome, Precision, Suspects, TensorResult

OPTIONAL = {"optional": True}  # field metadata: no key in the JSON while the value is None


class Typed:
    """One JSON form for every report dataclass: its fields, by name, in declaration order."""

    def to_json(self) -> dict:
        return _dump(self)

    @classmethod
    def from_json(cls, data: dict):
        return _load(cls, data, cls.__name__)


@dataclass(frozen=True)
class WorstElement(Typed):
    """One of a failing tensor's worst elements (at most ``reduce.WORST_KEPT``; never padded)."""

    index: tuple[int, ...]
    analytic: float
    numerical: float
    abs_error: float


@dataclass(frozen=True)
class Kinks(Typed):
    count: int                        # elements left out of the difference at kinks and near-kinks
    elements: tuple[tuple[int, ...], ...]  # the first ``reduce.KINKS_KEPT`` of them, by index


@dataclass(frozen=True)
class TensorSuspects(Typed, Suspects):
    """The re-verified suspects' counts, and the elements settled as wrong (the first few, by index)."""

    wrong_elements: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Directions(Typed):
    """A directional screen's numbers are of random directions (numbered), never of elements."""

    count: int
    kinks: tuple[int, ...]
    wrong: tuple[int, ...]


@dataclass(frozen=True)
class TensorRow(Typed):
    """One tensor's numbers and verdict (its name is its key in ``Report.tensors``)."""

    difference: float
    passed: bool
    shape: tuple[int, ...]
    checked: int
    threshold: float
    noise: float
    resolution: float | None          # None: its noise is as large as its gradient, no error is seen
    error_norm: float
    noise_norm: float
    diagnosis: str | None
    worst: tuple[WorstElement, ...]
    kinks: Kinks
    suspects: TensorSuspects
    directions: Directions | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class PrecisionText(Typed, Precision):
    text: str = ""  # ``Precision.describe()``


@dataclass(frozen=True)
class Report(Typed):
    """One check's verdict, its tensors and the run that reached it."""

    difference: float
    raw_difference: float
    passed: bool
    epsilon: float | None
    step: str                         # "fixed" or "auto"
    step_text: str
    method: str
    threshold: float
    precision: PrecisionText
    evaluator: str
    n_parameters: int
    failing: tuple[str, ...]
    tensors: dict[str, TensorRow]
    model: str
    case: str
    mode: str                         # "full" or "directional"
    store: str | None
    chunk_size: int | None
    n_chunks: int | None
    evaluated_chunks: int
    created: str | None
    versions: dict[str, str] | None
    notes: tuple[str, ...]
    seconds: dict[str, float]         # wall time per stage of a run; empty for a report from a store alone
    forward_passes_per_tensor: int | None = field(default=None, metadata=OPTIONAL)  # directional only


@dataclass(frozen=True)
class CheckReport:
    """One check of a run as the JUnit and HTML writers read it: its report, or the error that stopped it."""

    check: str
    report: Report | None = None
    error: str | None = None


def tensor_row(t: TensorResult) -> TensorRow:
    d = t.directions
    return TensorRow(
        t.difference, t.passed, tuple(t.shape), t.checked, t.threshold, t.noise,
        t.resolution if math.isfinite(t.resolution) else None, t.error_norm, t.noise_norm, t.diagnosis,
        tuple(WorstElement(tuple(w["index"]), w["analytic"], w["numerical"], w["abs_error"]) for w in t.worst),
        Kinks(t.kinks, tuple(tuple(i) for i in t.kink_elements)),
        TensorSuspects(**dataclasses.asdict(t.suspects), wrong_elements=tuple(tuple(i) for i in t.wrong_elements)),
        Directions(d["count"], tuple(d["kinks"]), tuple(d["wrong"])) if d is not None else None)


def of(outcome: Outcome) -> Report:
    """The typed report of a check's outcome."""
    r, meta = outcome.reduction, outcome.meta
    p = outcome.precision
    return Report(
        r.difference, r.raw_difference, r.passed, meta.epsilon if meta else None,
        "fixed" if meta and meta.epsilon is not None else "auto", outcome.step_text, outcome.method_text,
        r.threshold, PrecisionText(p.checked, p.model, p.note, p.describe()), outcome.evaluator, r.n_parameters,
        tuple(r.failing), {t.name: tensor_row(t) for t in r.tensors}, outcome.model, outcome.case,
        "directional" if meta is None else "full", outcome.store, meta.chunk_size if meta else None,
        meta.n_chunks if meta else None, outcome.evaluated_chunks, meta.created if meta else None,
        meta.versions if meta else None, tuple(outcome.notes), dict(outcome.seconds),
        outcome.forward_passes_per_tensor if meta is None else None)


def _dump(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("optional") and getattr(value, f.name) is None)}
    if isinstance(value, (tuple, list)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_PLAIN = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}


def _load(kind, data, where: str):
    """``data`` (parsed JSON) as ``kind``, checked against its type hints; a ValueError names the key."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _load(kind, data, where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {data!r:.60}")
        hints = typing.get_type_hints(kind)
        fields = dataclasses.fields(kind)
        extra = set(data) - {f.name for f in fields}
        missing = [f.name for f in fields if f.name not in data and not f.metadata.get("optional")]
        if extra or missing:
            raise ValueError(f"{where}: " + "; ".join(([f"unknown keys {sorted(extra)}"] if extra else [])
                                                       + ([f"missing keys {missing}"] if missing else [])))
        return kind(**{f.name: _load(hints[f.name], data[f.name], f"{where}.{f.name}") for f in fields
                       if f.name in data})
    if origin is tuple:
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {data!r:.60}")
        return tuple(_load(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {data!r:.60}")
        return {k: _load(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if kind in _PLAIN and (not isinstance(data, _PLAIN[kind]) or (kind is not bool and isinstance(data, bool))):
        raise ValueError(f"{where}: expected {kind.__name__}, got {data!r:.60}")
    return data
