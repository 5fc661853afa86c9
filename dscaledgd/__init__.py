"""dscaledgd: distributed scaled gradient methods for low-rank recovery.

ScaledGD and its family on Dask, with observations and factors in Zarr.
See the README for a tour and ``docs/design.md`` for the architecture.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING

from . import exceptions
from ._version import __version__
from .exceptions import *  # noqa: F403 - the errors and warnings (exceptions.__all__)

logging.getLogger("dscaledgd").addHandler(logging.NullHandler())

#: the public names and the submodule that defines each, imported on first use (PEP 562,
#: as SciPy and scikit-image do): ``import dscaledgd`` loads neither Dask nor Numba,
#: which also keeps a spawned worker's start short when a script imports it at the top
#: (multiprocessing's spawn re-imports the script in every worker process)
_FUNCTIONS = ("complete", "sense", "rpca", "tucker_complete", "tensor_rpca", "scaled_sgd")
_ESTIMATORS = ("MatrixCompletion", "MatrixSensing", "RobustPCA", "TuckerCompletion",
               "TensorRobustPCA", "ScaledSGD")  # fmt: skip
_LAZY = {
    **dict.fromkeys(_FUNCTIONS, ".api"),
    **dict.fromkeys(_ESTIMATORS, ".estimators"),
    "GaussianSensing": ".problems.sensing",
    "QuadraticSensing": ".problems.sensing",
    "IterationState": ".result",
    "SolveResult": ".result",
    "load_result": ".result",
    "Observations": ".storage.observations",
    "TensorObservations": ".storage.tensors",
}


def __getattr__(name: str):
    """A public name or a submodule (``dscaledgd.datasets``, ``dscaledgd.engine``, ...),
    imported the first time it is asked for."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list:
    """The public API (``__all__``) and the module's dunders: not the helpers this module
    imports (``importlib``, ``logging``, ``TYPE_CHECKING``, ``annotations``) nor the
    submodules loaded so far."""
    dunders = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    return sorted(dunders | set(__all__))


if TYPE_CHECKING:  # what static analysis and IDEs see
    from . import datasets, model_selection
    from .api import complete, rpca, scaled_sgd, sense, tensor_rpca, tucker_complete
    from .estimators import (
        MatrixCompletion,
        MatrixSensing,
        RobustPCA,
        ScaledSGD,
        TensorRobustPCA,
        TuckerCompletion,
    )
    from .problems.sensing import GaussianSensing, QuadraticSensing
    from .result import IterationState, SolveResult, load_result
    from .storage.observations import Observations
    from .storage.tensors import TensorObservations

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
