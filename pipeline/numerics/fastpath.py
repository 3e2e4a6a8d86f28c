"""Exact incremental evaluation of the built-in L-layer network, many perturbations per call.

Perturbing one element of layer l (W_l[j, k] or b_l[j]) changes only row j of Z_l. So:
activations before layer l are reused; row j goes through its real nonlinearity; its change
ΔA_l[j] reaches Z_{l+1} as the rank-one update W_{l+1}[:, j] ⊗ ΔA_l[j]; every later layer is
recomputed with its real nonlinearity. A batch of perturbations is one set of array operations.
The results equal the plain forward's to round-off (tests check it on random networks).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gradjob.model.layout import Layout
from gradjob.model.networks import relu, sigmoid
from gradjob.numerics.evaluate import PerturbationFailure

# Elements of one (width, perturbations, examples) block of the rank-one update: 2 MiB stays in a
# core's L2 cache, so two workers on two cores do not compete for memory bandwidth. Measured on the
# 784-512-256-1 network: 2^18 gave the best single-worker speed and 1.8× with two workers;
# 2^20 was 2.5× slower with two workers than alone.
ROW_BLOCK_ELEMENTS = 1 << 18
BATCH_BYTES = 32 << 20  # the largest (batch, layer width) arrays of row updates a call builds


Reader = Callable[[int, int], np.ndarray]
"""``read(start, stop)``: θ[start:stop] as a new array (from the store, on a worker)."""


class FastNetwork:
    """Costs of single-element perturbations of θ for ``networks.network_forward``.

    θ is not held whole. W1 is needed only for the unperturbed pass (Z1 = W1·X, streamed in
    row blocks) and for the unperturbed values of the W1 elements a call perturbs (read per
    call); every later tensor is needed by every perturbation of an earlier layer and is held.
    On the usual network, where W1 dominates, a worker's memory is a fraction of θ.
    """

    def __init__(self, layout: Layout, read: Reader, X: np.ndarray, Y: np.ndarray):
        self.layout, self.read, self.X, self.Y = layout, read, X, Y
        first, bias = layout.tensors[0], layout.tensors[1]  # W1, b1 (``supports`` checked the names)
        self.first, self.held_from = first, bias.offset
        self.held = read(bias.offset, layout.n_parameters)  # b1, W2, b2, …, bL
        self._w1_range, self._w1_values = (0, 0), None     # the last range of W1 read (see ``unperturbed``)
        self.params = {t.name: self.held[t.offset - bias.offset:t.stop - bias.offset].reshape(t.shape)
                       for t in layout.tensors[1:]}
        self.L = len(layout.tensors) // 2
        self.m = X.shape[1]
        # The unperturbed pass. Only Z_l is kept per layer (and the output): rows of A_l are
        # recomputed from Z_l when needed (elementwise, so bit-identical), which keeps a worker's
        # memory at the held tensors plus one array per layer.
        # One block buffer for the life of the worker: Dask workers run with MALLOC_TRIM_THRESHOLD_
        # set, so a fresh 2 MiB array per block is an mmap with page faults (measured 2.5× slower).
        self._block = np.empty(ROW_BLOCK_ELEMENTS)
        self.Z = [None, self._first_layer()]
        A = self._act(1, self.Z[1]) if self.L == 1 else self._hidden(self.Z[1])
        for layer in range(2, self.L + 1):
            Z = np.dot(self.params[f"W{layer}"], A)
            Z += self.params[f"b{layer}"]
            self.Z.append(Z)
            A = self._hidden(Z) if layer < self.L else self._act(layer, Z)
        self.A_out = A
        width = max(t.shape[0] for t in layout.tensors)
        self.batch = max(1, BATCH_BYTES // (8 * width * self.m))
        self.example_loss = self._loss(self.A_out, self.Y)  # per example: unchanged columns keep theirs

    def _first_layer(self) -> np.ndarray:
        """Z1 = W1·X + b1, reading W1 a block of rows at a time; one block when W1 is small."""
        rows, cols = self.first.shape
        Z = np.empty((rows, self.m), dtype=np.result_type(self.held.dtype, self.X.dtype))
        step = max(1, ROW_BLOCK_ELEMENTS // cols)
        for r in range(0, rows, step):
            s = min(rows, r + step)
            W = self.read(self.first.offset + r * cols, self.first.offset + s * cols).reshape(s - r, cols)
            Z[r:s] = np.dot(W, self.X)
        Z += self.params["b1"]
        return Z

    def _hidden(self, Z: np.ndarray) -> np.ndarray:
        """ReLU of a hidden layer's Z, in the block buffer when it fits: A_l only feeds the next product."""
        if Z.size <= self._block.size:
            return np.maximum(Z, 0, out=self._block[:Z.size].reshape(Z.shape))
        return relu(Z)

    def unperturbed(self, indices: np.ndarray) -> np.ndarray:
        """θ[indices]: held tensors from memory; W1 elements from the store, one range per chunk,
        kept so that the task and each of its ± calls read it once between them."""
        out = np.empty(len(indices), dtype=self.held.dtype)
        held = indices >= self.held_from
        out[held] = self.held[indices[held] - self.held_from]
        if not held.all():
            w1 = indices[~held]
            lo, hi = int(w1.min()), int(w1.max()) + 1
            if not (self._w1_range[0] <= lo and hi <= self._w1_range[1]):
                self._w1_range, self._w1_values = (lo, hi), self.read(lo, hi)
            out[~held] = self._w1_values[w1 - self._w1_range[0]]
        return out

    @staticmethod
    def supports(layout: Layout, X: np.ndarray) -> bool:
        """The parameters are W1, b1, …, WL, bL of a chain with a single sigmoid output."""
        names = layout.names
        L = len(names) // 2
        if L < 1 or names != [f"{p}{k}" for k in range(1, L + 1) for p in ("W", "b")] or np.ndim(X) != 2:
            return False
        shapes = {t.name: t.shape for t in layout.tensors}
        width = X.shape[0]
        for k in range(1, L + 1):
            W, b = shapes[f"W{k}"], shapes[f"b{k}"]
            if len(W) != 2 or W[1] != width or b != (W[0], 1):
                return False
            width = W[0]
        return width == 1

    def _act(self, layer: int, Z: np.ndarray) -> np.ndarray:
        return relu(Z) if layer < self.L else sigmoid(Z)

    def _activation_rows(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """Rows of A_layer (A_0 = X), recomputed from the stored Z_layer."""
        return self.X[rows, :] if layer == 0 else self._act(layer, self.Z[layer][rows, :])

    def _act_in_place(self, layer: int, Z: np.ndarray) -> np.ndarray:
        """The same values as ``_act``, without a temporary the size of Z."""
        if layer < self.L:
            return np.maximum(Z, 0, out=Z)
        return sigmoid(Z)

    @staticmethod
    def _loss(A_out: np.ndarray, Y) -> np.ndarray:
        """Cross-entropy per example, summed over output rows (axis 0)."""
        log_probs = np.multiply(-np.log(A_out), Y) + np.multiply(-np.log(1 - A_out), 1 - Y)
        return np.sum(log_probs, axis=0)

    def _cost(self, A_out: np.ndarray) -> np.ndarray:
        """Mean cross-entropy per batch element of A_out (batch, 1, m), as the forward computes it."""
        log_probs = np.multiply(-np.log(A_out), self.Y) + np.multiply(-np.log(1 - A_out), 1 - self.Y)
        return 1.0 / self.m * np.sum(log_probs, axis=(1, 2))

    def costs(self, indices: np.ndarray, values: np.ndarray, sign: str = "") -> np.ndarray:
        """J at θ with θ[indices[p]] = values[p], for each p separately."""
        out = np.empty(len(indices))
        deltas = values.astype(np.float64) - self.unperturbed(indices).astype(np.float64)
        for tensor in self.layout.tensors:
            inside = np.flatnonzero((indices >= tensor.offset) & (indices < tensor.stop))
            for first in range(0, inside.size, self.batch):
                part = inside[first:first + self.batch]
                out[part] = self._tensor_costs(tensor, indices[part] - tensor.offset, deltas[part])
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:  # as the generic path does: no NaN reaches the store
            raise PerturbationFailure(int(indices[bad[0]]), sign, f"the cost is {out[bad[0]]}")
        return out

    def _tensor_costs(self, tensor, local: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        layer = int(tensor.name[1:])
        if tensor.name[0] == "W":
            rows, cols = np.unravel_index(local, tensor.shape)
            dZ = deltas[:, None] * self._activation_rows(layer - 1, cols)  # (B, m)
        else:
            rows = local
            dZ = np.repeat(deltas[:, None], self.m, axis=1)
        row_new = self._act(layer, self.Z[layer][rows, :] + dZ)      # (B, m): the real nonlinearity
        if layer == self.L:
            A = np.repeat(self.A_out[None], len(rows), axis=0)
            A[np.arange(len(rows)), rows, :] = row_new
            return self._cost(A)
        dA = row_new - self._activation_rows(layer, rows)             # (B, m)
        out = np.empty(len(rows))
        for row in np.unique(rows):
            same = np.flatnonzero(rows == row)
            out[same] = self._row_costs(layer, int(row), dA[same])
        return out

    def _row_costs(self, layer: int, row: int, dA: np.ndarray) -> np.ndarray:
        """Costs for perturbations that change row ``row`` of A_layer by ``dA`` (b, m).

        Only examples whose activation changed (columns S) are recomputed; the others keep their
        exact per-example loss. Layer l+1 gets the rank-one update on S, later layers are one
        matrix product each over all (perturbation, example) pairs, in blocks that stay in cache.
        """
        changed = np.any(dA != 0, axis=0)
        S = np.flatnonzero(changed)
        unchanged = float(np.sum(self.example_loss[~changed]))
        if S.size == 0:
            return np.full(dA.shape[0], 1.0 / self.m * unchanged)
        w = self.params[f"W{layer + 1}"][:, row][:, None, None]
        Z_next = self.Z[layer + 1][:, S][:, None, :]                     # (n, 1, s), gathered once
        dA = dA[:, S]
        Y = np.reshape(self.Y[..., S], (-1, 1, S.size)) if np.ndim(self.Y) else self.Y
        n = Z_next.shape[0]
        step = max(1, ROW_BLOCK_ELEMENTS // (n * S.size))
        out = np.empty(dA.shape[0])
        for first in range(0, dA.shape[0], step):
            block = dA[first:first + step]
            b = block.shape[0]
            size = n * b * S.size
            Z = (self._block[:size] if size <= self._block.size else np.empty(size)).reshape(n, b, S.size)
            np.multiply(w, block[None], out=Z)                             # rank one, C order
            Z += Z_next
            A = self._act_in_place(layer + 1, Z).reshape(n, b * S.size)      # a view, no copy
            for later in range(layer + 2, self.L + 1):
                Z = np.dot(self.params[f"W{later}"], A)
                Z += self.params[f"b{later}"]
                A = self._act_in_place(later, Z)
            loss = self._loss(A.reshape(A.shape[0], b, S.size), Y)
            out[first:first + b] = 1.0 / self.m * (unchanged + np.sum(loss, axis=-1))
        return out
