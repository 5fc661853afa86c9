"""ScaledSGD (ALGORITHMS.md §9): per-sample losses, the Numba sample kernel, AUC.

The model is symmetric, ``M ≈ X Xᵀ`` with ``X`` of shape ``(d, r)``. A sample is
a pair ``(i, j, y)`` (losses ``"rmse"``, ``"1bit"``, ``"edm"``) or a triplet
``(i, j, k, y)`` (``"bpr"``, ``y ∈ {0, 1}``: 1 when item ``j`` should rank above
``k`` for ``i``). Per sample, with the *old* rows and the cached
``P = (XᵀX)⁻¹`` (``P = I`` for plain SGD):

=======  ==================================  =============================================
loss     ``g``                               directions (each row moves by ``−lr · d P``)
=======  ==================================  =============================================
rmse     ``x_i·x_j − y``                     ``d_i = g x_j``, ``d_j = g x_i``
1bit     ``σ(x_i·x_j) − y``                  as rmse
edm      ``‖x_i‖² + ‖x_j‖² − 2x_i·x_j − y``  ``d_i = g (x_i − x_j)``, ``d_j = −d_i``
bpr      ``σ(x_i·x_j − x_i·x_k) − y``        ``d_i = g (x_j − x_k)``, ``d_j = g x_i``,
                                             ``d_k = −g x_i``
=======  ==================================  =============================================

The per-sample objectives whose gradients these are (up to the factor the
papers fold into ``lr``): rmse ``½(x_i·x_j − y)²``, 1bit the cross-entropy
``softplus(z) − y z`` with ``z = x_i·x_j``, edm ``¼ g²``, bpr
``softplus(z) − y z``. A row that appears more than once in a sample (``i = j``,
or a repeated index of a triplet) is moved once, by the sum of its
directions (the BPR guard of §9).

After each sample ``P`` is kept equal to ``(XᵀX)⁻¹`` by Sherman–Morrison, one
rank-1 update per changed row added and one per old row removed (4 per pair,
6 per triplet, ``O(r²)`` each). A removal whose denominator ``1 − uᵀPu`` is
not safely positive would make ``P`` indefinite: the kernel stops there and
says where, and the caller re-inverts ``XᵀX`` (:mod:`dscaledgd.solvers.online`).

No dask import here (DESIGN.md §1).
"""

from __future__ import annotations

import math

import numpy as np

from .._jit import njit
from ..exceptions import InputDataError

__all__ = [
    "LOSSES", "PAIR_LOSSES", "LOSS_CODES", "run_samples", "objective", "gradient", "auc",
    "reference_samples", "sherman_morrison_add", "sherman_morrison_remove", "check_samples",
    "sums", "np_maximum", "rmse",
]  # fmt: skip

LOSSES = ("rmse", "1bit", "edm", "bpr")
PAIR_LOSSES = ("rmse", "1bit", "edm")
LOSS_CODES = {name: k for k, name in enumerate(LOSSES)}
#: a Sherman–Morrison removal with ``1 − uᵀPu`` below this is refused (P would lose
#: positive definiteness, or the update would amplify rounding by more than 1e8)
SM_MIN_DENOM = 1e-8
#: reassociation lets LLVM vectorise the r-long dot products; no ``nnan``/``ninf``, so the
#: non-finite checks downstream still see a NaN
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


