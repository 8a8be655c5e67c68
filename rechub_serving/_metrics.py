"""The one meaning of "distance" per metric.

========  ===================================  ==========
metric    ``distances`` holds                  order
========  ===================================  ==========
l2        squared Euclidean distance           ascending
ip        inner product                        descending
cosine    cosine similarity                    descending
========  ===================================  ==========

Backends convert whatever their engine returns into these numbers, so the same
metric gives the same numbers everywhere.
"""

from __future__ import annotations

import enum

from ._errors import UnknownMetricError

__all__ = ["Metric", "parse_metric"]


class Metric(enum.StrEnum):
    """A similarity metric, with the conventions every backend follows."""

    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"

    @property
    def higher_is_better(self) -> bool:
        """True for ip and cosine (descending order), False for l2."""
        return self is not Metric.L2

    @property
    def pad_distance(self) -> float:
        """The distance of a padding slot: the worst possible value."""
        return float("-inf") if self.higher_is_better else float("inf")


_ALIASES = {
    "l2": Metric.L2,
    "euclidean": Metric.L2,
    "ip": Metric.IP,
    "dot": Metric.IP,
    "inner_product": Metric.IP,
    "cosine": Metric.COSINE,
    "angular": Metric.COSINE,
}


def parse_metric(name: str | Metric) -> Metric:
    """Resolve a metric name or alias (case-insensitive) to a :class:`Metric`."""
    if isinstance(name, Metric):
        return name
    if isinstance(name, str):
        metric = _ALIASES.get(name.strip().lower())
        if metric is not None:
            return metric
    raise UnknownMetricError(
        f"unknown metric {name!r}; expected one of l2 (euclidean), "
        "ip (dot, inner_product) or cosine (angular), case-insensitive"
    )
