"""Synthetic instances (ALGORITHMS.md §10) and real-data loaders.

Every generator takes ``random_state`` and uses :func:`numpy.random.default_rng`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._random import seeded_normal_rows
from ._validation import RANDOM_STATE, Interval, Options, check_param, resolve_rng
from .exceptions import InvalidParameterError
from .linalg import fold, multi_mode_product
from .problems.completion import sddmm
from .storage.observations import Observations

__all__ = [
    "LowRank",
    "make_low_rank",
    "make_completion",
    "bernoulli_mask_coo",
    "bernoulli_mask",
    "spectrum",
    "tucker_instance",
    "tucker_tensor",
]

SPECTRA = ("linear", "geometric")


def spectrum(rank: int, cond: float, kind: str = "linear") -> np.ndarray:
    """Singular values from 1 down to ``1/cond``.

    ``"linear"``: ``linspace(1, 1/κ, r)``. ``"geometric"``: ``κ^{-(i-1)/(r-1)}``
    (harsher: most values are small).
    """
    if rank == 1:
        return np.ones(1)
    if kind == "linear":
        return np.linspace(1.0, 1.0 / cond, rank)
    return cond ** (-np.arange(rank) / (rank - 1))


@dataclass(frozen=True)
class LowRank:
    """A planted low-rank matrix ``X* = U diag(s) Vᵀ`` (``V is U`` when symmetric)."""

    U: np.ndarray
    s: np.ndarray
    V: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.U.shape[0], self.V.shape[0]

    @property
    def rank(self) -> int:
        return len(self.s)

    @property
    def cond(self) -> float:
        return float(self.s.max() / self.s.min())

    def dense(self) -> np.ndarray:
        return (self.U * self.s) @ self.V.T

    def entries(self, rows, cols) -> np.ndarray:
        return sddmm(rows, cols, np.ascontiguousarray(self.U * self.s), self.V)

    def relative_error(self, L, R=None) -> float:
        """``‖L Rᵀ − X*‖_F / ‖X*‖_F`` without forming either matrix.

        Exact to about 1e-16 relative: the difference is written as
        ``[L, −U S] [R, V]ᵀ`` and its norm taken from the two thin QR factors.
        """
        L = np.asarray(L)
        R = L if R is None else np.asarray(R)
        _, R1 = np.linalg.qr(np.hstack([L, -(self.U * self.s)]))
        _, R2 = np.linalg.qr(np.hstack([R, self.V]))
        return float(np.linalg.norm(R1 @ R2.T) / np.linalg.norm(self.s))


def make_low_rank(
    shape,
    rank: int,
    *,
    cond: float = 1.0,
    spectrum_kind: str = "linear",
    basis: str = "gaussian",
    symmetric: bool = False,
    random_state=None,
) -> LowRank:
    """A rank-``rank`` matrix with orthonormal factors and a controlled spectrum.

    Parameters
    ----------
    shape : (n1, n2)
    rank : int
    cond : float, default 1
        Condition number ``κ = s_1 / s_r``.
    spectrum_kind : {"linear", "geometric"}
    basis : {"gaussian", "rademacher"}
        Entries of the matrices orthonormalised (QR) into ``U`` and ``V``.
    symmetric : bool
        ``X* = U S Uᵀ`` (PSD); needs a square shape.
    random_state : None, int or Generator
    """
    check_param("make_low_rank", "cond", cond, [Interval("real", 1, None)])
    check_param("make_low_rank", "spectrum_kind", spectrum_kind, [Options(SPECTRA)])
    check_param("make_low_rank", "basis", basis, [Options(("gaussian", "rademacher"))])
    check_param("make_low_rank", "random_state", random_state, RANDOM_STATE)
    n1, n2 = int(shape[0]), int(shape[1])
    check_param("make_low_rank", "rank", rank, [Interval("int", 1, min(n1, n2))])
    if symmetric and n1 != n2:
        raise InvalidParameterError(f"symmetric=True needs a square shape; got {shape}.")
    rng = resolve_rng(random_state)

    def orth(n):
        G = (
            rng.standard_normal((n, rank))
            if basis == "gaussian"
            else rng.choice([-1.0, 1.0], size=(n, rank))
        )
        return np.ascontiguousarray(np.linalg.qr(G)[0])

    U = orth(n1)
    V = U if symmetric else orth(n2)
    return LowRank(U, spectrum(rank, cond, spectrum_kind), V)


def bernoulli_mask_coo(shape, p: float, rng, *, symmetric: bool = False):
    """Indices of an i.i.d. Bernoulli(``p``) mask, without forming it.

    Works in row chunks of about 16M cells: per chunk the count is
    Binomial(cells, p) and the positions a uniform subset, which is exactly
    the Bernoulli law. With ``symmetric=True`` the upper triangle (diagonal
    included) is sampled and mirrored.
    """
    n1, n2 = int(shape[0]), int(shape[1])
    ch = max(1, (1 << 24) // n2)
    rows, cols = [], []
    for r0 in range(0, n1, ch):
        r1 = min(n1, r0 + ch)
        cells = (r1 - r0) * n2
        m = rng.binomial(cells, p)
        lin = np.sort(rng.choice(cells, size=m, replace=False))
        rows.append(r0 + lin // n2)
        cols.append(lin % n2)
    r = np.concatenate(rows).astype(np.int64)
    c = np.concatenate(cols).astype(np.int64)
    if symmetric:
        keep = r <= c
        r, c = r[keep], c[keep]
        off = r != c
        r, c = np.concatenate([r, c[off]]), np.concatenate([c, r[off]])
    return r, c


def make_completion(
    shape,
    rank: int,
    p: float,
    *,
    cond: float = 1.0,
    spectrum_kind: str = "linear",
    noise: float = 0.0,
    basis: str = "gaussian",
    symmetric: bool = False,
    tiles=None,
    random_state=None,
):
    """A planted matrix-completion instance.

    Parameters
    ----------
    shape, rank, cond, spectrum_kind, basis, symmetric
        See :func:`make_low_rank`.
    p : float in (0, 1]
        Sampling rate of the Bernoulli mask.
    noise : float, default 0
        Standard deviation of additive Gaussian noise, relative to the RMS
        entry of ``X*`` (``‖X*‖_F / √(n1 n2)``).
    tiles : tuple, optional
        Tile grid of the returned observations.

    Returns
    -------
    obs : Observations
    truth : LowRank

    Examples
    --------
    >>> obs, truth = make_completion((100, 80), rank=3, p=0.3, cond=10, random_state=0)
    >>> obs.shape, truth.rank
    ((100, 80), 3)
    """
    check_param("make_completion", "p", p, [Interval("real", 0, 1, "right")])
    check_param("make_completion", "noise", noise, [Interval("real", 0, None)])
    rng = resolve_rng(random_state)
    truth = make_low_rank(
        shape,
        rank,
        cond=cond,
        spectrum_kind=spectrum_kind,
        basis=basis,
        symmetric=symmetric,
        random_state=rng,
    )
    rows, cols = bernoulli_mask_coo(shape, p, rng, symmetric=symmetric)
    vals = truth.entries(rows, cols)
    if noise > 0:
        rms = np.linalg.norm(truth.s) / np.sqrt(shape[0] * shape[1])
        eps = noise * rms * rng.standard_normal(len(vals))
        if symmetric:  # keep the observations symmetric
            key = np.minimum(rows, cols) * shape[1] + np.maximum(rows, cols)
            _, inv_idx = np.unique(key, return_inverse=True)
            eps = noise * rms * rng.standard_normal(inv_idx.max() + 1)[inv_idx]
        vals = vals + eps
    obs = Observations.from_coo(rows, cols, vals, shape=tuple(shape), tiles=tiles)
    return obs, truth


# ------------------------------------------------------------------ Tucker tensors
TUCKER_CORES = ("auto", "random", "circulant")


def tucker_instance(
    shape, ranks, *, kappa: float = 1.0, core: str = "auto", basis: str = "rademacher",
    random_state=None,
) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
    """A planted Tucker tensor ``X* = S ×_1 U_1 ⋯ ×_d U_d`` (ALGORITHMS.md §7, §10).

    Parameters
    ----------
    shape : sequence of d ints
    ranks : int or sequence of d ints
        Multilinear ranks, ``r_k ≤ n_k`` and ``r_k ≤ Π_{j≠k} r_j``.
    kappa : float, default 1
        Condition number of ``M_1(S)``.
    core : {"auto", "random", "circulant"}
        The seed core, whose ``M_1`` has orthonormal rows. ``"circulant"``
        (the authors', equal ranks only): ``1/√(r^{d−2})`` where ``Σ_k j_k ≡ 0
        (mod r)``; every unfolding has orthonormal rows (disjoint supports),
        so only mode 1 is ill conditioned. ``"random"``: the rows of a Gaussian
        ``M_1`` orthonormalised; the other unfoldings then have a spread
        spectrum, which slows GD several-fold even at κ = 1 (not ScaledGD).
        ``"auto"``: circulant for equal ranks, random otherwise.
    basis : {"rademacher", "gaussian"}
        Matrices orthonormalised (QR) into the factors. Rademacher (the
        authors' ``sign(rand − 0.5)``) gives more incoherent factors
        (``μ = (n/r) max_i ‖U[i]‖²`` of 1.2–1.5 against 3–4 at n = 100, r = 5),
        on which ScaledGD needs about 10% fewer iterations.
    random_state : None, int or Generator

    Returns
    -------
    core : ndarray, shape ``ranks``
        ``c · S_seed ×_1 diag(linspace(1, 1/κ, r_1))``.
    factors : list of d ndarrays, shapes ``(n_k, r_k)``, orthonormal columns

    Notes
    -----
    ``c = √(Π n_k / r_1)``: the RMS entry of ``X*`` is 1 at κ = 1 (in
    ``[1/√3, 1]`` for any κ) and ``σ_max(M_1(X*)) = c``. Iteration counts and
    relative errors do not depend on ``c`` (the authors use ``c = 1``). The
    defaults reproduce the authors' instances: at n = 100, r = 5, p = 0.1 the
    oracle's ScaledGD reaches 1e-14 in 111–112 iterations for κ ∈ {1, 2, 5,
    10}, GD in 117 (κ = 1) and 413 (κ = 2); ``core="random",
    basis="gaussian"`` gives 126–130 and 588 / 603.

    Examples
    --------
    >>> core, factors = tucker_instance((8, 7, 6), 2, kappa=5, random_state=0)
    >>> core.shape, [u.shape for u in factors]
    ((2, 2, 2), [(8, 2), (7, 2), (6, 2)])
    """
    check_param("tucker_instance", "kappa", kappa, [Interval("real", 1, None)])
    check_param("tucker_instance", "core", core, [Options(TUCKER_CORES)])
    check_param("tucker_instance", "basis", basis, [Options(("gaussian", "rademacher"))])
    check_param("tucker_instance", "random_state", random_state, RANDOM_STATE)
    shape = tuple(int(n) for n in shape)
    d = len(shape)
    ranks = (int(ranks),) * d if np.ndim(ranks) == 0 else tuple(int(r) for r in ranks)
    R = int(np.prod(ranks))
    if d < 2 or len(ranks) != d or any(not 1 <= r <= min(n, R // r) for n, r in zip(shape, ranks)):
        raise InvalidParameterError(
            f"tucker_instance needs d >= 2 ranks with 1 <= r_k <= n_k and r_k <= prod of the "
            f"other ranks; got shape {shape} and ranks {ranks}."
        )
    equal = len(set(ranks)) == 1
    if core == "circulant" and not equal:
        raise InvalidParameterError(f"core='circulant' needs equal ranks; got {ranks}.")
    rng = resolve_rng(random_state)
    factors = []
    for n, r in zip(shape, ranks):
        G = rng.standard_normal((n, r)) if basis == "gaussian" else rng.choice([-1.0, 1.0], (n, r))
        factors.append(np.ascontiguousarray(np.linalg.qr(G)[0]))
    r1 = ranks[0]
    if core == "circulant" or (core == "auto" and equal):
        grid = np.indices(ranks).sum(axis=0)
        seed = np.where(grid % r1 == (-d) % r1, 1.0 / np.sqrt(r1 ** (d - 2)), 0.0)
    else:
        seed = fold(np.linalg.qr(rng.standard_normal((R // r1, r1)))[0].T, 0, ranks)
    scale = np.sqrt(np.prod(shape, dtype=float) / r1) * spectrum(r1, kappa)
    return np.ascontiguousarray(seed * scale.reshape((-1,) + (1,) * (d - 1))), factors


def tucker_tensor(core, factors) -> np.ndarray:
    """The dense tensor ``core ×_1 U_1 ⋯ ×_d U_d``."""
    return multi_mode_product(np.asarray(core, dtype=np.float64), factors)


def bernoulli_mask(shape, p: float, random_state=None) -> np.ndarray:
    """A dense boolean i.i.d. Bernoulli(``p``) mask of any shape."""
    check_param("bernoulli_mask", "p", p, [Interval("real", 0, 1, "both")])
    check_param("bernoulli_mask", "random_state", random_state, RANDOM_STATE)
    return resolve_rng(random_state).random(tuple(int(n) for n in shape)) < p


# ------------------------------------------------------------------ real data
#: Official GroupLens archives: name -> (url, member with the ratings, separator, header)
MOVIELENS = {
    "ml-latest-small": (
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        "ml-latest-small/ratings.csv",
        ",",
        True,
    ),
    "ml-1m": (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "ml-1m/ratings.dat",
        "::",
        False,
    ),
    "ml-25m": (
        "https://files.grouplens.org/datasets/movielens/ml-25m.zip",
        "ml-25m/ratings.csv",
        ",",
        True,
    ),
}


def data_home() -> str:
    """Where downloads are cached: ``$DSCALEDGD_DATA_HOME`` or ``~/.cache/dscaledgd``."""
    import os

    return os.environ.get(
        "DSCALEDGD_DATA_HOME", os.path.join(os.path.expanduser("~"), ".cache", "dscaledgd")
    )


def _download(url: str, dest: str) -> str:
    """Download ``url`` to ``dest`` atomically (temporary name, then rename)."""
    import os
    import urllib.request

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                fh.write(block)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ConnectionError(
            f"Could not download {url} ({exc}). Download it by hand and pass the path of the "
            "extracted folder (or of the ratings file) to load_movielens."
        ) from None
    os.replace(tmp, dest)
    return dest


def _ratings_file(name_or_path: str, download: bool) -> tuple[str, str, bool]:
    """The ratings file, its separator and whether it has a header."""
    import os
    import zipfile

    if os.path.exists(name_or_path):
        path = name_or_path
        if os.path.isdir(path):
            for fname, sep, header in (("ratings.csv", ",", True), ("ratings.dat", "::", False)):
                if os.path.exists(os.path.join(path, fname)):
                    return os.path.join(path, fname), sep, header
            raise FileNotFoundError(
                f"{path!r} has no ratings.csv or ratings.dat. Point load_movielens at a "
                "MovieLens folder or ratings file."
            )
        return (path, "::", False) if path.endswith(".dat") else (path, ",", True)
    if name_or_path not in MOVIELENS:
        raise InvalidParameterError(
            f"The 'name_or_path' parameter of load_movielens must be an existing path or one of "
            f"{sorted(MOVIELENS)}. Got {name_or_path!r}."
        )
    url, member, sep, header = MOVIELENS[name_or_path]
    target = os.path.join(data_home(), member)
    if not os.path.exists(target):
        archive = os.path.join(data_home(), os.path.basename(url))
        if not os.path.exists(archive):
            if not download:
                raise FileNotFoundError(
                    f"{name_or_path} is not in {data_home()} and download=False."
                )
            _download(url, archive)
        with zipfile.ZipFile(archive) as zf:
            zf.extract(member, data_home())
    return target, sep, header


def load_movielens(
    name_or_path: str = "ml-latest-small",
    *,
    out=None,
    overwrite=False,
    download: bool = True,
    tiles=None,
):
    """MovieLens ratings as :class:`~dscaledgd.Observations` (users × movies).

    Parameters
    ----------
    name_or_path : str
        ``"ml-latest-small"``, ``"ml-1m"`` or ``"ml-25m"`` (downloaded from
        files.grouplens.org into :func:`data_home` on first use), or a local
        MovieLens folder or ratings file (``ratings.csv`` or ``ratings.dat``).
    out : str, optional
        Zarr store to write. When omitted, the store goes to a temporary
        directory owned by the returned Observations: it is removed by
        ``obs.close()``, on leaving a ``with`` block, or when ``obs`` is
        garbage-collected.
    download : bool, default True
        Allow downloading a named data set.
    tiles : tuple, optional

    Returns
    -------
    Observations
        Rows are users, columns movies; ``obs.row_ids``/``obs.col_ids`` hold
        the original ``userId``/``movieId``.

    Notes
    -----
    MovieLens is distributed by GroupLens under their own terms (research
    use; see the README in each archive); it is never bundled with this
    package. The import streams the file with bounded memory.
    """
    import os
    import shutil
    import tempfile

    path, sep, header = _ratings_file(os.fspath(name_or_path), download)
    tmpdir = None
    if sep == "::":  # ml-1m: UserID::MovieID::Rating::Timestamp, no header
        tmpdir = tempfile.mkdtemp(prefix="dscaledgd-ml-")
        csv = os.path.join(tmpdir, "ratings.csv")
        with open(path, encoding="latin-1") as src, open(csv, "w") as dst:
            dst.write("userId,movieId,rating,timestamp\n")
            for line in src:
                dst.write(line.replace("::", ","))
        path = csv
    try:
        return Observations.from_csv(
            path, "userId", "movieId", "rating", out=out, overwrite=overwrite, tiles=tiles
        )
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _seeded_rows(seed: int, r0: int, r1: int, rank: int) -> np.ndarray:
    """Rows ``r0:r1`` of a Gaussian ``n × rank`` matrix, the same for any slicing."""
    return np.ascontiguousarray(seeded_normal_rows(seed, r0, r1, rank, 65536))


def make_completion_store(
    path,
    shape,
    rank: int,
    nnz: int,
    *,
    cond: float = 1.0,
    tiles=None,
    noise: float = 0.0,
    random_state=None,
    overwrite: bool = False,
):
    """Write a large planted completion instance straight to an Observations store.

    Memory stays bounded by one tile: the per-tile counts are drawn first
    (Binomial, so the mask is exactly Bernoulli with ``p = nnz / (n1 n2)``),
    then each tile's positions, values and banded order are generated and
    written in turn. The planted factors are Gaussian, ``U = G₁/√n1`` and
    ``V = G₂ diag(s)/√n2`` with ``s = linspace(1, 1/cond, rank)``, generated
    row-chunk by row-chunk from the seed (nearly orthogonal at these sizes;
    use :func:`make_completion` for exactly orthonormal small instances).

    Returns
    -------
    Observations
        Store-backed; ``obs.attrs["planted"]`` records the seeds and spectrum.
    """
    import os

    import zarr

    from .storage import layout
    from .storage.coo import check_tiles

    check_param("make_completion_store", "random_state", random_state, RANDOM_STATE)
    rng = resolve_rng(random_state)
    n1, n2 = int(shape[0]), int(shape[1])
    p = nnz / (n1 * n2)
    check_param("make_completion_store", "nnz", p, [Interval("real", 0, 1, "right")])
    a, b = check_tiles(tiles, (n1, n2), nnz)
    rb = np.linspace(0, n1, a + 1).astype(np.int64)
    cb = np.linspace(0, n2, b + 1).astype(np.int64)
    cells = np.diff(rb)[:, None] * np.diff(cb)[None, :]
    counts = rng.binomial(cells.ravel(), p)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(ptr[-1])
    seed_u, seed_v = (int(x) for x in rng.integers(2**62, size=2))
    s = spectrum(rank, cond)
    rms = np.linalg.norm(s) / np.sqrt(n1 * n2)
    path = os.fspath(path)
    chunk = max(1, min(layout.CHUNK, total))
    band = layout.band_width(total, (n1, n2))
    with layout.atomic_dir(path, overwrite=overwrite) as tmp:
        g = zarr.open_group(tmp, mode="w")
        arrs = layout.create_entry_arrays(g, total, chunk=chunk)
        row_counts = np.zeros(n1, np.int64)
        col_counts = np.zeros(n2, np.int64)
        sumsq = 0.0
        for t in range(a * b):
            ia, ib = divmod(t, b)
            h, w = int(rb[ia + 1] - rb[ia]), int(cb[ib + 1] - cb[ib])
            m = int(counts[t])
            trng = np.random.default_rng(np.random.SeedSequence(seed_u ^ seed_v, spawn_key=(t,)))
            lin = np.empty(0, np.int64)
            while len(lin) < m:  # uniform subset of size m: unique draws, then subsample
                more = trng.integers(0, h * w, size=int(1.05 * (m - len(lin))) + 16)
                lin = np.unique(np.concatenate([lin, more]))
            lin = lin[np.sort(trng.choice(len(lin), size=m, replace=False))]
            lr = (lin // w).astype(np.int32)
            lc = (lin % w).astype(np.int32)
            order = layout.blocked_order(np.zeros(m, np.int64), lr, lc, band)
            lr, lc = lr[order], lc[order]
            U = _seeded_rows(seed_u, int(rb[ia]), int(rb[ia + 1]), rank) / np.sqrt(n1)
            V = _seeded_rows(seed_v, int(cb[ib]), int(cb[ib + 1]), rank) * s / np.sqrt(n2)
            vals = sddmm(lr, lc, U, V)
            if noise > 0:
                vals += noise * rms * trng.standard_normal(m)
            arrs["rows"][ptr[t] : ptr[t + 1]] = lr
            arrs["cols"][ptr[t] : ptr[t + 1]] = lc
            arrs["values"][ptr[t] : ptr[t + 1]] = vals
            row_counts[rb[ia] : rb[ia + 1]] += np.bincount(lr, minlength=h)
            col_counts[cb[ib] : cb[ib + 1]] += np.bincount(lc, minlength=w)
            sumsq += float(vals @ vals)
        meta = Observations(
            shape=(n1, n2),
            row_bounds=rb,
            col_bounds=cb,
            tile_ptr=ptr,
            rows=None,
            cols=None,
            values=None,
            row_counts=row_counts,
            col_counts=col_counts,
            value_norm2=sumsq,
            attrs={
                "planted": {
                    "rank": rank,
                    "cond": cond,
                    "seed_u": seed_u,
                    "seed_v": seed_v,
                    "noise": noise,
                    "generator": "make_completion_store",
                }
            },
        )
        for name in ("tile_ptr", "row_counts", "col_counts"):
            layout.write_small_array(g, name, getattr(meta, name))
        g.attrs.update(meta._store_attrs())
    return Observations.open_zarr(path)
