"""The comparison of analytic and numerical gradients, streamed block by block.

difference = ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂), overall and per tensor, over the
elements not at a kink. Sums are accumulated per tensor over fixed blocks from the tensor's
start, so the numbers do not depend on how the job was chunked; only running sums, the
verified suspects and a few elements are held. The rule that turns them into a verdict is
``verdict``'s.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from gradjob.model.layout import Layout, Tensor
from gradjob.numerics import verdict, verify
from gradjob.numerics.diagnose import diagnose
from gradjob.numerics.sums import Sums
from gradjob.types import Calibration, Reduction, Suspects, TensorResult

WORST_KEPT = 5
KINKS_KEPT = 5
PRIMARY_KINK = 0.1   # unverified suspects: analytic within 10% of the slope jump of one side

Blocks = Callable[[int, int], Iterable[dict]]
"""``blocks(start, stop)``: dicts of theta, grad, gradapprox, cost_plus, cost_minus, step and
noise arrays covering [start, stop) in order."""


class IncompleteStore(Exception):
    """A parameter has no numerical gradient in the store (not computed, or its chunk was lost)."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _checked_blocks(blocks: Blocks, tensor: Tensor):
    offset = tensor.offset
    for block in blocks(tensor.offset, tensor.stop):
        missing = np.logical_or.reduce([np.isnan(v) for v in block.values()])
        if missing.any():
            raise IncompleteStore(offset + int(np.flatnonzero(missing)[0]))
        yield offset, block
        offset += block["grad"].size


def find_suspects(layout: Layout, blocks: Blocks, grad_eps: float) -> dict[str, verify.SuspectHeap]:
    """Per tensor, the worst elements whose numerical gradient disagrees beyond their noise."""
    found = {}
    for tensor in layout.tensors:
        heap = verify.SuspectHeap()
        for offset, block in _checked_blocks(blocks, tensor):
            score = np.abs(block["grad"] - block["gradapprox"]) / np.maximum(
                verify.tolerance(block["grad"], block["noise"], grad_eps), np.finfo(np.float64).tiny)
            heap.add(offset + np.arange(score.size), score, block["step"], block["grad"])
        found[tensor.name] = heap
    return found


@dataclass
class _Accumulator:
    sums: Sums = field(default_factory=Sums)
    raw: Sums = field(default_factory=Sums)
    suspects: dict = field(default_factory=lambda: dict.fromkeys(verify.CLASSES + ("beyond_cap",), 0))
    kink_elements: list = field(default_factory=list)
    wrong_elements: list = field(default_factory=list)
    worst: list = field(default_factory=list)  # heap of (|d|, -index, g, a)
    floor2: float = 0.0  # the squared noise the tensor's noise floor is made of (see ``verdict.counted``)


def reduce_gradients(layout: Layout, blocks: Blocks, threshold: float, cost: float, calibration: Calibration | None,
                     verdicts: dict[int, verify.Verdict], grad_eps: float, replace: bool = True,
                     screened: Layout | None = None) -> Reduction:
    """The verdict of a whole check; ``verdicts`` are the verified suspects by θ index. With
    ``replace``, a verified element's settled estimate stands in for its first one; a fixed
    ``--epsilon`` asks for that step's numbers, so there the classes count but numbers stay.
    ``screened``: the parameters' layout where the numbers are a directional screen's (one per
    direction, ``layout``'s tensors): their gradients' shapes are judged, their diagnoses said along
    directions."""
    verified = np.array(sorted(verdicts), dtype=np.int64)
    results, total, raw_total = [], Sums(), Sums()
    for tensor in layout.tensors:
        acc = _Accumulator()
        for offset, block in _checked_blocks(blocks, tensor):
            _add_block(acc, offset, block, cost, verified, verdicts, grad_eps, replace)
        total.merge(acc.sums)
        raw_total.merge(acc.raw)
        noise = calibration.of(tensor.name).noise if calibration else math.nan
        judged = screened.tensors[len(results)] if screened is not None else tensor
        results.append(_tensor_result(layout, tensor, acc, threshold, noise, blocks, judged, screened is not None))
    passed = verdict.check_passed(t.passed for t in results)
    return Reduction(verdict.relative_difference(total.dd, total.gg, total.aa),
                     verdict.relative_difference(raw_total.dd, raw_total.gg, raw_total.aa),
                     passed, threshold, layout.n_parameters, results)


