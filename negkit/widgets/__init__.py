"""Interactive explorer for JupyterLab: negation, sign-consensus and forget-vector views.

Every view is a plain-Python *state* (the model of the view: selection, numbers,
figure; testable without a browser) plus a thin ipywidgets layer::

    from negkit import widgets
    widgets.NegationView("runs/digits")                 # results mode: recorded λ curves
    widgets.NegationView(widgets.LiveNegation(model, pre_sd, pool, splits))   # live mode
    widgets.ConsensusView(pool)                         # K slider, merge-rule toggles
    widgets.ForgetVectorView(model, vectors=fvs, data=bundle.test, classnames=...)
    widgets.explorer(negation=..., consensus=..., forget=...)                # all as tabs

Modules: :mod:`.negation` (results mode + the negation state), :mod:`.live` (live
re-evaluation), :mod:`.consensus`, :mod:`.forget`, :mod:`.views` (ipywidgets).
"""
from negkit.widgets.consensus import ConsensusState
from negkit.widgets.forget import ForgetVectorState
from negkit.widgets.live import LiveNegation
from negkit.widgets.negation import NegationState, RecordedCurves, RunKey
from negkit.widgets.views import ConsensusView, ForgetVectorView, NegationView, explorer

__all__ = [
    "NegationState", "RecordedCurves", "RunKey", "LiveNegation", "ConsensusState", "ForgetVectorState",
    "NegationView", "ConsensusView", "ForgetVectorView", "explorer",
]
