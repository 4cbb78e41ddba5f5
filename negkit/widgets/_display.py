"""Small display helpers shared by the explorer views (HTML snippets, figures into an Output).

Kept apart from the views so that every view builds its HTML the same way and the
plain-Python state objects never import ipywidgets.
"""
from __future__ import annotations

import html
from typing import Any, Iterable

import matplotlib.pyplot as plt

__all__ = ["message_html", "numbers_html", "show_figure"]

_COLORS = {"info": "#31708f", "warning": "#8a6d3b", "error": "#a94442"}


def message_html(text: str, kind: str = "warning") -> str:
    """An HTML box telling the user what is missing and what to do (shown in place of a view)."""
    color = _COLORS.get(kind, _COLORS["warning"])
    return (f'<div class="negkit-message negkit-{kind}" style="border-left:4px solid {color};'
            f'padding:4px 8px;color:{color}">{html.escape(text)}</div>')


def numbers_html(rows: Iterable[tuple[str, Any]], caption: str = "") -> str:
    """A two-column HTML table of ``(label, value)`` rows; floats are shown with two decimals."""
    cells = []
    for label, value in rows:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        cells.append(f'<tr><td style="padding:0 12px 0 0">{html.escape(label)}</td>'
                     f'<td style="text-align:right"><b>{html.escape(shown)}</b></td></tr>')
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table class='negkit-table'>{cap}{''.join(cells)}</table>"


def show_figure(output: Any, fig: Any | None) -> None:
    """Replace the content of an ``ipywidgets.Output`` with ``fig`` (and close the figure).

    Outside IPython (plain-Python tests) there is no display to send the figure to;
    the figure is still built by the caller, so its code runs, and is closed here.
    """
    from IPython import get_ipython
    from IPython.display import display

    if get_ipython() is not None:
        with output:
            output.clear_output(wait=True)
            if fig is not None:
                display(fig)
    if fig is not None:
        plt.close(fig)
