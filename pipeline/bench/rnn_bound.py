"""How fast any exact evaluator of the RNN example can be: ``python -m gradjob.bench.rnn_bound``.

Issue 18 asks every shipped example to check at least 10× faster than its black-box floor (two
forward calls per parameter). For ``examples/rnn.py`` this benchmark measures what stands in the
way, in one process on one BLAS thread: an evaluator written by hand for this one model, knowing
its structure, batched over many perturbations of one tensor at a time and exact (it matches the
forward's costs to round-off, checked here). It recomputes only what a perturbation changes: a
hidden-state weight (``Wx``, ``Wh``, ``b``) changes every later hidden state of every sequence and
so every score, and the tanh and exp of those (18 and 6 ns an element here) are most of the
forward's own time; an output weight changes one score column; an embedding row the sequences
that use its word. Its time per evaluation, weighted by the tensors' sizes, against the forward's
is the best ratio to the floor that an exact evaluator reaches on this model; gradjob's replay is
timed on the same perturbations beside it.
"""

from __future__ import annotations

import time

import numpy as np

from gradjob.examples import rnn
from gradjob.model.layout import Layout
from gradjob.trace import Replay

BATCH = 256    # perturbations of one tensor evaluated together, as a chunk's
REPEATS = 3    # the best of this many timings: a descheduled process only ever adds time


class HandBatched:
    """Exact costs of single-element perturbations of the RNN example's parameters, batched, by
    recomputing only what each perturbation changes (see the module docstring)."""

    def __init__(self, X, Y, parameters: dict):
        self.X, self.Y = np.asarray(X), np.asarray(Y)
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in parameters.items()}
        self.N, self.T = self.X.shape
        self.embedded = self.p["W_embed"][self.X]                   # (N, T, D)
        self.input_part = self.embedded @ self.p["Wx"]              # (N, T, H): x_t · Wx
        self.hidden = self._recurrence(self.input_part[None])[0]    # (N, T, H)
        scores = self.hidden @ self.p["W_vocab"] + self.p["b_vocab"]
        self.scores = scores                                        # (N, T, V)
        self.top = scores.max(axis=2)
        self.sums = np.exp(scores - self.top[..., None]).sum(axis=2)
        self.picked = np.take_along_axis(scores, self.Y[..., None], axis=2)[..., 0]
        self.per_sequence = (np.log(self.sums) + self.top - self.picked).sum(axis=1) / self.N

    def _recurrence(self, input_part, start=0, correction=None, sequences=slice(None)):
        """Hidden states (batch, n, T, H) of ``sequences`` from step ``start`` on (θ's before it);
        ``correction(t, h_prev, pre)`` adds a perturbation's change to a step's pre-activation."""
        Wh, b = self.p["Wh"], self.p["b"]
        batch, n, T, H = input_part.shape[0], input_part.shape[1], self.T, Wh.shape[0]
        out = np.empty((batch, n, T, H))
        if start:
            out[:, :, :start] = self.hidden[sequences, :start]
        prev = out[:, :, start - 1] if start else np.zeros((batch, n, H))
        for t in range(start, T):
            pre = (prev.reshape(-1, H) @ Wh).reshape(batch, n, H) + input_part[:, :, t] + b
            if correction is not None:
                correction(t, prev, pre)
            prev = out[:, :, t] = np.tanh(pre)
        return out

    def _loss(self, hidden, sequences=slice(None)):
        """The cost terms of ``sequences`` for each batch member's hidden states (batch, n, T, H)."""
        scores = hidden @ self.p["W_vocab"] + self.p["b_vocab"]
        top = scores.max(axis=3, keepdims=True)
        sums = np.exp(scores - top).sum(axis=3)
        Y = np.broadcast_to(self.Y[sequences][None, ..., None], scores.shape[:3] + (1,))
        picked = np.take_along_axis(scores, Y, axis=3)[..., 0]
        return (np.log(sums) + top[..., 0] - picked).sum(axis=(1, 2)) / self.N

    def costs(self, name: str, coords: tuple, values: np.ndarray) -> np.ndarray:
        """J with ``parameters[name][coords[0][p], coords[1][p], ...] = values[p]``, for each p."""
        B = len(values)
        delta = values - self.p[name][coords]
        every = np.arange(B)
        if name in ("W_vocab", "b_vocab"):  # one score column moves
            k = coords[-1]
            old = self.scores[:, :, k].transpose(2, 0, 1)                          # (B, N, T)
            moved = self.hidden[:, :, coords[0]].transpose(2, 0, 1) if name == "W_vocab" else 1.0
            new = old + delta[:, None, None] * moved
            sums = self.sums[None] - np.exp(old - self.top[None]) + np.exp(new - self.top[None])
            picked = np.where(self.Y[None] == k[:, None, None], new, self.picked[None])
            return (np.log(sums) + self.top[None] - picked).sum(axis=(1, 2)) / self.N
        if name == "W_embed":
            return self._embedding(*coords, delta)
        input_part = np.broadcast_to(self.input_part, (B,) + self.input_part.shape)
        if name == "Wx":
            j, k = coords
            input_part = input_part.copy()
            input_part[every, :, :, k] += delta[:, None, None] * self.embedded[:, :, j].transpose(2, 0, 1)
            return self._loss(self._recurrence(input_part))
        if name == "b":
            (k,) = coords

            def correction(t, prev, pre):
                pre[every, :, k] += delta[:, None]
            return self._loss(self._recurrence(input_part, correction=correction))
        j, k = coords  # Wh: step 0 sees h0 = 0, so the first change is at step 1

        def correction(t, prev, pre):
            pre[every, :, k] += delta[:, None] * prev[every, :, j]
        return self._loss(self._recurrence(input_part, start=1, correction=correction))

    def _embedding(self, rows, columns, delta):
        """A row of W_embed moves the sequences that use its word, from its first use on; the
        other sequences' terms stay θ's. Perturbations are grouped by row (by word)."""
        out = np.empty(len(delta))
        total = self.per_sequence.sum()
        for word in np.unique(rows):
            members = np.flatnonzero(rows == word)
            used = self.X == word
            sequences = np.flatnonzero(used.any(axis=1))
            if not sequences.size:
                out[members] = total
                continue
            start = int(np.argmax(used[sequences].any(axis=0)))
            # x_t moves by delta in its column where it is this word: x_t · Wx by delta · Wx[column, :]
            input_part = self.input_part[sequences][None] + (
                used[sequences][None, :, :, None] * delta[members, None, None, None]
                * self.p["Wx"][columns[members]][:, None, None, :])
            hidden = self._recurrence(input_part, start=start, sequences=sequences)
            out[members] = total - self.per_sequence[sequences].sum() + self._loss(hidden, sequences)
        return out


