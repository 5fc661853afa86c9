"""The cluster cases of ``shared/reliability/bad-inputs.md`` (more in tests/faults/)."""

from __future__ import annotations

import pytest

import dscaledgd as dsg


@pytest.mark.parametrize("case", ["complete_address_garbage"])
def test_garbage_address_is_refused_naming_the_parameter(case):
    obs = dsg.Observations.from_coo([0, 1, 2], [1, 0, 2], [1.0, 2.0, 3.0], shape=(3, 3))
    with pytest.raises(dsg.InvalidParameterError, match=r"'address' parameter .*'not an address'"):
        dsg.complete(obs, 1, address="not an address")
