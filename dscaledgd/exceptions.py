"""Exceptions and warnings raised by dscaledgd.

Every error message says which parameter or datum is wrong, what was seen,
and how to fix it (DESIGN.md §6).
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "InvalidParameterError",
    "InputDataError",
    "ConvergenceWarning",
    "DataWarning",
    "DivergenceError",
    "NotFittedError",
    "ClusterError",
    "ClusterWarning",
]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by the caller of this function
    that points at the first frame outside dscaledgd: the user's own line, however
    deep in the package the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


class InvalidParameterError(ValueError, TypeError):
    """A function or estimator parameter has an invalid type or value.

    Inherits from both ``ValueError`` and ``TypeError`` so that callers who
    catch either (scikit-learn convention) keep working.
    """


class InputDataError(ValueError):
    """The data (observations, a store, a file) is malformed or inconsistent."""


class DivergenceError(RuntimeError):
    """The iteration diverged and could not be recovered by the step safeguard."""


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit`` (scikit-learn's convention: both bases)."""


class ClusterError(RuntimeError):
    """The Dask cluster failed under the run: a lost worker whose data could not be
    re-created, an unreachable, hung or vanished scheduler. The message names the
    scheduler's address and what was seen."""


class ClusterWarning(UserWarning):
    """The Dask cluster is in a state that stalls the run, e.g. a worker paused because
    its memory passed Dask's pause threshold. The message names the worker and the fix."""


class ConvergenceWarning(UserWarning):
    """A solver stopped before meeting its tolerance (``max_iter``, divergence)."""


class DataWarning(UserWarning):
    """The data is valid but has a property that changes the result.

    For example, rows or columns with no observations.
    """
