"""The vocabulary every stage shares: what a check asks for, what its store holds, its verdict.

Frozen dataclasses, each with one JSON form where it is stored or reported (a check's report:
``report.model``), so that no stage reads an untyped dict another stage wrote. Names of options
(methods, modes, precisions) live here once; the CLI, job files and checks all read them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, get_args

from gradjob.model.layout import Layout

Method = Literal["central", "five-point", "complex-step"]
Mode = Literal["full", "directional"]
PrecisionChoice = Literal["float64", "model"]
METHODS: tuple[str, ...] = get_args(Method)
MODES: tuple[str, ...] = get_args(Mode)
PRECISIONS: tuple[str, ...] = get_args(PrecisionChoice)

DEFAULT_DIRECTIONS = 3


@dataclass(frozen=True)
class Request:
    """Everything one check was asked for (``gradjob submit`` options, a job file's [[check]])."""

    model: str = "seed-buggy"
    forward: str | None = None
    backward: str | None = None
    case: str | None = None
    layers: tuple[int, ...] = (4, 5, 3, 1)
    examples: int = 16
    seed: int = 0
    epsilon: float | None = None
    method: Method = "central"
    fast: bool = True  # incremental evaluation where the model allows it
    precision: PrecisionChoice = "float64"
    threshold: float | None = None  # None: by the checked dtype, see verdict.DEFAULT_THRESHOLDS
    mode: Mode = "full"
    directions: int = DEFAULT_DIRECTIONS
    chunk_size: int | None = None
    workers: int = 2
    cluster: bool = False  # --workers or --scheduler given: on the cluster even when the work is small
    scheduler: str | None = None
    task_timeout: float | None = None  # seconds a chunk may run; None: from the measured evaluation time
    store: str | None = None
    store_dir: str = "gradjob-stores"  # where the default, identity-named store goes
    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False

    def replace(self, **changes) -> "Request":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Precision:
    """The dtype the check computes in, the model's own, and why they differ or not."""

    checked: str
    model: str
    note: str | None = None  # why the check did not compute in float64 (or promoted with a caveat)

    def describe(self) -> str:
        if self.checked == self.model:
            return f"checked in {self.checked}" + (f" ({self.note})" if self.note else "")
        return f"checked in {self.checked}; parameters are {self.model}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict:
        return {"checked": self.checked, "model": self.model, "note": self.note}

    @classmethod
    def from_json(cls, data: dict) -> "Precision":
        return cls(data["checked"], data["model"], data.get("note"))


@dataclass(frozen=True)
class TensorNoise:
    """What calibration measured for one tensor (see ``noise``)."""

    name: str
    noise: float        # ε_f: absolute round-off noise of J when this tensor's elements move
    step_scale: float   # automatic steps: hᵢ = step_scale · max(1, |θᵢ|)
    measured: int       # sampled elements whose noise ECnoise measured (0: one ulp of J assumed)
    curvature: float = 0.0  # |J‴| (median of the samples): central differences' truncation is μ₃h²/6


@dataclass(frozen=True)
class Calibration:
    tensors: tuple[TensorNoise, ...]
    evaluations: int  # forward evaluations spent measuring

    def of(self, name: str) -> TensorNoise:
        return next(t for t in self.tensors if t.name == name)

    def to_json(self) -> dict:
        return {"evaluations": self.evaluations, "tensors": [dataclasses.astuple(t) for t in self.tensors]}

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        return cls(tuple(TensorNoise(*t) for t in data["tensors"]), data["evaluations"])


@dataclass(frozen=True)
class StoreMeta:
    """What a check's store records about the job that made it; sealed with a checksum."""

    identity: dict
    layout: Layout
    chunk_size: int
    n_chunks: int
    epsilon: float | None
    method: str
    threshold: float
    cost: float
    evaluator: str          # "incremental", "traced" or "forward" (one forward call per evaluation)
    precision: Precision
    calibration: Calibration
    model: str
    case: str
    created: str
    versions: dict

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(layout=self.layout.to_json(), precision=self.precision.to_json(),
                    calibration=self.calibration.to_json())
        return data

    @classmethod
    def from_json(cls, data: dict) -> "StoreMeta":
        values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        values.update(layout=Layout.from_json(data["layout"]), precision=Precision.from_json(data["precision"]),
                      calibration=Calibration.from_json(data["calibration"]))
        return cls(**values)


@dataclass(frozen=True)
class Suspects:
    """Counts of the elements re-verified on a ladder of smaller steps, by class."""

    verified: int = 0
    agrees: int = 0
    kink: int = 0
    wrong: int = 0
    near_kink: int = 0   # kinks closer to θ than float arithmetic resolves: left out, like kinks
    unresolved: int = 0
    beyond_cap: int = 0  # disagreeing elements past the per-tensor cap, judged on their numbers


@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    difference: float       # over the elements not at a kink
    threshold: float        # the asked threshold, or the noise floor where that is higher
    resolution: float       # the smallest relative error of this gradient the check would flag
    noise: float            # ε_f measured for this tensor
    error_norm: float
    noise_norm: float
    passed: bool
    diagnosis: str | None
    worst: list[dict]
    kinks: int = 0
    kink_elements: list = field(default_factory=list)
    suspects: Suspects = field(default_factory=Suspects)
    wrong_elements: list = field(default_factory=list)
    checked: int = 0        # elements in the difference: not at a kink (0: nothing here could be checked)
    # a directional screen's numbers are of random directions, not elements: {"count", "kinks", "wrong"}
    directions: dict | None = None


@dataclass
class Reduction:
    difference: float       # over all elements not at a kink
    raw_difference: float   # over every element, kinks included
    passed: bool
    threshold: float
    n_parameters: int
    tensors: list[TensorResult]

    @property
    def failing(self) -> list[str]:
        return [t.name for t in self.tensors if not t.passed]


@dataclass
class Outcome:
    """One check's verdict and how it was reached."""

    reduction: Reduction
    meta: StoreMeta | None      # None for a directional screen (no store)
    store: str | None
    method_text: str            # e.g. "central" or "directional, 3 random directions per tensor"
    step_text: str
    model: str
    case: str
    precision: Precision
    evaluator: str = "forward"
    evaluated_chunks: int = 0
    notes: list[str] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)
    peak_worker_rss_bytes: int | None = None
    seconds: dict = field(default_factory=dict)  # wall time per stage: calibrate, evaluate, verify, reduce
    forward_passes_per_tensor: int | None = None  # directional screens only

    @property
    def passed(self) -> bool:
        """The verdict: every tensor within its threshold and shaped as its parameter."""
        return self.reduction.passed

    def __bool__(self) -> bool:  # ``assert gradjob.check(...)`` asserts the verdict
        return self.passed

    def __repr__(self) -> str:
        """A few lines, for a prompt or a test failure: the verdict, its difference, what fails and why."""
        r = self.reduction
        head = (f"<Outcome {'PASS' if r.passed else 'FAIL'}: difference {r.difference:.6e} over {r.n_parameters} "
                f"parameters in {len(r.tensors)} tensors; {self.model}>")
        return "\n".join([head, *(f"  wrong: {t.name}: {t.diagnosis}" for t in r.tensors if not t.passed)])

    # The report stage imports this module, so it sets this (``gradjob.report``), not the reverse.
    html_view: ClassVar[Callable[[Outcome], str] | None] = None

    def _repr_html_(self) -> str | None:
        """What a notebook shows: the report's summary, the verdict, the tensor table and the worst
        elements (None, the prompt's lines, if the report stage is not loaded)."""
        return None if Outcome.html_view is None else Outcome.html_view(self)
