"""Merge rules beyond the paper's four, one module each, registered in :mod:`negkit.merge`.

Importing :mod:`negkit.merge` imports this package, so every rule below is a name of
``negkit.merge.list_methods()`` and works wherever :func:`negkit.merge.merge` does
(negation, ``merge_files``, the benchmark's ``merge_methods``):

============== ============================================================================
``dare``        DARE (Yu et al., 2024): random drop with rescaling, then the mean. Streams.
``breadcrumbs`` Model Breadcrumbs (Davari & Belilovsky, 2024): per-layer drop of the largest
                and the smallest magnitudes, then the mean. Streams.
``consensus``   Consensus / TALL masks (Wang et al., 2024): keep elements at least ``m`` of
                K members rank important, on the mean. Holds one key's K slices.
``tsv``         TSV-M (Gargiulo et al., 2025): per layer, each member's top singular
                directions, orthogonalised, summed. Holds one key's K slices.
============== ============================================================================
"""
from negkit.merge_rules import breadcrumbs, consensus, dare, tsv  # noqa: F401  (registration)

__all__ = ["breadcrumbs", "consensus", "dare", "tsv"]
