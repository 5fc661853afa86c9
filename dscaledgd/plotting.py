"""Convergence plots (matplotlib is optional: ``pip install dscaledgd[plot]``)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_history"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "Plotting needs matplotlib. Install it with `pip install dscaledgd[plot]`."
        ) from None
    return plt


def plot_history(res, path: str, *, obs=None, title: str | None = None) -> str:
    """Write a PNG of the training (and validation) RMSE per iteration.

    The training RMSE is ``residual · ‖y‖ / √nnz`` (``obs`` gives ``‖y‖`` and
    ``nnz``; without it the relative residual is plotted).
    """
    plt = _pyplot()
    h = res.history
    it = np.arange(len(h["residual"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if obs is not None:
        train = h["residual"] * np.sqrt(obs.value_norm2 / obs.nnz)
        ax.plot(it, train, label="train RMSE")
        ylabel = "RMSE"
    else:
        ax.semilogy(it, h["residual"], label="relative residual")
        ylabel = "relative residual"
    if "validation" in h:
        ax.plot(it, h["validation"], label="validation RMSE")
        best = int(np.argmin(h["validation"]))
        ax.axvline(best, color="grey", ls=":", lw=1, label=f"best (iteration {best})")
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{res.params.get('method', '')} rank {res.params.get('rank', '')}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
