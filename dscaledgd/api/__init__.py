"""Public functions: validation → engine → solver.

``complete`` (matrix completion) lives in :mod:`.completion`, ``sense``
(matrix sensing, robust l1 recovery) in :mod:`.sensing`, ``rpca`` in
:mod:`.rpca`, ``tucker_complete`` (Tucker tensor completion) in
:mod:`.tucker` and ``tensor_rpca`` in :mod:`.tensor_rpca`; :mod:`._core` holds what
they share (the solve driver).
"""

from __future__ import annotations

from ._core import INITS, LOSSES, METHODS
from .completion import complete, complete_oracle, reference_copy
from .rpca import rpca
from .scaled_sgd import scaled_sgd
from .sensing import sense
from .tensor_rpca import tensor_rpca
from .tucker import tucker_complete

__all__ = [
    "complete",
    "complete_oracle",
    "reference_copy",
    "sense",
    "rpca",
    "tucker_complete",
    "tensor_rpca",
    "scaled_sgd",
    "METHODS",
    "LOSSES",
    "INITS",
]
