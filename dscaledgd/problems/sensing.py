"""Matrix sensing operators: what is measured, block by block.

A sensing operator maps a matrix ``X`` (``n1 × n2``) to ``m`` measurements.
Operators are cut into **row blocks** of measurements; a block's data is
produced by :meth:`block` (generated from the seed for the random operators,
so it never needs to be stored or shipped) and used by the pure functions
``forward_block`` / ``adjoint_block``.

Linear sensing (ALGORITHMS.md §3): ``y_k = <A_k, X>``, with
``A(X) = A vec(X)`` (row-major ``vec``) and ``A*(z) = Σ z_k A_k``.

Quadratic sensing (ALGORITHMS.md §4): ``y_k = ‖a_kᵀ L‖² = <a_k a_kᵀ, L Lᵀ>``,
a PSD model; its adjoint is ``A*(z) = Σ z_k a_k a_kᵀ``.

No dask import here.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._random import seeded_normal_rows
from ..exceptions import InputDataError, InvalidParameterError
from .spec import ProblemSpec

__all__ = [
    "GaussianSensing",
    "QuadraticSensing",
    "ArrayOperator",
    "as_operator",
    "forward_block",
    "adjoint_block",
    "l1_error_estimate",
]


def _scales(p: float, symmetric: bool, loss: str):
    """``f = ½‖A(X) − y‖²`` (l2, ¼ for ``X = L Lᵀ``) or ``‖A(X) − y‖₁`` (l1)."""
    if loss != "l2":
        return 1.0, 1.0
    return (0.5, 0.25) if symmetric else (1.0, 0.5)


#: the constants of matrix sensing: η = 0.5 (ALGORITHMS.md §3), λ at half the noise
#: level (``api._core.default_damping``), one adjoint for the spectral estimate
SPEC = ProblemSpec(
    "sensing",
    default_eta=0.5,
    damping_fraction=0.5,
    scales=_scales,
    spectral_passes=lambda q: 1,
)

#: Measurements per independently seeded chunk: any blocking gives the same operator.
_SEED_ROWS = 256


def _block_bounds(m: int, chunks) -> np.ndarray:
    if chunks is None:
        target = max(_SEED_ROWS, min(m, 4096))
        nb = max(1, -(-m // target))
    elif isinstance(chunks, numbers.Integral) and chunks >= 1:
        nb = max(1, -(-m // int(chunks)))
    else:
        raise InvalidParameterError(
            f"The 'chunks' parameter must be None or a positive int (measurements per block). "
            f"Got {chunks!r}."
        )
    return np.linspace(0, m, nb + 1).astype(np.int64)


class _Operator:
    kind = "linear"
    shape: tuple[int, int]
    m: int
    bounds: np.ndarray

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) - 1

    @property
    def nbytes(self) -> int:
        width = self.shape[0] * self.shape[1] if self.kind == "linear" else self.shape[0]
        return 8 * self.m * width

    def forward(self, X) -> np.ndarray:
        """The measurements ``A(X)`` of a matrix ``X`` (``n1 × n2``).

        Quadratic sensing measures ``y_k = a_kᵀ X a_k``; it also takes the
        factor ``L`` (``n × r`` with ``r < n``) of a PSD ``X = L Lᵀ``, for which
        ``y_k = ‖a_kᵀ L‖²`` without forming ``X``.
        """
        X = np.asarray(X, dtype=np.float64)
        n1, n2 = self.shape
        factor = self.kind == "quadratic" and X.ndim == 2 and X.shape[0] == n1 and X.shape[1] < n1
        if X.shape != (n1, n2) and not factor:
            raise InputDataError(
                f"forward needs a matrix of shape {(n1, n2)}"
                + (f" or a factor of shape ({n1}, r < {n1})" if self.kind == "quadratic" else "")
                + f"; got shape {X.shape}."
            )
        out = []
        for b in range(self.n_blocks):
            data = self.block(b)
            out.append(measure_block(self.kind, data, X))
        return np.concatenate(out)

    def adjoint(self, z) -> np.ndarray:
        """``A*(z)`` as an ``n1 × n2`` matrix."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape != (self.m,):
            raise InputDataError(f"adjoint needs a vector of length m={self.m}; got {z.shape}.")
        out = np.zeros(self.shape)
        for b in range(self.n_blocks):
            out += adjoint_block(
                self.kind, self.block(b), z[self.bounds[b] : self.bounds[b + 1]], self.shape
            )
        return out


