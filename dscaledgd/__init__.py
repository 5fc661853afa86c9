"""dscaledgd: distributed scaled gradient methods for low-rank recovery.

ScaledGD and its family on Dask, with observations and factors in Zarr.
See the README for a tour and ``docs/design.md`` for the architecture.
"""

from __future__ import annotations

import logging

from . import datasets, exceptions, model_selection
from ._version import __version__
from .api import complete, rpca, scaled_sgd, sense, tensor_rpca, tucker_complete
from .estimators import (
    MatrixCompletion,
    MatrixSensing,
    RobustPCA,
    ScaledSGD,
    TensorRobustPCA,
    TuckerCompletion,
)
from .exceptions import *  # noqa: F403 - the errors and warnings (exceptions.__all__)
from .problems.sensing import GaussianSensing, QuadraticSensing
from .result import IterationState, SolveResult, load_result
from .storage.observations import Observations
from .storage.tensors import TensorObservations

logging.getLogger("dscaledgd").addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "Observations",
    "TensorObservations",
    "complete",
    "sense",
    "rpca",
    "tucker_complete",
    "tensor_rpca",
    "scaled_sgd",
    "GaussianSensing",
    "QuadraticSensing",
    "MatrixCompletion",
    "MatrixSensing",
    "RobustPCA",
    "TuckerCompletion",
    "TensorRobustPCA",
    "ScaledSGD",
    "SolveResult",
    "IterationState",
    "load_result",
    "datasets",
    "model_selection",
]
__all__ += exceptions.__all__
