"""dscaledgd: distributed scaled gradient methods for low-rank recovery.

ScaledGD and its family on Dask, with observations and factors in Zarr.
See the README for a tour and ``docs/design.md`` for the architecture.
"""

from __future__ import annotations

import logging

from . import datasets
from ._version import __version__
from .api import complete, rpca, sense
from .estimators import MatrixCompletion, MatrixSensing, RobustPCA
from .exceptions import (
    ClusterError,
    ConvergenceWarning,
    DataWarning,
    DivergenceError,
    InputDataError,
    InvalidParameterError,
    NotFittedError,
)
from .problems.sensing import GaussianSensing, QuadraticSensing
from .result import IterationState, SolveResult, load_result
from .storage.observations import Observations

logging.getLogger("dscaledgd").addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "Observations",
    "complete",
    "sense",
    "rpca",
    "GaussianSensing",
    "QuadraticSensing",
    "MatrixCompletion",
    "MatrixSensing",
    "RobustPCA",
    "SolveResult",
    "IterationState",
    "load_result",
    "datasets",
    "InvalidParameterError",
    "InputDataError",
    "ConvergenceWarning",
    "DataWarning",
    "DivergenceError",
    "NotFittedError",
    "ClusterError",
]
