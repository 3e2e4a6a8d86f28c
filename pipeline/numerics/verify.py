"""Suspects re-verified: elements whose numerical gradient disagrees with the analytic one beyond
their noise are evaluated again on a ladder of smaller steps, one-sided and central, and classed.

- *agrees*: at some step the central estimate has settled (it matches the next smaller step's)
  and equals the analytic value: the first step was too coarse (a kink inside it, or strong
  curvature). The settled estimate replaces the first one in the tensor's difference.
- *kink*: the one-sided slopes settle at different limits (a ReLU switching exactly here) and
  the analytic value equals one of them, or their midpoint (the sign(0) = 0 convention of abs and
  tie-splitting in max). Left out of the difference.
- *wrong*: the finest steps that are quiet enough have settled, and the analytic value is none
  of these. The tensor fails.
- *near-kink*: kinks lie closer to θ than float arithmetic resolves (the one-sided slopes still
  move at the finest quiet steps): neither confirmed nor refuted, left out of the difference
  like a kink and reported as such.
- *unresolved*: no step is quiet enough to decide; judged on its numbers.

"Equal" means within three times the estimate's error bound at that step, and a step decides
only where that bound is below a third of ``resolution(dtype)`` of the values, so a kink never
hides an error above 0.1 % in float64 (a few percent in float32, whose round-off allows no
better). At most ``CAP`` suspects per tensor are verified (the worst by
how far beyond their noise they are); beyond that a tensor is judged on its numbers.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from gradjob.numerics.evaluate import central_noise

SUSPECT_FACTOR = 8.0    # |grad − gradapprox| beyond this many noise bounds makes an element a suspect
CAP = 256
RUNGS = 10              # steps h, h/10, …, h/10⁹: down to where the noise decides nothing
RESOLUTION = 1e-3       # relative agreement a ladder step must reach to decide anything (float64)


def resolution(dtype) -> float:
    """The relative precision a ladder step must reach to decide, in the dtype the check computes
    in: 1e-3 in float64; float32 round-off allows no better than a few percent."""
    return max(RESOLUTION, 5 * float(np.finfo(dtype).eps) ** (1 / 3))
CLASSES = ("unresolved", "agrees", "kink", "wrong", "near_kink")
UNRESOLVED, AGREES, KINK, WRONG, NEAR_KINK = range(5)
EXCLUDED = (KINK, NEAR_KINK)  # left out of the difference


def tolerance(grad: np.ndarray, noise: np.ndarray, grad_eps: float) -> np.ndarray:
    """How far gradapprox may sit from grad before an element is a suspect: its noise bound, and
    the analytic gradient's own round-off."""
    return SUSPECT_FACTOR * noise + 8 * grad_eps * np.abs(grad)


class SuspectHeap:
    """The ``CAP`` worst suspects of one tensor, by how many tolerances they are off."""

    def __init__(self):
        self.heap: list[tuple[float, int, float, float]] = []
        self.count = 0

    def add(self, index: np.ndarray, score: np.ndarray, step: np.ndarray, grad: np.ndarray) -> None:
        over = np.flatnonzero(score > 1)
        self.count += over.size
        for k in over[np.argsort(-score[over], kind="stable")[:CAP]]:
            item = (float(score[k]), -int(index[k]), float(step[k]), float(grad[k]))
            if len(self.heap) < CAP:
                heapq.heappush(self.heap, item)
            elif item > self.heap[0]:
                heapq.heapreplace(self.heap, item)

    def picked(self) -> list[tuple[int, float, float]]:
        """(θ index, first step, analytic gradient) of the kept suspects, in index order."""
        return sorted((-neg, step, grad) for _, neg, step, grad in self.heap)


