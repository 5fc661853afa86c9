"""Is someone watching? A terminal on stderr, or a Jupyter kernel.

Decides whether a run shows a progress bar and whether starting an embedded
cluster prints its dashboard link (both only when someone can see them).
"""

from __future__ import annotations

import sys

__all__ = ["in_notebook", "interactive"]


def in_notebook() -> bool:
    """True inside a Jupyter (ZMQ) kernel."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001 - any IPython oddity means "not a notebook"
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def interactive() -> bool:
    """A Jupyter kernel, or stderr is a terminal."""
    if in_notebook():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # pragma: no cover
        return False
