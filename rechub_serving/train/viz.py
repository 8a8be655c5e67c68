"""Optional model diagram with torchview (extra ``[viz]``; rendering needs Graphviz)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rechub_serving import RechubError

__all__ = ["VizUnavailableError", "plot_model"]


class VizUnavailableError(RechubError, ImportError):
    """torchview or graphviz is not installed."""


def plot_model(
    model: Any, inputs: Mapping[str, Any], path: str | Path | None = None, *, tower: str = "user", depth: int = 3
) -> Any:
    """Draw a tower of ``model`` on ``inputs`` (feature name -> tensor); save to ``path`` (png) if given.

    Returns torchview's graph object.
    """
    try:
        from torchview import draw_graph
    except ImportError:
        raise VizUnavailableError(
            "the model diagram needs torchview and graphviz: pip install 'rechub-serving[viz]' "
            "and the Graphviz binaries (apt-get install graphviz / brew install graphviz)"
        ) from None
    module = getattr(model, f"{tower}_tower")
    graph = draw_graph(module, input_data=[dict(inputs)], depth=depth, expand_nested=True)
    if path is not None:
        path = Path(path)
        try:
            graph.visual_graph.render(path.with_suffix(""), format=path.suffix.lstrip(".") or "png", cleanup=True)
        except Exception as exc:  # graphviz's ExecutableNotFound and friends
            raise VizUnavailableError(
                f"rendering the diagram failed ({exc}); install the Graphviz binaries (apt-get install graphviz)"
            ) from exc
    return graph