class GaussianSensing(_Operator):
    """Gaussian linear measurements ``y_k = <A_k, X>``, ``A_k`` i.i.d. ``N(0, 1/m)``.

    Parameters
    ----------
    shape : (n1, n2)
    m : int
        Number of measurements.
    random_state : None, int or Generator
    chunks : int, optional
        Measurements per block (the unit of work and of memory:
        ``8 · chunks · n1 · n2`` bytes). The operator does not depend on it.

    Notes
    -----
    ``A`` is ``m × n1 n2`` and never stored: each block is generated from the
    seed where it is used (per 256-measurement seed chunk).
    """

    def __init__(self, shape, m: int, random_state=None, chunks=None):
        from .._validation import resolve_rng

        self.shape = _check_shape(shape)
        self.m = _check_m(m)
        self.seed = int(resolve_rng(random_state).integers(2**62))
        self.bounds = _block_bounds(self.m, chunks)

    def block(self, b: int) -> np.ndarray:
        r0, r1 = int(self.bounds[b]), int(self.bounds[b + 1])
        n = self.shape[0] * self.shape[1]
        return seeded_normal_rows(self.seed, r0, r1, n, _SEED_ROWS) * (1.0 / np.sqrt(self.m))

    def __repr__(self) -> str:
        return f"GaussianSensing(shape={self.shape}, m={self.m}, blocks={self.n_blocks})"


class QuadraticSensing(_Operator):
    """Quadratic measurements ``y_k = ‖a_kᵀ L‖²`` of a PSD ``X = L Lᵀ``; ``a_k ~ N(0, I_n)``.

    Blocks are the ``m_b × n`` rows of ``a``, generated from the seed.
    """

    kind = "quadratic"

    def __init__(self, n: int, m: int, random_state=None, chunks=None):
        from .._validation import resolve_rng

        n = _check_shape((n, n))[0]
        self.shape = (n, n)
        self.m = _check_m(m)
        self.seed = int(resolve_rng(random_state).integers(2**62))
        self.bounds = _block_bounds(self.m, chunks)

    def block(self, b: int) -> np.ndarray:
        r0, r1 = int(self.bounds[b]), int(self.bounds[b + 1])
        return seeded_normal_rows(self.seed, r0, r1, self.shape[0], _SEED_ROWS)

    def __repr__(self) -> str:
        return f"QuadraticSensing(n={self.shape[0]}, m={self.m}, blocks={self.n_blocks})"


class ArrayOperator(_Operator):
    """A user-supplied measurement matrix ``A`` (``m × n1 n2``): NumPy, Dask or Zarr.

    Blocks follow ``A``'s row chunks (Dask/Zarr) or ``chunks``.
    """

    def __init__(self, A, shape, chunks=None):
        self.shape = _check_shape(shape)
        if len(getattr(A, "shape", ())) != 2 or A.shape[1] != self.shape[0] * self.shape[1]:
            raise InputDataError(
                f"The measurement array must have shape (m, n1*n2) = (m, "
                f"{self.shape[0] * self.shape[1]}) for shape {self.shape}; got "
                f"{getattr(A, 'shape', None)}."
            )
        self.A = A
        self.m = int(A.shape[0])
        if chunks is None and hasattr(A, "chunks") and isinstance(A.chunks[0], tuple):
            self.bounds = np.concatenate([[0], np.cumsum(A.chunks[0])]).astype(np.int64)
        elif chunks is None and hasattr(A, "chunks"):
            self.bounds = _block_bounds(self.m, int(A.chunks[0]))
        else:
            self.bounds = _block_bounds(self.m, chunks)

    def block(self, b: int) -> np.ndarray:
        blk = self.A[int(self.bounds[b]) : int(self.bounds[b + 1])]
        blk = blk.compute() if hasattr(blk, "compute") else blk
        return np.asarray(blk, dtype=np.float64)

    def __repr__(self) -> str:
        return f"ArrayOperator(shape={self.shape}, m={self.m}, blocks={self.n_blocks})"


