"""The HTML view of a :class:`~dscaledgd.result.SolveResult` in Jupyter (``_repr_html_``).

Plain HTML and an inline SVG loss curve: no matplotlib, no JavaScript, nothing
computed or gathered (shapes and chunks come from the dask arrays' metadata).
"""

from __future__ import annotations

import html
import math

import numpy as np

__all__ = ["result_html", "loss_curve_svg"]


def loss_curve_svg(values, *, width: int = 220, height: int = 60, mark: int | None = None) -> str:
    """An inline SVG of ``log10(values)`` against the iteration (empty if nothing to draw).

    ``mark``: the iteration to mark with a dot (the returned iterate).
    """
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v) & (v > 0)
    if keep.sum() < 2:
        return ""
    x = np.flatnonzero(keep).astype(np.float64)
    y = np.log10(v[keep])
    lo, hi = float(y.min()), float(y.max())
    span_y = hi - lo or 1.0
    span_x = float(x.max() - x.min()) or 1.0
    pad = 4

    def px(i, val):
        return (
            pad + (i - x.min()) / span_x * (width - 2 * pad),
            pad + (hi - val) / span_y * (height - 2 * pad),
        )

    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(i, val) for i, val in zip(x, y)))
    dot = ""
    if mark is not None and 0 <= mark < len(v) and keep[mark]:
        a, b = px(float(mark), math.log10(v[mark]))
        dot = f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="#d62728"/>'
    title = f"loss, log scale: {10**hi:.3g} to {10**lo:.3g}"
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>{dot}</svg>'
    )


def _chunks(F) -> str:
    chunks = getattr(F, "chunks", None)
    if chunks is None:
        return ""
    rows = chunks[0]
    if len(rows) <= 4:
        return f"row chunks {tuple(int(r) for r in rows)}"
    return f"{len(rows)} row chunks of ≤ {max(rows)}"


def result_html(res) -> str:
    """The HTML table behind ``SolveResult._repr_html_``."""
    fin = res.final
    rows = [("status", res.status), ("iterations", res.n_iter)]
    if res.best_iteration != res.n_iter:
        rows.append(("returned iterate", res.best_iteration))
    for key in ("loss", "residual", "validation"):
        if key in fin and math.isfinite(fin[key]):
            rows.append((f"final {key}", f"{fin[key]:.4g}"))
    if res.message:
        rows.append(("message", res.message))
    model = res.model
    core = getattr(model, "core", None)
    if core is not None:
        rows.append(("core", f"{tuple(np.shape(core))} (NumPy)"))
    for k, F in enumerate(res.factors):
        rows.append((f"factor {k}", f"{tuple(F.shape)}, {_chunks(F)}"))
    sparse = getattr(model, "sparse", None)
    if sparse is not None:
        rows.append(("sparse part", f"{tuple(sparse.shape)}"))
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(a))}</th>"
        f"<td style='text-align:left'>{html.escape(str(b))}</td></tr>"
        for a, b in rows
    )
    curve = loss_curve_svg(res.history.get("loss", []), mark=res.best_iteration)
    return f"<div><strong>SolveResult</strong><table>{body}</table>{curve}</div>"
