"""The engine protocol: what a backend plugin implements, and nothing else.

A plugin provides a :class:`Backend` (its name, parameter schema,
capabilities and engine distribution; ``build``, ``load`` and optionally
``adopt``) and the :class:`Engine` objects it makes (``search``; optionally
``add``, ``remove``, ``save``, ``close``). The core's
:class:`~rechub_serving.Indexer` holds one engine the way an HTTP client holds
a transport, and owns everything around it: validation and conversion of
inputs, ids, the metric table, ``exclude``, padding, per-call parameters,
manifests and checksums, atomic saves, use-after-close and one
readers-writer lock per index. So an engine is called:

* with C-contiguous float32 arrays that are finite, of the index's dimension
  and, for the cosine metric, already L2-normalised;
* with int64 *labels* (``0..n-1`` at build, then the labels the core gives to
  ``add``), never the user's ids, unless the backend sets ``native_ids``;
* under the index's lock: ``search`` may run on many threads at once, but
  never while ``add``, ``remove``, ``save`` or ``close`` runs, so an engine
  keeps no lock of its own for these;
* with ``params`` holding every search parameter of this call (defaults and
  per-call overrides merged); an engine never stores them on shared state.

Whatever an engine raises that is not a :class:`~rechub_serving.RechubError`
is wrapped by the core in the library's error (``BackendError`` while
building, searching or changing; ``IndexFormatError`` while loading).
The whole protocol is documented on one page: docs/plugins.md.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ._capabilities import Capabilities
from ._errors import NotAnIndexError, UnsupportedOperation
from ._metrics import Metric, parse_metric
from ._params import Param

if TYPE_CHECKING:
    from ._storage import SavedIndex

__all__ = ["Adopted", "Backend", "BackendConfig", "Engine", "EngineFiles", "RawDistance"]


class RawDistance(enum.Enum):
    """What an engine's ``search`` returns as distances; the core turns it into the metric table.

    ==================  ==========================================  =============================
    member              the engine returns                          the core reports
    ==================  ==========================================  =============================
    ``SQUARED_L2``      squared Euclidean distance                  as is (clamped at 0)
    ``L2``              Euclidean distance                          its square
    ``INNER_PRODUCT``   inner product (cosine for normalised data)  as is
    ``ONE_MINUS_IP``    ``1 - <q, x>`` (hnswlib, Voyager, USearch)  ``1 - d``
    ``ANGULAR``         ``sqrt(2 - 2 cos)`` (Annoy's angular)       ``1 - d**2 / 2``
    ==================  ==========================================  =============================
    """

    SQUARED_L2 = "squared_l2"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"
    ONE_MINUS_IP = "one_minus_ip"
    ANGULAR = "angular"

    @classmethod
    def table(cls, metric: Metric) -> RawDistance:
        """The member that *is* the metric table's meaning for ``metric``."""
        return cls.SQUARED_L2 if metric is Metric.L2 else cls.INNER_PRODUCT

    def fits(self, metric: Metric) -> bool:
        """True when engine numbers of this kind can express ``metric``."""
        if metric is Metric.L2:
            return self in (RawDistance.SQUARED_L2, RawDistance.L2)
        return self in (RawDistance.INNER_PRODUCT, RawDistance.ONE_MINUS_IP, RawDistance.ANGULAR)

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` engine numbers as float32 metric-table distances (a new array when converted)."""
        raw = np.asarray(raw, dtype=np.float32)
        if self is RawDistance.SQUARED_L2:
            return np.maximum(raw, np.float32(0.0))
        if self is RawDistance.L2:
            return np.square(raw)
        if self is RawDistance.ONE_MINUS_IP:
            return np.float32(1.0) - raw
        if self is RawDistance.ANGULAR:
            return np.float32(1.0) - np.square(raw) * np.float32(0.5)
        return raw


class BackendConfig(Mapping[str, Any]):
    """One backend configuration: every parameter resolved, read-only.

    ``config["nlist"]`` reads a parameter by its canonical name (defaults
    applied, aliases resolved, types checked); ``config.given`` holds only the
    ones the user passed; ``config.metric`` and ``config.dim`` are the common
    ones.
    """

    __slots__ = ("_given", "_values", "backend")

    def __init__(self, backend: str, values: Mapping[str, Any], given: Mapping[str, Any]):
        self.backend = backend
        self._values = dict(values)
        self._given = dict(given)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def metric(self) -> Metric:
        return parse_metric(self._values["metric"])

    @property
    def dim(self) -> int | None:
        return self._values.get("dim")

    @property
    def given(self) -> dict[str, Any]:
        """The parameters the user passed explicitly (canonical names), without defaults."""
        return dict(self._given)

    def __repr__(self) -> str:
        return f"BackendConfig({self.backend!r}, {self._values!r})"


class EngineFiles:
    """The saved engine files a :meth:`Backend.load` reads, already verified by the core.

    ``meta`` is what :meth:`Engine.save` returned (the manifest's ``engine``
    entry). :meth:`path` gives the path of one file the engine saved, after
    checking that the name stays inside the engine's directory, is no
    symlink, is listed in the manifest and matched its checksum: read
    every file through it. ``dim`` and ``count`` are the manifest's, which the
    core checks against the loaded engine.
    """

    def __init__(self, saved: SavedIndex, meta: Mapping[str, Any]):
        self._saved = saved
        self.meta: Mapping[str, Any] = meta
        self.dim: int = int(saved.manifest["dim"])
        self.count: int = int(saved.manifest["count"])
        self.directory: Path = saved.directory / "engine"
        #: The saved index as the user named it (for messages; read files through :meth:`path`).
        self.index_path: Path = saved.path

    def path(self, name: str) -> Path:
        """The verified path of ``name`` (relative to the engine directory)."""
        return self._saved.file(f"engine/{name}")

    def names(self) -> list[str]:
        """Every file saved in the engine directory, relative to it."""
        return self._saved.engine_files()

    def __repr__(self) -> str:
        return f"EngineFiles({self._saved.path}, {sorted(self.names())})"


class Engine(abc.ABC):
    """A built or loaded engine: what a backend's ``build``, ``load`` and ``adopt`` return.

    Implement :meth:`search`, :attr:`dim` and :meth:`__len__`. Set
    :attr:`distance` to say what ``search`` returns (default: already the
    metric table). Implement :meth:`add`, :meth:`remove` and :meth:`save`
    where the backend's capabilities say so, and :meth:`close` to free
    resources. See the module docstring for what the core guarantees.
    """

    #: What ``search`` returns as distances (None: already the metric table's numbers).
    distance: RawDistance | None = None

    #: A ``torch.device`` for engines that search torch tensors: queries that are tensors on it
    #: reach ``search`` as a float32 tensor there, and ``search`` returns tensors there too.
    tensor_device: Any = None

    @abc.abstractmethod
    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query row: ``(labels, distances)`` of shape ``(n, k)``, best first.

        ``k`` never exceeds ``len(self)``. Rows the engine cannot fill are
        padded with label ``-1`` (any distance): never raise for a short
        result. ``exclude`` is given only to engines whose capabilities say
        ``native_filter`` and whose :meth:`can_filter` accepted it: one int64
        label array per query row, to be left out.
        """

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Dimension of the stored vectors."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Vectors the engine holds now (removed ones excluded)."""

    @property
    def metric(self) -> Metric | None:
        """The metric the engine's own data records (``ip`` for an inner-product index of a cosine one), if any.

        The core checks it against the manifest when loading.
        """
        return None

    def resolved_params(self) -> Mapping[str, Any]:
        """Values the engine chose for parameters left to it (``nlist``, ``ef_search``...), shown in ``params``."""
        return {}

    def capabilities(self, declared: Capabilities) -> Capabilities:
        """What this very engine can do, given what its configuration declares (narrow it, never widen)."""
        return declared

    def can_filter(self, exclude: Sequence[np.ndarray]) -> bool:
        """Whether :meth:`search` should get this ``exclude`` natively; False: the core over-fetches and drops."""
        return True

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add ``vectors`` under ``labels`` (int64; external ids for ``native_ids`` backends, or None)."""
        raise UnsupportedOperation(f"{type(self).__name__} cannot add vectors")

    def remove(self, labels: np.ndarray) -> int:
        """Remove the vectors of ``labels`` (all present); return how many were removed."""
        raise UnsupportedOperation(f"{type(self).__name__} cannot remove vectors")

    def save(self, directory: Path) -> Mapping[str, Any] | None:
        """Write the engine's files into ``directory`` (and nowhere else); return metadata for ``load``."""
        raise UnsupportedOperation(f"{type(self).__name__} cannot save")

    def close(self) -> None:
        """Release the engine's resources. Called once, with no search running."""


@dataclass(frozen=True)
class Adopted:
    """What :meth:`Backend.adopt` found in a bare native file.

    ``ids`` are the external ids in label order (``None``: positions
    ``0..n-1``); ``metric`` and ``dim`` are the file's (``dim`` defaults to
    the engine's).
    """

    engine: Engine
    metric: Metric | str
    ids: Any = None
    dim: int | None = None


class Backend(abc.ABC):
    """A backend: what a plugin registers with ``register(MyBackend)``.

    Class attributes describe it:

    ``name``
        what users pass to :func:`~rechub_serving.builder_factory`.
    ``params``
        the :class:`~rechub_serving.Param` schema (``metric`` and ``dim`` are
        added by the core, which rejects unknown names, checks types and
        bounds and resolves aliases).
    ``capabilities``
        what the engine can do at best; narrow it per configuration in
        :meth:`capabilities_for`.
    ``engine_distribution``
        the distribution (or candidates) of the engine library, whose version
        the core records in manifests and shows in ``rechub-index backends``.
    ``native_ids``
        True for engines that store the user's ids themselves (a database):
        then ``build`` gets ``ids``, ``search`` returns external ids (``-1`` /
        ``None`` padding), ``exclude``, ``add`` and ``remove`` take external
        ids, and the core saves no id map.

    Implement :meth:`build` and :meth:`load`; optionally :meth:`adopt`,
    :meth:`check_config`, :meth:`capabilities_for` and :meth:`tune_space`.
    The core makes one instance per builder, with no arguments.
    """

    name: ClassVar[str]
    params: ClassVar[Sequence[Param]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()
    engine_distribution: ClassVar[str | tuple[str, ...] | None] = None
    native_ids: ClassVar[bool] = False

    @abc.abstractmethod
    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> Engine:
        """An engine over ``vectors``; row ``i`` gets label ``i`` (``ids`` only for ``native_ids``)."""

    @abc.abstractmethod
    def load(self, files: EngineFiles, config: BackendConfig) -> Engine:
        """The engine that :meth:`Engine.save` wrote, from verified ``files``."""

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        """Adopt a bare native file of the engine (not a saved directory)."""
        raise NotAnIndexError(
            f"{path} is a file, not a rechub-serving index directory, and the {self.name!r} backend "
            "cannot adopt native files; pass the directory written by Indexer.save()"
        )

    def check_config(self, config: BackendConfig) -> None:
        """Check combinations of parameters; raise :class:`~rechub_serving.InvalidParameterError`."""

    def capabilities_for(self, config: BackendConfig) -> Capabilities:
        """Capabilities of one configuration (default: the class's)."""
        return self.capabilities

    def tune_space(self, config: BackendConfig) -> Mapping[str, Sequence[Any]]:
        """The search parameter ``rechub-index tune`` sweeps, with its candidate values ({}: nothing to tune)."""
        return {}
