"""Numba's ``njit`` with on-disk caching when the cache can be written.

``@njit(cache=True)`` raises ``RuntimeError: cannot cache function ...: no
locator available`` at *import* time when neither the package's
``__pycache__`` nor the user's cache directory is writable: a read-only
install run as an arbitrary UID without a writable HOME, as Kubernetes
distributions run containers. :func:`njit` then falls back to a private
cache directory under the system temporary directory (``NUMBA_CACHE_DIR``
semantics), and, should even that fail, compiles without caching. Either
way ``import dscaledgd`` works; only the first call of each kernel pays the
compile time again.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numba

__all__ = ["njit"]

logger = logging.getLogger("dscaledgd")


def _fallback_cache_dir() -> str | None:
    """A writable private cache directory under the temp dir, or ``None``."""
    try:
        uid = os.getuid()
    except AttributeError:  # pragma: no cover - not POSIX
        uid = 0
    path = os.path.join(tempfile.gettempdir(), f"dscaledgd-numba-cache-{uid}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def njit(*args, **kwargs):
    """``numba.njit`` whose ``cache=True`` never fails at decoration time."""
    if args and callable(args[0]):  # bare @njit
        return njit(**kwargs)(args[0])

    def decorate(fn):
        try:
            return numba.njit(*args, **kwargs)(fn)
        except RuntimeError as exc:
            if not kwargs.get("cache") or "cannot cache" not in str(exc):
                raise
        cache_dir = _fallback_cache_dir()
        if cache_dir is not None and not numba.config.CACHE_DIR:
            numba.config.CACHE_DIR = cache_dir
            logger.info("numba cache not writable; caching in %s", cache_dir)
            try:
                return numba.njit(*args, **kwargs)(fn)
            except RuntimeError as exc:
                if "cannot cache" not in str(exc):
                    raise
        logger.info("numba cache not writable; compiling %s without cache", fn)
        return numba.njit(*args, **{**kwargs, "cache": False})(fn)

    return decorate