def _best(call) -> float:
    """The least process time of ``REPEATS`` calls (this process's own CPU, not other load's)."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        call()
        best = min(best, time.process_time() - started)
    return best


def irreducible_seconds(X, parameters: dict, batch: int = BATCH) -> dict:
    """Per tensor, seconds per evaluation of the work any exact evaluator of this model must redo,
    timed as ``batch`` evaluations at once: the tanh of every hidden state a perturbation changes in
    full, the matrix products that feed them and the scores, and the exp of every score. A weight
    of the first step's input (``Wx``, ``b``) moves one column of h1, so h2 on are new in full (h1's
    column is a rank-one change, left out here); ``Wh`` meets h0 = 0 first, so h3 on. Everything
    else (the first changed step, ``W_embed``, the output weights) is counted as free. A bound
    below any exact evaluator that calls NumPy's tanh, exp and BLAS."""
    N, T = np.shape(X)
    H, V = parameters["Wh"].shape[0], parameters["W_vocab"].shape[1]
    Wh, W_vocab = parameters["Wh"], parameters["W_vocab"]
    rng = np.random.default_rng(1)
    seconds = {}
    # tensor: (hidden states new in full, products h·Wh into them, score rows from them, scores' exp)
    for name, (full, products, score_steps, exp_steps) in {"Wx": (T - 1, T - 2, T - 1, T), "b": (T - 1, T - 2, T - 1, T),
                                                            "Wh": (T - 2, T - 3, T - 2, T - 1)}.items():
        hidden = rng.standard_normal((batch * N, H)) * 0.5
        states = rng.standard_normal((batch, full * N * H)) * 0.5
        rows = rng.standard_normal((batch * N * score_steps, H))
        scores = rng.standard_normal((batch, exp_steps * N * V))

        def work():
            for _ in range(products):
                hidden @ Wh
            np.tanh(states)
            rows @ W_vocab
            np.exp(scores)
        seconds[name] = _best(work) / batch
    return {name: seconds.get(name, 0.0) for name in parameters}