def as_operator(operator, shape=None):
    """An operator object, or a measurement array wrapped as :class:`ArrayOperator`."""
    if isinstance(operator, _Operator):
        return operator
    if hasattr(operator, "shape") and len(operator.shape) == 2:
        if shape is None:
            raise InvalidParameterError(
                "A measurement array needs the matrix shape: pass shape=(n1, n2)."
            )
        return ArrayOperator(operator, shape)
    raise InvalidParameterError(
        "The 'operator' parameter must be a GaussianSensing, QuadraticSensing or an (m, n1*n2) "
        f"measurement array. Got {type(operator).__name__}."
    )


# ---------------------------------------------------------------- per block
def measure_block(kind: str, data: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Measurements of a given matrix ``X``, or of ``L Lᵀ`` given a factor ``L`` (quadratic)."""
    if kind == "quadratic":
        P = data @ X
        if X.shape[0] == X.shape[1]:  # the matrix: a_kᵀ X a_k
            return np.einsum("ij,ij->i", P, data)
        return np.einsum("ij,ij->i", P, P)  # the factor L: ‖a_kᵀ L‖²
    return data @ X.ravel()


def forward_block(kind: str, data: np.ndarray, L: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Measurements of ``X = L Rᵀ`` (linear) or ``L Lᵀ`` (quadratic) for one block."""
    if kind == "quadratic":
        P = data @ L
        return np.einsum("ij,ij->i", P, P)
    return data @ (L @ R.T).ravel()


def adjoint_block(kind: str, data: np.ndarray, z: np.ndarray, shape) -> np.ndarray:
    """``Σ_k z_k A_k`` over one block, as an ``n1 × n2`` matrix."""
    if kind == "quadratic":
        return data.T @ (z[:, None] * data)
    return (data.T @ z).reshape(shape)


def l1_error_estimate(residual: np.ndarray, y: np.ndarray, c: float = 3.0) -> float:
    """A relative error estimate of an l1 fit that needs no ground truth.

    The mean ``|r_k|`` over the residuals with ``|r_k| ≤ c · median|r|``, over
    the mean ``|y_k|`` over ``|y_k| ≤ c · median|y|``. With outliers larger
    than the clean residuals (and fewer than half), the median rule keeps the
    clean measurements, where ``r_k = <A_k, X − X*>``: for a Gaussian operator
    both means are those of the same truncated normal, so the ratio is about
    ``‖X − X*‖_F / ‖X*‖_F``; a fit that is exact on most measurements gives 0.
    With dense noise it is the noise level instead. It tells a converged run
    from one whose geometric schedule decayed too early.
    """

    def trimmed_mean(v):
        a = np.abs(v)
        kept = a[a <= c * np.median(a)]
        return float(kept.mean()) if len(kept) else 0.0

    den = trimmed_mean(y)
    return trimmed_mean(residual) / den if den > 0 else float("nan")


def _check_shape(shape) -> tuple[int, int]:
    ok = (
        isinstance(shape, tuple | list)
        and len(shape) == 2
        and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape
        )
    )
    if not ok:
        raise InvalidParameterError(
            f"The 'shape' parameter must be a pair of positive ints (n1, n2). Got {shape!r}."
        )
    return int(shape[0]), int(shape[1])


def _check_m(m) -> int:
    if not isinstance(m, numbers.Integral) or isinstance(m, bool) or m < 1:
        raise InvalidParameterError(
            f"The 'm' parameter (number of measurements) must be a positive int. Got {m!r}."
        )
    return int(m)