def ladder(original: np.ndarray, first_step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """θᵢ ± hᵢ·10⁻ᵏ for k < RUNGS in θ's dtype, and the one-sided steps actually taken (float64)."""
    kind = original.dtype.type
    h = first_step[:, None] * 10.0 ** -np.arange(RUNGS)[None, :]
    base = original[:, None]
    plus, minus = (base + h).astype(kind), (base - h).astype(kind)
    wide = base.astype(np.float64)
    return plus, minus, plus.astype(np.float64) - wide, wide - minus.astype(np.float64)


def off_kinks(costs, flips, original: np.ndarray, start: int, result, cost_noise: np.ndarray,
              curvature: np.ndarray, grad: np.ndarray, grad_eps: float) -> int:
    """Where the forward is traced (``flips``: ``Replay.flips``), first differences that disagree
    with the analytic gradient beyond their bound and whose evaluations flip a switch (a kink
    inside the step) are taken again at steps 10×, 100×, 1000× smaller; the first that flips
    nothing replaces them where its bound is smaller; otherwise they keep their numbers with the
    kink in their bound (a central difference across one kink is off by half the gap of its
    one-sided slopes). An element that no smaller step takes off its kink is made a suspect (its
    bound half what makes one), so that its ladder reports the kink and its distance and leaves it
    out. So a kink crossed by a first step is neither an error nor an unbounded share of the
    tensor's difference. ``result`` (a ``ChunkResult``, central, automatic steps) is
    updated in place; returns how many elements crossed a kink."""
    candidates = np.flatnonzero(np.abs(grad - result.gradapprox) > result.noise)
    if not candidates.size:
        return 0
    kind = original.dtype.type
    base = original[candidates]
    index = start + candidates
    plus, minus = (base + result.step[candidates]).astype(kind), (base - result.step[candidates]).astype(kind)
    crossed = (flips(index, plus) > 0) | (flips(index, minus) > 0)
    k = candidates[crossed]
    if not k.size:
        return 0
    cost = float(costs(np.array([start]), original[:1], "")[0])
    h = result.step[k]
    bound = result.noise[k] + np.abs(result.cost_plus[k] - 2 * cost + result.cost_minus[k]) / (2 * h)
    pending, kept = np.ones(k.size, dtype=bool), np.ones(k.size, dtype=bool)
    for t in range(1, 4):
        todo = np.flatnonzero(pending)
        if not todo.size:
            break
        at, value = start + k[todo], original[k[todo]]
        plus = (value + h[todo] / 10 ** t).astype(kind)
        minus = (value - h[todo] / 10 ** t).astype(kind)
        clean = (flips(at, plus) == 0) & (flips(at, minus) == 0)
        if not clean.any():
            continue
        done = todo[clean]
        j_plus, j_minus = costs(at[clean], plus[clean], "+"), costs(at[clean], minus[clean], "-")
        step = (plus[clean].astype(np.float64) - minus[clean].astype(np.float64)) / 2
        noise = central_noise(cost_noise[k[done]], step, curvature[k[done]])
        better = noise < bound[done]
        for name, values in (("gradapprox", (j_plus - j_minus) / (2 * step)), ("noise", noise), ("step", step),
                             ("cost_plus", j_plus), ("cost_minus", j_minus)):
            getattr(result, name)[k[done[better]]] = values[better]
        pending[done] = False
        kept[done[better]] = False
    error = np.abs(grad[k] - result.gradapprox[k])
    kept &= error <= tolerance(grad[k], result.noise[k], grad_eps)  # a suspect anyway: its ladder finds the kink
    bounded = kept & ~pending
    result.noise[k[bounded]] = bound[bounded]
    at_kink = kept & pending  # no step avoids it: a suspect, so that its ladder reports the kink and its distance
    result.noise[k[at_kink]] = error[at_kink] / (2 * SUSPECT_FACTOR)
    return int(k.size)


@dataclass(frozen=True)
class Verdict:
    klass: int
    estimate: float    # the settled derivative (agrees: the central one; kink: the side that matched)
    tolerance: float   # how exactly the ladder determined it
    distance: float = math.nan  # a kink found by its switches: within this step of θ


def classify(grad: float, cost: float, cost_plus: np.ndarray, cost_minus: np.ndarray, step_plus: np.ndarray,
             step_minus: np.ndarray, noise: float, grad_eps: float, decide: float = RESOLUTION,
             flip_plus: np.ndarray | None = None, flip_minus: np.ndarray | None = None) -> Verdict:
    """Class of one suspect from its ladder (rungs from coarse to fine); see the module docstring.

    With ``flip_plus``/``flip_minus`` (per rung, whether that evaluation takes another branch of
    some switch than θ does: ``Replay.flips``), kinks are known rather than guessed: see
    ``_classify_switched``. Without them, from the slopes alone:

    A rung counts where three times its one-sided noise (from ε_f) is below ``decide`` (see
    ``resolution``) of the values. At such a rung the function is smooth if the one-sided slopes
    agree within their noise, or their gap shrinks with the step on both sides of the rung (the
    curvature of a smooth function; a kink's gap stays). Where some rung is smooth, the most
    precise smooth rung decides: the analytic value agrees with its central estimate, or it is
    wrong. Otherwise the most precise rung with a kink decides whether the analytic value is one
    of its sides; *wrong* then needs the finest counting rungs to have settled, since a change
    there means more kinks closer to θ than float arithmetic can resolve (*near-kink*).
    """
    if flip_plus is not None and flip_minus is not None:
        return _classify_switched(grad, cost, cost_plus, cost_minus, step_plus, step_minus, noise, grad_eps, decide,
                                  np.asarray(flip_plus), np.asarray(flip_minus))
    right, left, central, n, slack, valid, scale = _slopes(grad, cost, cost_plus, cost_minus, step_plus, step_minus,
                                                           noise, grad_eps)
    usable = [k for k in range(RUNGS) if valid[k] and 3 * n[k] <= decide * scale[k]]
    jump = np.abs(right - left)

    def quiet(k):
        return 0 <= k < RUNGS and valid[k] and jump[k] <= 6 * n[k]

    def shrinks(k):  # the gap falls with the step into and out of rung k
        before = k - 1 >= 0 and valid[k - 1] and jump[k - 1] >= 3 * jump[k]
        after = k + 1 >= RUNGS or not valid[k + 1] or quiet(k + 1) or jump[k + 1] <= jump[k] / 3
        return before and after

    smooth = [k for k in range(RUNGS) if valid[k] and (quiet(k) or shrinks(k))]
    # a kink shows wherever the one-sided slopes part by far more than their noise, even at a step too
    # coarse or too noisy to decide anything
    kink_seen = any(valid[k] and jump[k] > 12 * n[k] and k not in smooth for k in range(RUNGS))
    estimates = [(1.5 * n[k] + _moved(central, k, valid), k) for k in usable if k in smooth]
    estimates = [(e, k) for e, k in estimates if e <= decide * scale[k]]
    if estimates:
        e, k = min(estimates)
        agrees = abs(grad - central[k]) <= 3 * e + slack
        if not agrees and _within_gap(grad, right[k], left[k], n[k], slack, decide * scale[k]):
            return Verdict(UNRESOLVED, math.nan, math.nan)
        return Verdict(AGREES if agrees else WRONG, float(central[k]), float(e))
    kinked = []
    for k in usable:
        if k in smooth:
            continue
        sides = ((right[k], 3 * n[k] + _moved(right, k, valid)), (left[k], 3 * n[k] + _moved(left, k, valid)))
        sides += (((right[k] + left[k]) / 2, (sides[0][1] + sides[1][1]) / 2),)
        e = max(s[1] for s in sides[:2])
        if e <= decide * scale[k] / 3:  # a kink is left out only when its sides are known this well
            kinked.append((e, k, sides))
    if kinked:
        _, k, sides = min(kinked, key=lambda item: item[0])
        matched = [Verdict(KINK, float(s), float(e)) for s, e in sides if abs(grad - s) <= e + slack]
        if matched:
            return matched[0]
    if len(usable) >= 2 and usable[-2] == usable[-1] - 1:
        k = usable[-1]
        settled = all(abs(side[k] - side[k - 1]) <= 3 * (n[k] + n[k - 1]) + decide * scale[k] / 3
                      for side in (right, left))
        nearest = min((right[k], left[k]), key=lambda s: abs(grad - s))
        e = 3 * n[k] + decide * scale[k] / 3
        if settled and abs(grad - nearest) > 3 * e + slack and \
                not _within_gap(grad, right[k], left[k], n[k], slack, decide * scale[k]):
            return Verdict(WRONG, float(nearest), float(e))
    return Verdict(NEAR_KINK if kink_seen else UNRESOLVED, math.nan, math.nan)


def _within_gap(grad: float, right: float, left: float, n: float, slack: float, resolved: float) -> bool:
    """Whether the analytic value lies between a rung's one-sided slopes (within their noise), where
    they part by at most twice ``resolved`` (``decide`` of the values): at a kink inside the rung's
    span (a ReLU pre-activation exactly 0) the central estimate is their mean, not the derivative
    of either piece, and from slopes alone an analytic value anywhere in that gap is neither shown
    right nor wrong. It stays undecided (*unresolved*); an error above ``resolved`` still shows."""
    low, high = min(right, left), max(right, left)
    return high - low <= 2 * resolved and low - 3 * n - slack <= grad <= high + 3 * n + slack


def _moved(slope: np.ndarray, k: int, valid: np.ndarray) -> float:
    """How far an estimate moves to a neighbouring rung: a bound on its truncation at rung k."""
    neighbours = [abs(slope[k] - slope[j]) for j in (k + 1, k - 1) if 0 <= j < RUNGS and valid[j]]
    return min(neighbours) if neighbours else 0.0



def _slopes(grad, cost, cost_plus, cost_minus, step_plus, step_minus, noise, grad_eps):
    """A ladder's one-sided and central slopes per rung, their noise, the analytic value's round-off
    slack, which rungs are usable numbers, and the scale each rung's values are judged against."""
    with np.errstate(divide="ignore", invalid="ignore"):
        right = (cost_plus - cost) / step_plus
        left = (cost - cost_minus) / step_minus
        central = (cost_plus - cost_minus) / (step_plus + step_minus)
        n = 2 * math.sqrt(2) * noise / np.minimum(step_plus, step_minus)
    slack = 8 * grad_eps * abs(grad)
    valid = (step_plus > 0) & (step_minus > 0) & np.isfinite(right) & np.isfinite(left)
    scale = np.maximum.reduce([np.full(RUNGS, abs(grad)), np.abs(right), np.abs(left)])
    return right, left, central, n, slack, valid, scale

def _classify_switched(grad, cost, cost_plus, cost_minus, step_plus, step_minus, noise, grad_eps, decide,
                       flips_plus: np.ndarray, flips_minus: np.ndarray) -> Verdict:
    """Class of one suspect whose switches are known per rung (how many switch elements each
    evaluation flips, ``Replay.flips``).

    A rung that flips nothing spans θ's smooth piece: its central estimate is off by its noise and
    its truncation only, the truncation bounded by how far the estimate moves to the next finer
    rung that flips nothing either (whose truncation is 100× smaller and whose noise 10× larger:
    the move also measures the noise, where ECnoise's seven points missed rare jumps of a
    saturated cost). The rung with the smallest bound decides, where
    that bound is within ``decide`` of the values: the analytic value agrees with its estimate
    (within three bounds), or it is wrong.

    Otherwise each side is read on its own, at the rungs that flip as many switches as its finest
    rung (the same kinks crossed: none, or those closer to θ than any step, i.e. at θ): its
    one-sided slope is then the derivative of the piece beside θ, to first order. With no kink at
    θ, either side decides agrees or wrong; with one at θ (its distance: within the finest step),
    the analytic value must be one side or their midpoint (kink), both sides known and none of
    these is wrong, but only where a single switch is tied at θ: where several meet, the backward's
    conventions may pick a piece that no side of this coordinate reaches. Undecided, an element
    some of whose rungs flip is at a kink, its distance the finest flipping step. A kink is never
    guessed from slopes.
    """
    flipped = (flips_plus > 0) | (flips_minus > 0)
    right, left, central, n, slack, valid, scale = _slopes(grad, cost, cost_plus, cost_minus, step_plus, step_minus,
                                                           noise, grad_eps)
    if not valid.any():
        return Verdict(UNRESOLVED, math.nan, math.nan)
    smooth = valid & ~flipped
    bounds = []
    for k in np.flatnonzero(smooth):
        truncation = []
        if k + 1 < RUNGS and smooth[k + 1]:
            truncation.append(1.02 * abs(central[k] - central[k + 1]) + (n[k] + n[k + 1]) / 2)
        if truncation:
            bounds.append((n[k] / 2 + min(truncation), int(k)))
    decided = [(e, k) for e, k in bounds if e <= decide * scale[k]]
    if decided:
        e, k = min(decided)
        agrees = abs(grad - central[k]) <= 3 * e + slack
        return Verdict(AGREES if agrees else WRONG, float(central[k]), float(e))
    finest = int(np.flatnonzero(valid)[-1])
    at_theta = bool(flips_plus[finest] > 0 or flips_minus[finest] > 0)
    distance = float(min(step_plus[finest], step_minus[finest])) if at_theta else math.nan
    sides = [_one_side(slope, valid & (flips == flips[finest]), n, decide * scale / 3)
             for slope, flips in ((right, flips_plus), (left, flips_minus))]
    known = [side for side in sides if side is not None]
    if at_theta:
        if len(known) == 2:
            known.append(((known[0][0] + known[1][0]) / 2, (known[0][1] + known[1][1]) / 2))
        matched = [(e, s) for s, e in known if abs(grad - s) <= 3 * e + slack]
        if matched:
            e, s = min(matched)
            return Verdict(KINK, float(s), float(e), distance)
        single = flips_plus[finest] == flips_minus[finest] == 1  # one switch, tied at θ: its two pieces
        if single and all(side is not None for side in sides):
            nearest = min(known, key=lambda side: abs(grad - side[0]))
            return Verdict(WRONG, float(nearest[0]), float(nearest[1]), distance)
        return Verdict(KINK, math.nan, math.nan, distance)
    crossed = np.flatnonzero(valid & flipped)
    near = float(np.minimum(step_plus, step_minus)[crossed].min()) if crossed.size else math.nan
    if len(known) == 2 and abs(known[0][0] - known[1][0]) > 3 * (known[0][1] + known[1][1]):
        return Verdict(KINK, math.nan, math.nan, near)  # the sides disagree: a kink no switch showed
    if known:
        s, e = min(known, key=lambda side: side[1])
        return Verdict(AGREES if abs(grad - s) <= 3 * e + slack else WRONG, float(s), float(e))
    return Verdict(KINK if crossed.size else UNRESOLVED, math.nan, math.nan, near)


def _one_side(slope: np.ndarray, same: np.ndarray, n: np.ndarray, within: np.ndarray):
    """(slope, bound) of the best-known rung among ``same`` (rungs crossing the same kinks), its
    first-order truncation bounded by the move to the next finer one (1.12×: it falls 10× a rung),
    or None where no rung is known within ``within``."""
    best = None
    for k in np.flatnonzero(same):
        truncation = []
        if k + 1 < RUNGS and same[k + 1]:
            truncation.append(1.12 * abs(slope[k] - slope[k + 1]) + n[k] + n[k + 1])
        if truncation:
            e = n[k] + min(truncation)
            if e <= within[k] and (best is None or e < best[1]):
                best = (float(slope[k]), float(e))
    return best