def figures(case=rnn.case, batch: int = BATCH, seed: int = 0) -> dict:
    """Per tensor and weighted by size: µs per evaluation of the forward, gradjob's replay and the
    hand-batched evaluator on the same ``batch`` perturbations, and the largest deviation of the
    hand-batched costs from the forward's (relative to |J|)."""
    X, Y, parameters = case()
    layout = Layout.of(parameters)
    theta = layout.flatten(parameters)
    hand = HandBatched(X, Y, parameters)
    replay = Replay.of(lambda X, Y, p: rnn.forward_propagation_n(X, Y, p)[0], X, Y, layout, theta)
    views = {k: v.copy() for k, v in parameters.items()}
    forward_seconds = _best(lambda: [rnn.forward_propagation_n(X, Y, views) for _ in range(20)]) / 20
    rng = np.random.default_rng(seed)
    rows, deviation = {}, 0.0
    for tensor in layout.tensors:
        local = np.sort(rng.choice(tensor.size, size=min(batch, tensor.size), replace=False))
        coords = np.unravel_index(local, tensor.shape)
        indices = tensor.offset + local
        values = theta[indices] + 1e-3 * np.maximum(1.0, np.abs(theta[indices]))
        exact = hand.costs(tensor.name, coords, values)
        for p in range(0, len(values), max(1, len(values) // 8)):  # the forward at a few of them
            views[tensor.name][tuple(c[p] for c in coords)] = values[p]
            cost = rnn.forward_propagation_n(X, Y, views)[0]
            views[tensor.name][tuple(c[p] for c in coords)] = parameters[tensor.name][tuple(c[p] for c in coords)]
            deviation = max(deviation, abs(exact[p] - cost) / max(1.0, abs(cost)))
        rows[tensor.name] = {
            "size": tensor.size,
            "hand_us": _best(lambda: hand.costs(tensor.name, coords, values)) / len(values) * 1e6,
            "replay_us": _best(lambda: replay.costs(indices, values)) / len(values) * 1e6,
        }
    for name, seconds in irreducible_seconds(X, parameters, batch).items():
        rows[name]["irreducible_us"] = seconds * 1e6
    n = layout.n_parameters
    keys = ("hand_us", "replay_us", "irreducible_us")
    weighted = {key: sum(r["size"] * r[key] for r in rows.values()) / n for key in keys}
    forward_us = forward_seconds * 1e6
    # the floor spends two forward calls per parameter, an evaluator two evaluations: the ratio is per evaluation
    ratios = {key.replace("_us", "_vs_floor"): forward_us / weighted[key] for key in keys}
    return {"n_parameters": n, "forward_us": forward_us, "tensors": rows, **weighted, **ratios,
            "largest_deviation": deviation}


def main() -> None:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        f = figures()
    print(f"examples/rnn.py, {f['n_parameters']:,} parameters, one BLAS thread, µs of process time per evaluation "
          f"(best of {REPEATS}, batches of {BATCH}):")
    print(f"  forward (the floor's unit): {f['forward_us']:.0f}")
    for name, r in f["tensors"].items():
        print(f"  {name:8s} {r['size']:6,d} elements: irreducible {r['irreducible_us']:6.1f}   "
              f"hand-batched {r['hand_us']:6.1f}   gradjob replay {r['replay_us']:6.1f}")
    print(f"  weighted by size: irreducible {f['irreducible_us']:.1f} (at most {f['irreducible_vs_floor']:.1f}× "
          f"the floor for any exact evaluator), hand-batched {f['hand_us']:.1f} ({f['hand_vs_floor']:.1f}×), "
          f"gradjob replay {f['replay_us']:.1f} ({f['replay_vs_floor']:.1f}×)")
    print(f"  hand-batched costs against the forward's: largest deviation {f['largest_deviation']:.1e} of max(1, |J|)")


if __name__ == "__main__":
    main()
