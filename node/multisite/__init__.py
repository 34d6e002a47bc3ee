"""Multi-site validation: hospitals pool the evaluation of one vendor model under Flower's
SecAgg+ secure aggregation, and no site reveals its own figures (docs/multisite.md).

``vector`` (what a site contributes), ``pooled`` (figures from the sum) and ``report`` are
plain numpy/matplotlib; ``flwr_app`` (the Flower ServerApp/ClientApp), ``coordinator`` and
``site`` need the ``multisite`` extra (flwr) and are imported by the CLI when used.
"""

from __future__ import annotations

from node.multisite.errors import MultisiteError, RoundRefusedError, VectorError
from node.multisite.pooled import PooledFigures, auroc_from_histograms, pooled_figures, tie_bound
from node.multisite.vector import GRID, LAYOUT, LENGTH, Sums, check_vector, decode, encode

__all__ = [
    "GRID",
    "LAYOUT",
    "LENGTH",
    "MultisiteError",
    "PooledFigures",
    "RoundRefusedError",
    "Sums",
    "VectorError",
    "auroc_from_histograms",
    "check_vector",
    "decode",
    "encode",
    "pooled_figures",
    "tie_bound",
]