# ------------------------------------------------------------------ kernel
@njit(nogil=True, cache=True)
def _sig(z):  # pragma: no cover - jitted
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _sm(P, u, Pu, sign):  # pragma: no cover - jitted
    """``P ← P − sign (Pu)(Pu)ᵀ/(1 + sign uᵀPu)``; False when the denominator is unsafe."""
    r = P.shape[0]
    p = 0.0
    for a in range(r):
        s = 0.0
        for b in range(r):
            s += P[a, b] * u[b]
        Pu[a] = s
        p += u[a] * s
    den = 1.0 + sign * p
    if not den > SM_MIN_DENOM:
        return False
    c = sign / den
    for a in range(r):
        for b in range(r):
            P[a, b] -= c * Pu[a] * Pu[b]
    return True


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _samples(I, J, K, Y, order, start, X, P, lr, loss, scaled):  # pragma: no cover - jitted
    """Samples ``order[start:]`` in turn; returns ``-1``, or the position of a sample whose
    Sherman–Morrison removal was refused (that sample is fully applied to ``X``; ``P``
    must be re-inverted before going on)."""
    r = X.shape[1]
    rows = np.empty(3, np.int64)
    old = np.empty((3, r))
    dirs = np.zeros((3, r))
    Pu = np.empty(r)
    new = np.empty((3, r))
    first = np.empty(3, np.bool_)
    for pos in range(start, order.shape[0]):
        s = order[pos]
        i, j = I[s], J[s]
        y = Y[s]
        n = 3 if loss == 3 else 2
        k = K[s] if loss == 3 else j
        rows[0], rows[1], rows[2] = i, j, k
        for a in range(r):
            old[0, a] = X[i, a]
            old[1, a] = X[j, a]
            old[2, a] = X[k, a]
        dot = 0.0
        for a in range(r):
            dot += old[0, a] * old[1, a]
        if loss == 0:
            g = dot - y
        elif loss == 1:
            g = _sig(dot) - y
        elif loss == 2:
            g = -2.0 * dot - y
            for a in range(r):
                g += old[0, a] * old[0, a] + old[1, a] * old[1, a]
        else:
            z = dot
            for a in range(r):
                z -= old[0, a] * old[2, a]
            g = _sig(z) - y
        for a in range(r):
            if loss == 2:
                dirs[0, a] = g * (old[0, a] - old[1, a])
                dirs[1, a] = -dirs[0, a]
            elif loss == 3:
                dirs[0, a] = g * (old[1, a] - old[2, a])
                dirs[1, a] = g * old[0, a]
                dirs[2, a] = -g * old[0, a]
            else:
                dirs[0, a] = g * old[1, a]
                dirs[1, a] = g * old[0, a]
        for t in range(n):  # each distinct row once, by the sum of its directions
            first[t] = True
            for q in range(t):
                if rows[q] == rows[t]:
                    first[t] = False
            if not first[t]:
                continue
            for q in range(t + 1, n):
                if rows[q] == rows[t]:
                    for a in range(r):
                        dirs[t, a] += dirs[q, a]
            if not scaled:  # plain SGD: no product with P at all
                for a in range(r):
                    new[t, a] = old[t, a] - lr * dirs[t, a]
                continue
            for a in range(r):  # every move with the sample's P (symmetric: by rows)
                s2 = 0.0
                for b in range(r):
                    s2 += P[a, b] * dirs[t, b]
                new[t, a] = old[t, a] - lr * s2
        ok = True
        for t in range(n):
            if not first[t]:
                continue
            for a in range(r):
                X[rows[t], a] = new[t, a]
            if scaled and ok:  # add the new row, remove the old one
                ok = _sm(P, new[t], Pu, 1.0)
                if ok:
                    ok = _sm(P, old[t], Pu, -1.0)
        if not ok:
            return pos
    return -1


def run_samples(I, J, K, Y, order, X, P, lr: float, loss: str, scaled: bool, start: int = 0):
    """Apply the samples ``order[start:]`` (indices into ``I, J, K, Y``) to ``X`` and ``P``
    in place; ``-1`` or the position after which ``P`` must be re-inverted."""
    return int(_samples(I, J, K, Y, order, int(start), X, P, float(lr), LOSS_CODES[loss],
                        bool(scaled)))  # fmt: skip


