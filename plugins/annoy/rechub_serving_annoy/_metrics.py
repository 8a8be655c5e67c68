"""The metric table in Annoy's terms: which Annoy metric serves each metric, and what its numbers are.

=========  ==============  ======================  ==============================================
metric     Annoy metric    Annoy returns           :class:`~rechub_serving.RawDistance` (the core
                                                   converts it to the metric table)
=========  ==============  ======================  ==============================================
l2         ``euclidean``   ``sqrt(sum((x - q)^2))``  ``L2`` (reported squared)
ip         ``dot``         ``x . q``               ``INNER_PRODUCT`` (as is)
cosine     ``angular``     ``sqrt(2 - 2 cos)``     ``ANGULAR`` (reported as ``1 - d^2 / 2``)
=========  ==============  ======================  ==============================================

Annoy's angular distance is the Euclidean distance between the normalised
vectors, so ``1 - d^2/2`` is the cosine similarity; it is scale-invariant,
which keeps adopted files of unnormalised vectors right too.
"""

from __future__ import annotations

from typing import Literal

from rechub_serving import Metric, RawDistance

__all__ = ["ANNOY_METRIC", "METRIC_OF", "RAW_DISTANCE", "AnnoyMetric", "annoy_metric_named"]

AnnoyMetric = Literal["angular", "euclidean", "dot"]

ANNOY_METRIC: dict[Metric, AnnoyMetric] = {Metric.L2: "euclidean", Metric.IP: "dot", Metric.COSINE: "angular"}
METRIC_OF: dict[AnnoyMetric, Metric] = {name: metric for metric, name in ANNOY_METRIC.items()}
RAW_DISTANCE: dict[AnnoyMetric, RawDistance] = {
    "euclidean": RawDistance.L2,
    "dot": RawDistance.INNER_PRODUCT,
    "angular": RawDistance.ANGULAR,
}


def annoy_metric_named(value: object) -> AnnoyMetric | None:
    """``value`` as one of the Annoy metrics served here (a saved manifest's), else None."""
    for name in METRIC_OF:
        if value == name:
            return name
    return None
