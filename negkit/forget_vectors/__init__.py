"""Forget vectors: universal input perturbations that make a frozen classifier unlearn.

Sun et al. (2024), *Forget Vectors at Play: Universal Input Perturbations Driving
Machine Unlearning in Image Classification*. A forget vector δ has the shape of one
input image (C, H, W); it is added to the raw [0, 1] pixels of every image before
the model's own normalisation layer, and the model's weights never change:

    f_θ(x + δ)   with θ frozen.

δ is learned with the model frozen (eval mode, ``requires_grad`` off) by minimising,
on batches drawn from D_f ∪ D_r (forget and retain samples shuffled together, seen
through random crop + flip views, as in the authors' code):

    ℓ(δ) = α · Σ_{(x,y)∈D_r} CE(f(x+δ), y)
         + β · Σ_{(x,y)∈D_f} max(z_y(x+δ) − max_{k≠y} z_k(x+δ), −τ)
         + λ · ‖δ‖₂,

each term divided by the batch size B as in the authors' code. The margin term pushes
the true-class logit of forget samples below the runner-up by at least τ; the CE term
keeps the retain samples correct; the norm keeps δ small. The optimiser is SGD with
momentum and an exponential learning-rate decay per epoch.

Forget-vector arithmetic (the paper's compositional unlearning): from class-wise vectors {δ_c}, a new task
(forget a union of classes, or random data inside some classes) gets
δ(w) = Σ_c w_c δ_c, where only the K weights w are learned with the same loss, its norm
term becoming λ‖w‖₂. The authors chose β and the number of epochs per class;
:func:`select_classwise` does so on the validation split.

A :class:`ForgetVector` is an ``input_transform`` callable, so ``negkit.evaluate.predict``
and ``negkit.metrics.unlearning_metrics`` evaluate the frozen model with δ applied.

The package, one concept per module (everything below is re-exported here, so
``from negkit.forget_vectors import learn_classwise`` and ``negkit.forget_vectors.combine``
are the ways to use it):

============== ==============================================================
``vector``     :class:`ForgetVector` (δ, its arithmetic, save/load), :func:`project`
``loss``       :class:`ForgetVectorConfig`, :func:`margin_loss`, :func:`forget_vector_loss`
``learn``      :func:`frozen`, :func:`crop_flip`, :func:`iterate_batches`,
               :func:`learn_forget_vector`, :func:`learn_classwise`
``select``     :func:`select_classwise` (β and epochs per class, on validation)
``arithmetic`` :func:`combine`, :func:`learn_arithmetic`, :func:`split_within_classes`
``report``     :func:`per_class_accuracy`, :func:`classwise_report`, :func:`run_benchmark`
============== ==============================================================
"""
from __future__ import annotations

from negkit.forget_vectors.arithmetic import combine, learn_arithmetic, split_within_classes
from negkit.forget_vectors.learn import crop_flip, frozen, iterate_batches, learn_classwise, learn_forget_vector
from negkit.forget_vectors.loss import (ARITHMETIC_PENALTIES, AUGMENTS, BATCHINGS, INITS, ForgetVectorConfig,
                                        forget_vector_loss, margin_loss)
from negkit.forget_vectors.report import classwise_report, per_class_accuracy, run_benchmark
from negkit.forget_vectors.select import PAPER_BETAS, PAPER_EPOCHS, select_classwise
from negkit.forget_vectors.vector import BOUNDS, ForgetVector, project

__all__ = [
    "ForgetVectorConfig", "ForgetVector", "margin_loss", "forget_vector_loss",
    "learn_forget_vector", "learn_classwise", "split_within_classes", "combine", "learn_arithmetic",
    "frozen", "crop_flip", "iterate_batches", "select_classwise", "PAPER_BETAS", "PAPER_EPOCHS", "project",
    "per_class_accuracy", "classwise_report", "run_benchmark", "BOUNDS", "INITS", "BATCHINGS", "AUGMENTS",
    "ARITHMETIC_PENALTIES",
]
