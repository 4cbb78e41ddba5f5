"""The thin ipywidgets layer over the view states.

Each view owns its controls, a ``numbers`` HTML table, a ``message`` HTML box and an
``Output`` holding the figure. Controls only call the state's setters and then
:meth:`refresh`; all logic lives in the state objects, which tests drive directly.
A failure while refreshing is shown in the message box (and logged), never raised into
the notebook, so a half-finished results folder cannot break the explorer.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import ipywidgets as w
import pandas as pd

from negkit.plotting.consensus import network_order
from negkit.plotting.style import label
from negkit.widgets._display import message_html, numbers_html, show_figure
from negkit.widgets.consensus import ConsensusState
from negkit.widgets.forget import ForgetVectorState
from negkit.widgets.negation import NegationState, RecordedCurves

__all__ = ["NegationView", "ConsensusView", "ForgetVectorView", "explorer"]

log = logging.getLogger(__name__)

# Header and cells padded apart, numbers right-aligned, so column names stay readable side by side.
_TABLE_CSS = ("<style>.negkit-layer-table th, .negkit-layer-table td {padding: 2px 12px 2px 0; text-align: right;"
              " white-space: nowrap} .negkit-layer-table th:first-child, .negkit-layer-table td:first-child "
              "{text-align: left}</style>")


class _View:
    """Shared plumbing: numbers/message/plot widgets, refresh with in-place errors."""

    css = "negkit-view"

    def _init_outputs(self) -> None:
        self.numbers = w.HTML()
        self.numbers.add_class("negkit-numbers")
        self.message = w.HTML()
        self.message.add_class("negkit-message-box")
        self.plot = w.Output()
        self.draw = True  # set False to skip figures (e.g. scripted use)

    def refresh(self) -> None:
        """Recompute the numbers, the message and the figure from the state."""
        try:
            msg = self.state.message if hasattr(self.state, "message") else None
            self.message.value = message_html(msg) if msg else ""
            self.numbers.value = numbers_html(self.state.numbers())
            if self.draw:
                show_figure(self.plot, self.state.figure())
        except Exception as err:  # noqa: BLE001 - shown in place, the notebook keeps working
            log.exception("explorer view failed to refresh")
            self.message.value = message_html(f"{type(err).__name__}: {err}", kind="error")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _as_source(source: Any, threshold: float) -> Any:
    """Results folders, logs and tables become RecordedCurves; sources pass through."""
    if isinstance(source, (str, os.PathLike, pd.DataFrame)):
        return RecordedCurves(source, threshold=threshold)
    return source


class NegationView(_View):
    """Negation view: run, method, pool member, λ slider, numbers and the λ curve.

    Args:
        source: A results folder / ``.jsonl`` file / DataFrame (results mode), a
            :class:`~negkit.widgets.negation.RecordedCurves`, a
            :class:`~negkit.widgets.live.LiveNegation` (live mode), or a list of these
            (their runs share the run dropdown).
        threshold: Admissibility threshold (fraction of the original's control accuracy).
    """

    def __init__(self, source: Any, *, threshold: float = 0.95) -> None:
        if isinstance(source, (list, tuple)):
            source = [_as_source(x, threshold) for x in source]
        else:
            source = _as_source(source, threshold)
        self.state = NegationState(source, threshold=threshold)
        self._init_outputs()
        s = self.state
        # One Layout per control: a shared one would hide all three when the pool box is hidden.
        def wide() -> dict:
            return dict(style={"description_width": "initial"}, layout=w.Layout(width="max-content", min_width="200px"))
        self.run = w.Dropdown(options=[(r.label, r) for r in s.runs], description="run", **wide())
        self.method = w.Dropdown(options=s.methods(), description="method", **wide())
        self.pool = w.Dropdown(description="pool member", **wide())
        # Applied on release / key press: a live re-evaluation with its figure takes a few hundred ms
        # on CPU, and a drag that sent every intermediate λ would queue stale work in the kernel.
        self.slider = w.FloatSlider(description="λ", min=0.0, max=1.0, step=0.05, readout_format=".2f",
                                    continuous_update=False, layout=w.Layout(width="420px"))
        self.slider.add_class("negkit-lambda")
        self._syncing = False
        self.run.observe(lambda ch: self._on_select(run=ch["new"]), "value")
        self.method.observe(lambda ch: self._on_select(method=ch["new"]), "value")
        self.pool.observe(lambda ch: self._on_select(pool_config=ch["new"]), "value")
        self.slider.observe(self._on_coef, "value")
        controls = w.VBox([w.HBox([self.run, self.method, self.pool]), self.slider])
        self.widget = w.VBox([controls, self.message, w.HBox([self.numbers, self.plot])])
        self.widget.add_class(self.css)
        self._sync_controls()
        self.refresh()

    def _sync_controls(self) -> None:
        """Put the state's selection into the controls without re-triggering them."""
        s = self.state
        self._syncing = True
        try:
            self.run.value = s.run
            self.method.options = s.methods()
            self.method.value = s.method or None
            self.pool.options = [(s.pool_label(p), p) for p in s.pool_configs()]
            self.pool.value = s.pool_config or None
            # Only Task Arithmetic negates one pool member; for merges the box is hidden, not greyed out.
            single = s.method == "task_arithmetic"
            self.pool.disabled = not single
            self.pool.layout.display = "" if single else "none"
            coefs = s.coefs()
            if coefs:
                step = 0.01 if s.source.live else min((b - a for a, b in zip(coefs, coefs[1:])), default=0.05)
                lo, hi = min(coefs), max(coefs)
                if lo > self.slider.max:  # keep min ≤ max at every step (the slider validates each)
                    self.slider.max, self.slider.min = hi, lo
                else:
                    self.slider.min, self.slider.max = lo, hi
                self.slider.step = round(step, 6)
                self.slider.value = s.coef
            self.slider.disabled = not coefs
        finally:
            self._syncing = False

    def _on_select(self, **change: Any) -> None:
        if self._syncing or any(v is None for v in change.values()):
            return
        try:
            self.state.select(**change)
        except ValueError as err:
            self.message.value = message_html(str(err), kind="error")
            return
        self._sync_controls()
        self.refresh()

    def _on_coef(self, change: dict) -> None:
        if self._syncing:
            return
        self.state.set_coef(change["new"])
        self.refresh()


class ConsensusView(_View):
    """Sign-consensus view: K slider, draw, merge-rule toggles, per-layer table and figure.

    Args:
        source: A :class:`~negkit.widgets.consensus.ConsensusState` or the pool ``{name: τ}``.
        **kw: Passed to :class:`ConsensusState` when ``source`` is the pool.
    """

    def __init__(self, source: Any, **kw: Any) -> None:
        self.state = source if isinstance(source, ConsensusState) else ConsensusState(source, **kw)
        self._init_outputs()
        s = self.state
        self.k = w.IntSlider(value=s.k, min=1, max=len(s.names), description="K", continuous_update=False)
        self.k.add_class("negkit-k")
        self.draw_index = w.BoundedIntText(value=0, min=0, max=99, description="draw", layout=w.Layout(width="160px"))
        self.rules = w.SelectMultiple(options=s.methods, value=s.selected, description="rules", rows=len(s.methods))
        self.table = w.HTML()
        self.k.observe(lambda ch: self._update(s.set_k, ch["new"]), "value")
        self.draw_index.observe(lambda ch: self._update(s.set_draw, ch["new"]), "value")
        self.rules.observe(lambda ch: self._update(s.set_methods, ch["new"]), "value")
        self.numbers.layout = w.Layout(max_width="640px")
        self.widget = w.VBox([w.HBox([self.k, self.draw_index, self.rules]), self.message,
                              self.numbers, self.table, self.plot])
        self.widget.add_class(self.css)
        self.refresh()

    def _update(self, setter: Any, value: Any) -> None:
        try:
            setter(value)
        except ValueError as err:
            self.message.value = message_html(str(err), kind="error")
            return
        self.refresh()

    def refresh(self) -> None:
        super().refresh()
        try:
            t = self.state.layer_table()
            t = t.set_index("group", drop=False).loc[network_order(list(t["group"]))]  # input to output
            cols = {"group": "layer group", "numel": "elements", "frac_consistent": "sign consensus (%)",
                    **{f"frac_kept_{m}": f"{label(m, 'method')} keeps (%)" for m in self.state.selected}}
            shown = t[list(cols)].rename(columns=cols)
            for c in list(cols.values())[2:]:
                shown[c] = 100 * shown[c]  # percent, like the numbers above and the figure
            self.table.value = _TABLE_CSS + shown.to_html(index=False, float_format=lambda v: f"{v:.1f}", border=0,
                                                          classes="negkit-layer-table")
        except Exception as err:  # noqa: BLE001 - shown in place
            self.message.value = message_html(f"{type(err).__name__}: {err}", kind="error")


class ForgetVectorView(_View):
    """Forget-vector view: pick classes, see δ(w) and per-class accuracy with and without it.

    Args:
        source: A :class:`~negkit.widgets.forget.ForgetVectorState`, or the model
            followed by the arguments of :class:`ForgetVectorState` via ``**kw``.
    """

    def __init__(self, source: Any, **kw: Any) -> None:
        self.state = source if isinstance(source, ForgetVectorState) else ForgetVectorState(source, **kw)
        self._init_outputs()
        s = self.state
        self.classes = w.SelectMultiple(options=[(s.classnames[c], c) for c in s.classes()], value=s.selected,
                                        description="forget", rows=min(10, len(s.classes())))
        self.classes.observe(self._on_classes, "value")
        hint = w.HTML("<small>Ctrl/⌘-click or Shift-click to forget several classes at once: "
                      "δ(w) = Σ w<sub>c</sub> δ<sub>c</sub></small>")
        hint.add_class("negkit-hint")
        self.widget = w.VBox([w.HBox([self.classes, hint]), self.message, w.HBox([self.numbers, self.plot])])
        self.widget.add_class(self.css)
        self.refresh()

    def _on_classes(self, change: dict) -> None:
        try:
            self.state.select(change["new"])
        except ValueError as err:
            self.message.value = message_html(str(err))
            return
        self.refresh()


def explorer(negation: Any = None, consensus: Any = None, forget: Any = None) -> w.Tab:
    """The three views as tabs (views that are None are left out).

    Args:
        negation: A :class:`NegationView` or anything it accepts as source.
        consensus: A :class:`ConsensusView` or anything it accepts as source.
        forget: A :class:`ForgetVectorView` or a :class:`ForgetVectorState`.

    Returns:
        An ``ipywidgets.Tab``; the views are also reachable as ``tab.views``.
    """
    views = {}
    if negation is not None:
        views["Negation"] = negation if isinstance(negation, NegationView) else NegationView(negation)
    if consensus is not None:
        views["Sign consensus"] = consensus if isinstance(consensus, ConsensusView) else ConsensusView(consensus)
    if forget is not None:
        views["Forget vectors"] = forget if isinstance(forget, ForgetVectorView) else ForgetVectorView(forget)
    tab = w.Tab(children=[v.widget for v in views.values()], titles=list(views))
    tab.views = views
    return tab
