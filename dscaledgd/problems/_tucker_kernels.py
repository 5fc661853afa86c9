"""The Numba kernels of the Tucker chunk passes (:mod:`dscaledgd.problems.tucker`).

Coo chunks: one sweep over the entries that reuses the contraction of the core
with the rows of the leading modes while the index prefix is unchanged
(:func:`_coo_pass`, :func:`_coo_values`). Dense chunks: the fused residual
sweep :func:`_dense_residual`.

Both residual kernels take a clip level ``zeta``: the residual of an entry is
``clip(x − y, −ζ, ζ)``. Tucker completion passes :data:`NO_CLIP` (no clip);
tensor robust PCA (ALGORITHMS.md §8) passes its threshold ``ζ_t``, because
``X − Y + thre(Y − X, ζ) = clip(X − Y, −ζ, ζ)``: the gradient of
``½‖X + S − Y‖²`` at ``S = thre(Y − X, ζ)``. Each also returns ``Σ |x − y|``
(the self-supervised criterion), the number of entries with
``|x − y| > ζ`` (the size of the sparse part) and the number with
``|x − y| > τ``, a fixed level (the entries the fit leaves unexplained).
``NO_CLIP`` is finite because ``fastmath`` assumes no infinities.

No dask import here (DESIGN.md §1).
"""

from __future__ import annotations

import numpy as np

from .._jit import njit

#: the clip level of a plain residual (finite: the kernels use ``fastmath``)
NO_CLIP = float(np.finfo(np.float64).max)


@njit(nogil=True, cache=True)
def _levels(ranks):  # pragma: no cover - jitted
    """``Q[k] = Π ranks[k:]`` and the offsets of the level buffers of sizes ``Q``."""
    d = ranks.shape[0]
    Q = np.ones(d + 1, np.int64)
    for k in range(d - 1, -1, -1):
        Q[k] = Q[k + 1] * ranks[k]
    off = np.zeros(d + 2, np.int64)
    for k in range(d + 1):
        off[k + 1] = off[k] + Q[k]
    return Q, off


@njit(nogil=True, cache=True)
def _first_change(index, e):  # pragma: no cover - jitted
    """First mode where entry ``e`` differs from entry ``e - 1`` (``d`` if equal)."""
    d = index.shape[1]
    for k in range(d):
        if index[e, k] != index[e - 1, k]:
            return k
    return d


@njit(nogil=True, cache=True, fastmath=True)
def _forward(index, e, lo, ucat, uoff, ranks, Q, off, F):  # pragma: no cover - jitted
    """Levels ``lo+1 … d`` of the prefix contraction for entry ``e``.

    Level ``k`` holds ``f_k = S ×_1 U_1[i_1] ⋯ ×_k U_k[i_k]`` (shape
    ``r_{k+1} × ⋯ × r_d``, C order); level 0 is the core itself.
    """
    d = ranks.shape[0]
    for k in range(lo + 1, d + 1):
        j = k - 1
        rk = ranks[j]
        q = Q[k]
        u0 = uoff[j] + index[e, j] * rk
        fb = off[k - 1]
        nb = off[k]
        for t in range(q):
            F[nb + t] = 0.0
        for a in range(rk):
            ua = ucat[u0 + a]
            for t in range(q):
                F[nb + t] += ua * F[fb + a * q + t]
    return F[off[d]]


@njit(nogil=True, cache=True, inline="always")
def _clip(z, zeta, tau):  # pragma: no cover - jitted
    """``(clip(z, ±ζ), |z|, |z| > ζ, |z| > τ)`` of one residual."""
    a = abs(z)
    if a > zeta:
        return (zeta if z > 0 else -zeta), a, 1, 1 if a > tau else 0
    return z, a, 0, 1 if a > tau else 0


