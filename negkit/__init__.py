"""negkit: machine unlearning by task-vector negation (NegMerge) and forget vectors.

Map of the package (one concept per module):

* ``taskvec`` τ = θ_ft − θ_pre with maths-shaped arithmetic; ``merge`` (one module per rule): NegMerge,
  mean, TIES, MagMax, DARE, … behind one registry (``merge.merge("negmerge", taus)``).
* ``data`` (dataset registry), ``models`` (model registry), ``train`` (the one training loop),
  ``evaluate`` (accuracy, the λ search), ``metrics`` (UA, RA, TA, MIA, Avg. Gap), ``unlearn``
  (FT, GA, RL, ℓ1-sparse, SalUn, IU, BE, BS, NegGrad+, SCRUB, SSD; one module each), ``forget_vectors`` (input perturbations).
* ``benchmark`` (the paper's protocol over seeds), ``executor`` (local workers, Ray), ``clip``
  (open_clip task negation); ``results`` (tidy records), ``load_run`` (a run folder read back).
* ``analysis`` (sign consensus), ``diversity`` (pool diversity) + ``plotting`` (figures from tables),
  ``widgets`` (the explorer), ``notebook`` (what every notebook runs first); ``cli`` is the ``negkit`` command.
"""
__version__ = "0.1.0"

from negkit.taskvec import TaskVector  # noqa: E402  (after __version__, which taskvec imports)
from negkit.run import Run, load_run  # noqa: E402

__all__ = ["TaskVector", "Run", "load_run", "__version__"]