# ------------------------------------------------------------------ input
def check_samples(func: str, samples, loss: str, n_rows=None, offset: int = 0):
    """``(I, J, K, Y, d)`` from ``(i, j, y)`` / ``(i, j, k, y)`` columns or an ``(m, 3)`` /
    ``(m, 4)`` array; indices checked against ``n_rows`` (default: the largest + 1).
    ``offset``: the position of the first sample in the whole stream (for messages)."""
    want = 4 if loss == "bpr" else 3
    what = "triplets (i, j, k, y)" if loss == "bpr" else "pairs (i, j, y)"
    if isinstance(samples, tuple | list):
        cols = [np.asarray(c) for c in samples]
    else:
        arr = np.asarray(samples)
        cols = [arr[:, c] for c in range(arr.shape[1])] if arr.ndim == 2 else [arr]
    if len(cols) != want or len({len(c) for c in cols}) != 1 or cols[0].ndim != 1:
        other = "pairs (i, j, y)" if loss == "bpr" else "triplets (i, j, k, y)"
        raise InputDataError(
            f"{func}: loss={loss!r} takes {what}: {want} columns of equal length. Got "
            f"{len(cols)} column(s) of lengths {[len(c) for c in cols]}"
            + (
                f" (that is {other}; pick the loss that matches)." if len(cols) == 7 - want else "."
            )  # fmt: skip
        )
    if len(cols[0]) == 0:
        raise InputDataError(f"{func}: no samples were given.")
    idx = cols[:-1]
    Y = np.asarray(cols[-1], dtype=np.float64)
    for name, c in zip("ijk", idx):
        ok = np.issubdtype(c.dtype, np.integer) or (
            np.issubdtype(c.dtype, np.floating)
            and np.all(np.isfinite(c))
            and np.all(c == np.round(c))
        )
        if not ok:
            raise InputDataError(f"{func}: the {name} indices must be integers. Got {c.dtype}.")
        if np.any(c < 0):
            raise InputDataError(
                f"{func}: the {name} indices include a negative value ({int(c.min())}); "
                "indices start at 0."
            )
    d = int(max(int(c.max()) for c in idx)) + 1
    if n_rows is not None:
        if any(int(c.max()) >= n_rows for c in idx):
            raise InputDataError(
                f"{func}: an index is {d - 1}, outside the {n_rows} rows (n_rows={n_rows}). "
                "Indices run from 0 to n_rows - 1."
            )
        d = int(n_rows)
    if not np.all(np.isfinite(Y)):
        bad = int(np.flatnonzero(~np.isfinite(Y))[0])
        raise InputDataError(f"{func}: the value of sample {offset + bad} is {Y[bad]}, not finite.")
    if loss in ("bpr", "1bit") and not np.all((Y == 0) | (Y == 1)):
        bad = int(np.flatnonzero((Y != 0) & (Y != 1))[0])
        meaning = "1: j above k for i" if loss == "bpr" else "the observed bit of (i, j)"
        raise InputDataError(
            f"{func}: loss={loss!r} needs labels y in {{0, 1}} ({meaning}); sample "
            f"{offset + bad} has y = {Y[bad]}."
        )
    I = np.ascontiguousarray(idx[0], dtype=np.int64)
    J = np.ascontiguousarray(idx[1], dtype=np.int64)
    K = np.ascontiguousarray(idx[2], dtype=np.int64) if loss == "bpr" else J
    return I, J, K, np.ascontiguousarray(Y), d


# ------------------------------------------------------------------ objectives
def _z(I, J, K, X, loss):
    dot = np.einsum("ij,ij->i", X[I], X[J])
    if loss == "bpr":
        return dot - np.einsum("ij,ij->i", X[I], X[K])
    if loss == "edm":
        return np.einsum("ij,ij->i", X[I], X[I]) + np.einsum("ij,ij->i", X[J], X[J]) - 2 * dot
    return dot


def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return np.exp(-_softplus(-z))


def objective(I, J, K, Y, X, loss: str) -> float:
    """The mean per-sample objective (module docstring), computed stably."""
    return float(np.mean(_objectives(_z(I, J, K, X, loss), Y, loss)))


def _objectives(z, Y, loss):
    Y = np.asarray(Y, dtype=np.float64)
    if loss == "rmse":
        return 0.5 * (z - Y) ** 2
    if loss == "edm":
        return 0.25 * (z - Y) ** 2
    return _softplus(z) - Y * z


def _right(z, Y):
    Y = np.asarray(Y) > 0.5
    return np.where(Y, z > 0, z < 0) + 0.5 * (z == 0)


def gradient(I, J, K, Y, X, loss: str) -> np.ndarray:
    """``∇_X`` of :func:`objective` (the sum of the per-sample directions ``d``, / m)."""
    z = _z(I, J, K, X, loss)
    Y = np.asarray(Y, dtype=np.float64)
    m = len(Y)
    G = np.zeros_like(X)
    if loss == "rmse" or loss == "1bit":
        g = (z - Y) if loss == "rmse" else _sigmoid(z) - Y
        np.add.at(G, I, g[:, None] * X[J])
        np.add.at(G, J, g[:, None] * X[I])
    elif loss == "edm":
        g = (z - Y)[:, None] * (X[I] - X[J])
        np.add.at(G, I, g)
        np.add.at(G, J, -g)
    else:
        g = (_sigmoid(z) - Y)[:, None]
        np.add.at(G, I, g * (X[J] - X[K]))
        np.add.at(G, J, g * X[I])
        np.add.at(G, K, -g * X[I])
    return G / m


def auc(I, J, K, Y, X) -> float:
    """The fraction of triplets ordered correctly: ``x_i·x_j > x_i·x_k`` exactly when ``y = 1``
    (ties count one half)."""
    return float(np.mean(_right(_z(I, J, K, X, "bpr"), Y)))


def rmse(I, J, K, Y, X, loss: str) -> float:
    """RMSE of the predicted values (``x_i·x_j``, or the squared distance for EDM) against
    ``y`` (the pair losses)."""
    z = _z(I, J, K, X, loss)
    return float(np.sqrt(np.mean((z - np.asarray(Y, dtype=np.float64)) ** 2)))


