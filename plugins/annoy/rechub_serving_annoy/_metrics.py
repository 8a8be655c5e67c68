"""The metric table, translated to and from Annoy's own metrics and numbers.

=========  ==============  ==================================  ==============================
metric     Annoy metric    Annoy returns                       we report
=========  ==============  ==================================  ==============================
l2         ``euclidean``   ``sqrt(sum((x - q)^2))``            ``d^2`` (squared Euclidean)
ip         ``dot``         ``x . q``                           ``d`` (inner product)
cosine     ``angular``     ``sqrt(2 - 2 cos)``                 ``1 - d^2 / 2`` (cosine sim.)
=========  ==============  ==================================  ==============================

Annoy's angular distance is the Euclidean distance between the normalised
vectors, so ``1 - d^2/2`` recovers the cosine similarity exactly (the core
normalises cosine vectors before they reach the engine; Annoy's angular is
scale-invariant anyway, which keeps adopted, unnormalised files right too).
"""

from __future__ import annotations

import numpy as np
from rechub_serving import Metric

__all__ = ["ANNOY_METRIC", "to_table"]

ANNOY_METRIC: dict[Metric, str] = {
    Metric.L2: "euclidean",
    Metric.IP: "dot",
    Metric.COSINE: "angular",
}


def to_table(metric: Metric, raw: np.ndarray) -> np.ndarray:
    """Convert Annoy's distances (float32, any shape) to the metric table's numbers."""
    raw = np.asarray(raw, dtype=np.float32)
    if metric is Metric.L2:
        return np.square(raw)
    if metric is Metric.COSINE:
        cos = np.float32(1.0) - np.float32(0.5) * np.square(raw)
        return np.clip(cos, np.float32(-1.0), np.float32(1.0))
    return raw.copy()