@njit(nogil=True, cache=True, fastmath=True)
def _coo_pass(index, values, ucat, uoff, ranks, core, gcat, cgrad, project, zeta, tau, samp):  # noqa: E501  # pragma: no cover
    """One sweep: residuals, factor gradients (into ``gcat``) and core gradient.

    Reverse-mode through the prefix contraction, grouped by index prefix: the
    adjoint ``B_k`` of level ``k`` is summed over a run of entries sharing
    ``(i_1, …, i_k)`` and flushed when the run ends, giving
    ``G_k[i_k] += f_{k-1} · B_k`` and ``B_{k-1} += U_k[i_k] ⊗ B_k``. The core
    gradient is ``B_0``. Correct for any entry order; sorted order makes the
    runs long. With ``project`` the adjoint of an entry is ``y`` (not
    ``x − y``), nothing is contracted forward and ``gcat`` is not touched.
    Otherwise the adjoint is ``clip(x − y, −ζ, ζ)``. Returns
    ``(Σ adjoint², Σ y², Σ |x − y|, #{|x − y| > ζ}, #{|x − y| > τ})``; with a
    non-empty ``samp`` of length ``s``, ``samp[e // k] = |x − y|`` for every
    ``k``-th entry ``e`` (``k = ⌈m / s⌉``), the rest left as they are.
    """
    m, d = index.shape
    Q, off = _levels(ranks)
    F = np.empty(off[d + 1])
    B = np.zeros(off[d + 1])
    for t in range(Q[0]):
        F[t] = core[t]
    sz = 0.0
    sy = 0.0
    sa = 0.0
    ns = 0
    nt = 0
    ks = (m + samp.shape[0] - 1) // samp.shape[0] if samp.shape[0] > 0 else 0
    for e in range(m + 1):
        if e == 0 or e == m:
            lvl = 0
        else:
            lvl = _first_change(index, e)
        if e > 0:  # flush the runs of entry e - 1 that end here
            for k in range(d, lvl, -1):
                j = k - 1
                rk = ranks[j]
                q = Q[k]
                u0 = uoff[j] + index[e - 1, j] * rk
                fb = off[k - 1]
                bb = off[k]
                for a in range(rk):
                    ua = ucat[u0 + a]
                    s = 0.0
                    for t in range(q):
                        bt = B[bb + t]
                        s += F[fb + a * q + t] * bt
                        B[fb + a * q + t] += ua * bt
                    if not project:
                        gcat[u0 + a] += s
                for t in range(q):
                    B[bb + t] = 0.0
        if e == m:
            break
        y = values[e]
        sy += y * y
        if project:
            B[off[d]] += y
            continue
        x = _forward(index, e, lvl, ucat, uoff, ranks, Q, off, F)
        z, a, over, out = _clip(x - y, zeta, tau)
        sa += a
        ns += over
        nt += out
        if ks > 0 and e % ks == 0:
            samp[e // ks] = a
        sz += z * z
        B[off[d]] += z
    for t in range(Q[0]):
        cgrad[t] += B[t]
    return sz, sy, sa, ns, nt


@njit(nogil=True, cache=True, fastmath=True)
def _coo_values(index, ucat, uoff, ranks, core, out):  # pragma: no cover - jitted
    """``out[e] = <S, U_1[i_1] ⊗ ⋯ ⊗ U_d[i_d]>`` for every entry."""
    m, d = index.shape
    Q, off = _levels(ranks)
    F = np.empty(off[d + 1])
    for t in range(Q[0]):
        F[t] = core[t]
    for e in range(m):
        lvl = 0 if e == 0 else _first_change(index, e)
        if lvl == d:
            out[e] = F[off[d]]
        else:
            out[e] = _forward(index, e, lvl, ucat, uoff, ranks, Q, off, F)
    return out


@njit(nogil=True, cache=True)
def _dense_residual(X, Y, zeta, tau, samp):  # pragma: no cover - jitted (no fastmath: NaN)
    """``X ← P_Ω(clip(X − Y, −ζ, ζ))`` in place on flat arrays (Ω: ``Y`` not NaN);
    ``(Σ z², Σ_obs y², Σ_obs |x − y|, #{|x − y| > ζ}, #{|x − y| > τ})``; a non-empty
    ``samp`` gets ``|x − y|`` of every ``k``-th cell (NaN where missing), as for coo."""
    sz = 0.0
    sy = 0.0
    sa = 0.0
    ns = 0
    nt = 0
    m = X.shape[0]
    ks = (m + samp.shape[0] - 1) // samp.shape[0] if samp.shape[0] > 0 else 0
    for i in range(m):
        y = Y[i]
        if np.isnan(y):
            X[i] = 0.0
            if ks > 0 and i % ks == 0:
                samp[i // ks] = np.nan
        else:
            z, a, over, out = _clip(X[i] - y, zeta, tau)
            sa += a
            ns += over
            nt += out
            if ks > 0 and i % ks == 0:
                samp[i // ks] = a
            X[i] = z
            sz += z * z
            sy += y * y
    return sz, sy, sa, ns, nt


@njit(nogil=True, cache=True)
def _fiber_gram(cols, rows, vals, G):  # pragma: no cover - compiled
    """``G[r_a, r_b] += v_a v_b`` over every pair of entries of one fiber: ``cols`` sorted,
    equal ``cols`` are one fiber of the mode (the other modes' position)."""
    m = len(cols)
    s = 0
    while s < m:
        e = s + 1
        while e < m and cols[e] == cols[s]:
            e += 1
        for a in range(s, e):
            ra, va = rows[a], vals[a]
            for b in range(s, e):
                G[ra, rows[b]] += va * vals[b]
        s = e
    return G