#: samples per slice of :func:`sums` (bounds its temporaries to a few times 2^18 · r)
SUM_SLICE = 1 << 18


def sums(I, J, K, Y, X, loss: str) -> np.ndarray:
    """``[Σ objective, Σ ordered correctly (BPR), count]`` of a block of samples, slice by
    slice: the parts a blockwise evaluation adds up (:func:`objective`, :func:`auc`: means)."""
    out = np.zeros(3)
    for lo in range(0, len(Y), SUM_SLICE):
        sl = slice(lo, lo + SUM_SLICE)
        z = _z(I[sl], J[sl], K[sl], X, loss)
        out[0] += float(np.sum(_objectives(z, Y[sl], loss)))
        out[1] += float(np.sum(_right(z, Y[sl]))) if loss == "bpr" else 0.0
        out[2] += len(z)
    return out


@njit(nogil=True, cache=True)
def _np_epochs(J, K, Y, s, order, lr, epochs):  # pragma: no cover - jitted
    best = -1.0
    for _ in range(epochs):
        for t in range(order.shape[0]):
            q = order[t]
            j, k = J[q], K[q]
            g = _sig(s[j] - s[k]) - Y[q]
            s[j] -= lr * g
            if k != j:
                s[k] += lr * g
        right = 0.0
        for q in range(J.shape[0]):
            z = s[J[q]] - s[K[q]]
            if (z > 0 and Y[q] > 0.5) or (z < 0 and Y[q] < 0.5):
                right += 1.0
        best = max(best, right / J.shape[0])
    return best


def np_maximum(J, K, Y, d: int, *, epochs: int = 100, lr: float = 0.1, seed=0) -> float:
    """The NP-maximum AUC: the best AUC a non-personalised per-item score ``s`` reaches on
    the triplets ``(·, j, k, y)`` it is trained on (logistic loss on ``s_j − s_k``, SGD,
    ``epochs`` passes, the best epoch kept; the authors' ``bpr_npmaximum``). The anchor
    ``i`` plays no part: a model that beats this line has learned something personal."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(int(d))
    J = np.ascontiguousarray(J, dtype=np.int64)
    K = np.ascontiguousarray(K, dtype=np.int64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    return float(_np_epochs(J, K, Y, s, np.arange(len(J)), float(lr), int(epochs)))


# ------------------------------------------------------------------ references
def sherman_morrison_add(P, u):
    """``(A + u uᵀ)⁻¹`` from ``P = A⁻¹``."""
    Pu = P @ u
    return P - np.outer(Pu, Pu) / (1.0 + u @ Pu)


def sherman_morrison_remove(P, u):
    """``(A − u uᵀ)⁻¹`` from ``P = A⁻¹``."""
    Pu = P @ u
    return P + np.outer(Pu, Pu) / (1.0 - u @ Pu)


def reference_samples(I, J, K, Y, order, X, lr: float, loss: str, scaled: bool) -> np.ndarray:
    """The plain-Python oracle: the samples in ``order``, ``P = (XᵀX)⁻¹`` from a fresh
    Cholesky factorisation before each (no Sherman–Morrison), every row moved once.
    Returns the new ``X``."""
    import scipy.linalg as sla

    X = np.array(X, dtype=np.float64)
    r = X.shape[1]
    for s in order:
        i, j, y = int(I[s]), int(J[s]), float(Y[s])
        k = int(K[s]) if loss == "bpr" else j
        P = sla.cho_solve(sla.cho_factor(X.T @ X), np.eye(r)) if scaled else np.eye(r)
        xi, xj, xk = X[i].copy(), X[j].copy(), X[k].copy()
        if loss == "rmse":
            g = xi @ xj - y
        elif loss == "1bit":
            g = float(_sigmoid(np.array(xi @ xj))) - y
        elif loss == "edm":
            g = xi @ xi + xj @ xj - 2 * xi @ xj - y
        else:
            g = float(_sigmoid(np.array(xi @ xj - xi @ xk))) - y
        if loss == "edm":
            moves = [(i, g * (xi - xj)), (j, -g * (xi - xj))]
        elif loss == "bpr":
            moves = [(i, g * (xj - xk)), (j, g * xi), (k, -g * xi)]
        else:
            moves = [(i, g * xj), (j, g * xi)]
        total: dict = {}
        for row, dvec in moves:
            total[row] = total.get(row, 0.0) + dvec
        old = {row: X[row].copy() for row in total}
        for row, dvec in total.items():
            X[row] = old[row] - lr * (dvec @ P)
    return X