def _add_block(acc: _Accumulator, offset: int, block: dict, cost: float, verified: np.ndarray,
               verdicts: dict, grad_eps: float, replace: bool) -> None:
    g, a, noise = block["grad"], block["gradapprox"].copy(), block["noise"].copy()
    index = offset + np.arange(g.size)
    acc.raw.add(g, a, block["theta"], noise)
    keep = np.ones(g.size, dtype=bool)
    floor = noise.copy()
    for k in np.flatnonzero(np.isin(index, verified, assume_unique=True)):
        settled = verdicts[int(index[k])]
        acc.suspects[verify.CLASSES[settled.klass]] += 1
        a[k], noise[k], floor[k], keep[k], wrong = verdict.counted(float(g[k]), float(a[k]), float(noise[k]), settled,
                                                                   replace)
        if wrong:
            acc.wrong_elements.append(int(index[k]))
    tol = verify.tolerance(g, noise, grad_eps)
    beyond = (np.abs(g - a) > tol) & ~np.isin(index, verified, assume_unique=True)
    acc.suspects["beyond_cap"] += int(beyond.sum())
    primary_kink = beyond & _one_sided_kinks(block, cost, tol)
    keep &= ~primary_kink
    kinks = np.flatnonzero(~keep)
    room = KINKS_KEPT - len(acc.kink_elements)
    acc.kink_elements += [offset + int(k) for k in kinks[:max(0, room)]]
    acc.sums.kinks += int(kinks.size)
    g, a, theta, noise, index = g[keep], a[keep], block["theta"][keep], noise[keep], index[keep]
    acc.sums.add(g, a, theta, noise)
    acc.floor2 += float(floor[keep] @ floor[keep])
    d = np.abs(g - a)
    for k in np.argsort(-d, kind="stable")[:WORST_KEPT]:
        item = (float(d[k]), -int(index[k]), float(g[k]), float(a[k]))
        if len(acc.worst) < WORST_KEPT:
            heapq.heappush(acc.worst, item)
        else:
            heapq.heappushpop(acc.worst, item)


def _one_sided_kinks(block: dict, cost: float, tol: np.ndarray) -> np.ndarray:
    """Suspects past the verification cap whose one-sided slopes (J⁺ − J)/h and (J − J⁻)/h disagree
    by far more than their noise while the analytic gradient matches one side."""
    h = block["step"]
    s_plus = (block["cost_plus"] - cost) / h
    s_minus = (cost - block["cost_minus"]) / h
    jump = np.abs(s_plus - s_minus)
    nearest = np.minimum(np.abs(block["grad"] - s_plus), np.abs(block["grad"] - s_minus))
    return (jump > 4 * tol) & (nearest < PRIMARY_KINK * jump)


def _tensor_result(layout: Layout, tensor: Tensor, acc: _Accumulator, threshold: float, noise: float,
                   blocks: Blocks, judged: Tensor, directional: bool) -> TensorResult:
    sums = acc.sums
    difference = verdict.relative_difference(sums.dd, sums.gg, sums.aa)
    own = verdict.tensor_threshold(threshold, sums, acc.floor2)
    wrong = [list(layout.locate(i)[1]) for i in sorted(acc.wrong_elements)]
    worst = [{"index": list(layout.locate(-neg)[1]), "analytic": g, "numerical": a, "abs_error": d}
             for d, neg, g, a in sorted(acc.worst, reverse=True)]
    passed, diagnosis = verdict.tensor_verdict(
        judged, difference, own, bool(wrong),
        lambda: diagnose(tensor, sums, worst, wrong, lambda: _whole(tensor, blocks)), directional)
    suspects = Suspects(verified=sum(acc.suspects[k] for k in verify.CLASSES), **acc.suspects)
    return TensorResult(tensor.name, tensor.shape, difference, own, verdict.resolution(own), noise,
                        math.sqrt(sums.dd), math.sqrt(sums.nn), passed, diagnosis, worst, sums.kinks,
                        [list(layout.locate(i)[1]) for i in acc.kink_elements], suspects,
                        wrong[:WORST_KEPT],
                        tensor.size - sums.kinks)


def _whole(tensor: Tensor, blocks: Blocks) -> dict[str, np.ndarray]:
    """grad, gradapprox and θ of a tensor in its shape (for the transpose test of square matrices)."""
    parts = list(blocks(tensor.offset, tensor.stop))
    return {name: np.concatenate([p[name] for p in parts]).reshape(tensor.shape) for name in ("grad", "gradapprox", "theta")}
