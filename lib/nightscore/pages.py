"""Pieces of the self-contained HTML reports (monitoring, back-test, champion/challenger): one
style sheet, plots as data-URI PNGs, escaped tables, strict-JSON values. No external links, so a
report opens from a bucket or an e-mail attachment the same way."""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LEVEL_COLOURS = {"ok": "#2e7d32", "warn": "#ef8f00", "alert": "#c62828"}


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1000px;
color:#212121;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.3rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.status{display:inline-block;color:#fff;font-weight:bold;padding:.2rem .8rem;border-radius:4px;font-size:1.1rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
td.warn{background:#fff3e0}td.alert{background:#ffebee}.note{color:#616161;font-size:.9rem}
img{max-width:100%;display:block;margin:.5rem 0}
"""


def jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become None so report.json is strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def png(fig: Figure) -> str:
    """Base64 PNG of a figure, rendered with Agg (no display, no pyplot global state)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """HTML table; each cell is (text, css class). Text is escaped here, once."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{html.escape(v)}</td>' if c else f"<td>{html.escape(v)}</td>"
                                    for v, c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'
