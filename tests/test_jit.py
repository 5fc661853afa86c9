"""dscaledgd._jit: ``import dscaledgd`` survives an unwritable numba cache (issue 12)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba.core import caching

from dscaledgd import _jit


@pytest.fixture
def no_locators(monkeypatch, tmp_path):
    """Numba finds no writable cache location, as for a read-only install without HOME."""
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(_jit.tempfile, "gettempdir", lambda: str(tmp_path))
    return monkeypatch


def _kernel(x):
    return x.sum() * 2.0


def test_plain_numba_fails_without_locator(no_locators):
    no_locators.setattr(caching.CacheImpl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator available"):
        numba.njit(cache=True)(_kernel)


def test_falls_back_to_private_cache_dir(no_locators, tmp_path):
    # only the NUMBA_CACHE_DIR locator exists: it works once the fallback sets the dir
    no_locators.setattr(caching.CacheImpl, "_locator_classes", [caching.UserProvidedCacheLocator])
    f = _jit.njit(cache=True)(_kernel)
    assert f(np.arange(4.0)) == 12.0
    assert numba.config.CACHE_DIR.startswith(str(tmp_path))
    assert any((tmp_path).rglob("*.nbi")), "the kernel was not cached in the fallback dir"


def test_compiles_without_cache_when_nothing_is_writable(no_locators):
    no_locators.setattr(caching.CacheImpl, "_locator_classes", [])
    f = _jit.njit(nogil=True, cache=True)(_kernel)
    assert f(np.arange(3.0)) == 6.0
