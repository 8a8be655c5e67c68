"""The :class:`Builder`: one backend's configuration, and the way to make or open its indexes.

``builder_factory("faiss", index_type="HNSW")`` returns one; so does
``Builder(MyBackend, ...)`` for a backend class that no entry point registers
(a plugin's own tests). It resolves the parameters once against the backend's
schema, asks the backend for engines, and wraps each in an
:class:`~rechub_serving.Indexer`, checking what the engine reports against
what was asked or saved.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._arrays import as_matrix, normalize_rows
from ._capabilities import Capabilities
from ._engine import Adopted, Backend, BackendConfig, Engine, EngineFiles
from ._errors import (
    BackendError,
    BackendMismatchError,
    DimensionMismatchError,
    IndexFormatError,
    InvalidParameterError,
    NotAnIndexError,
    PluginError,
    RechubError,
)
from ._ids import IdMap
from ._indexer import Indexer
from ._metrics import Metric, parse_metric
from ._params import Param, resolve_params
from ._storage import SavedIndex, open_saved

__all__ = ["COMMON_PARAMS", "Builder"]

logger = logging.getLogger("rechub_serving")

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/@\s]*)@")


def _metric_value(value: Any) -> str:
    try:
        return parse_metric(value).value
    except RechubError as exc:  # UnknownMetricError -> the parameter's message
        raise ValueError(str(exc)) from None


COMMON_PARAMS: tuple[Param, ...] = (
    Param(
        "metric", str, "l2", "l2, ip or cosine (aliases: euclidean, dot, inner_product, angular)", check=_metric_value
    ),
    Param("dim", int, None, "expected vector dimension (checked against the data)", aliases=("d",), minimum=1),
)


def redact(value: Any) -> Any:
    """``value`` with any password inside a URL (``scheme://user:password@host``) replaced by ``***``."""
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
    return value


@functools.cache
def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class Builder:
    """Configures and creates indexes of one backend.

    ``from_embeddings`` builds an index, ``from_index_file`` loads a saved
    one (or adopts a bare native file of the engine). Parameters are checked
    once, here: unknown names, wrong types, out-of-range values and bad
    combinations raise with the valid choices listed.
    """

    def __init__(self, backend: type[Backend], **params: Any):
        if not (isinstance(backend, type) and issubclass(backend, Backend)):
            raise PluginError(f"Builder() takes a Backend subclass, got {backend!r}")
        self._backend_cls = backend
        self._backend = backend()
        schema = self.schema()
        given = resolve_params(schema, params, backend.name)
        values = {p.name: given.get(p.name, p.default) for p in schema}
        self.config = BackendConfig(backend.name, values, given)
        self._call(self._backend.check_config, "check its configuration", self.config)

    # -- description ---------------------------------------------------------
    @property
    def name(self) -> str:
        """The backend's name."""
        return self._backend_cls.name

    @property
    def backend(self) -> type[Backend]:
        """The backend class (the plugin's)."""
        return self._backend_cls

    def schema(self) -> tuple[Param, ...]:
        """Every parameter of this backend, the common ones included."""
        return COMMON_PARAMS + tuple(self._backend_cls.params)

    @property
    def metric(self) -> Metric:
        return self.config.metric

    @property
    def given_params(self) -> dict[str, Any]:
        """The parameters the user passed explicitly (canonical names), without defaults."""
        return self.config.given

    @property
    def search_params(self) -> dict[str, Any]:
        """The search parameters (defaults applied) queries start from."""
        return {p.name: self.config[p.name] for p in self.schema() if p.search}

    @property
    def build_params(self) -> dict[str, Any]:
        """The build parameters, without metric, dim, runtime options and secrets."""
        return {
            p.name: self.config[p.name]
            for p in self.schema()
            if not (p.search or p.secret or p.runtime) and p.name not in ("metric", "dim")
        }

    @property
    def capabilities(self) -> Capabilities:
        """What indexes of this configuration can do."""
        return self._backend.capabilities_for(self.config)

    def tune_space(self) -> dict[str, list[Any]]:
        """The search parameter ``rechub-index tune`` sweeps for this configuration ({}: nothing to tune)."""
        return {k: list(v) for k, v in (self._backend.tune_space(self.config) or {}).items()}

    @property
    def engine_version(self) -> str | None:
        """``"<distribution> <version>"`` of the engine library, when the backend declares it."""
        names = self._backend_cls.engine_distribution
        if not names:
            return None
        return _distribution_version((names,) if isinstance(names, str) else tuple(names))

    @property
    def distribution(self) -> str:
        """The plugin distribution that registered this backend."""
        return self._origin()[0]

    @property
    def plugin_version(self) -> str:
        return self._origin()[1]

    def _origin(self) -> tuple[str, str]:
        from ._plugins import origin_of

        return origin_of(self._backend_cls)

    def __repr__(self) -> str:
        secret = {p.name for p in self.schema() if p.secret}
        shown = ", ".join(f"{k}={redact(v)!r}" for k, v in self.config.given.items() if k not in secret)
        return f"Builder({self.name!r}{', ' if shown else ''}{shown})"

    # -- making indexes --------------------------------------------------------
    def from_embeddings(self, embeddings: Any, ids: Any = None) -> Indexer:
        """Build an index over ``embeddings`` (n, d), one id per row (default 0..n-1)."""
        vectors, _, _ = as_matrix(embeddings, "embeddings", dim=self.config.dim)
        idmap = IdMap.create(ids, len(vectors))
        if self.metric is Metric.COSINE:
            vectors = normalize_rows(vectors)
        native = self._backend_cls.native_ids
        engine = self._call(self._backend.build, "build", vectors, self.config, idmap.ids if native else None)
        try:
            self._check_engine(engine, vectors.shape[1], len(vectors), "the data")
            indexer = Indexer(engine, builder=self, dim=vectors.shape[1], ids=None if native else idmap)
        except BaseException:
            _close_quietly(engine)
            raise
        logger.info("built %s index: %d x %d, metric %s", self.name, len(vectors), vectors.shape[1], self.metric)
        return indexer

    def from_engine(self, engine: Engine, ids: Any = None, *, metadata: Mapping[str, Any] | None = None) -> Indexer:
        """Wrap an engine the plugin made itself (for example attached to an existing server collection).

        ``ids`` are the external ids in label order (default: positions);
        ignored for backends with ``native_ids``.
        """
        if not isinstance(engine, Engine):
            raise PluginError(f"from_engine() takes an Engine, got {type(engine).__name__}")
        native = self._backend_cls.native_ids
        idmap = None if native else IdMap.create(ids, len(engine))
        dim = int(engine.dim)
        if self.config.dim is not None and self.config.dim != dim:
            raise DimensionMismatchError(f"the engine holds {dim}-dimensional vectors, not dim={self.config.dim}")
        return Indexer(engine, builder=self, dim=dim, ids=idmap, metadata=metadata)

    def from_index_file(self, path: str | Path) -> Indexer:
        """Load a saved index directory, or adopt a bare native file of the engine.

        Search parameters and runtime options given to this builder override
        the saved ones; the metric and build parameters come from the index.
        """
        path = Path(path).expanduser()
        if path.is_file():
            return self._adopt(path)
        with open_saved(path) as saved:
            return self._load_saved(saved)

    def _load_saved(self, saved: SavedIndex) -> Indexer:
        manifest = saved.manifest
        if manifest["backend"] != self.name:
            raise BackendMismatchError(
                f"{saved.path} was saved by the {manifest['backend']!r} backend, not {self.name!r}; "
                f"use builder_factory({manifest['backend']!r}) or open_index()"
            )
        builder = self._for_saved(manifest, saved.path)
        files = EngineFiles(saved, manifest.get("engine") or {})
        engine = builder._load(files, saved.path)
        try:
            ids = None if builder.backend.native_ids else saved.load_ids()
            if ids is None and not builder.backend.native_ids:
                raise IndexFormatError(f"{saved.path}: the manifest has no id map; the index is damaged")
            count = int(manifest["count"])
            builder._check_engine(engine, int(manifest["dim"]), count, f"the manifest of {saved.path}")
            if ids is not None and len(ids) != count:
                raise IndexFormatError(
                    f"{saved.path}: the id map holds {len(ids)} live ids, the manifest says {count}; the index is damaged"
                )
            return Indexer(
                engine, builder=builder, dim=int(manifest["dim"]), ids=ids, metadata=manifest.get("metadata")
            )
        except BaseException:
            _close_quietly(engine)
            raise

    def _load(self, files: EngineFiles, where: Path) -> Engine:
        try:
            engine = self._backend.load(files, self.config)
        except RechubError as exc:
            if str(where) in str(exc):
                raise
            raise type(exc)(f"{where}: {exc}") from exc  # the engine only knows its own file names
        except Exception as exc:
            raise IndexFormatError(
                f"{where}: the {self.name} engine could not read its files ({type(exc).__name__}: {exc}); "
                "the index is damaged or was written by an incompatible engine version"
            ) from exc
        if not isinstance(engine, Engine):
            raise PluginError(f"the {self.name} backend's load() returned {type(engine).__name__}, not an Engine")
        return engine

    def _check_engine(self, engine: Engine, dim: int, count: int, source: str) -> None:
        """The engine must hold what was built or saved: dimension, count, metric."""
        if not isinstance(engine, Engine):
            raise PluginError(f"the {self.name} backend returned {type(engine).__name__}, not an Engine")
        got_dim, got_count = int(engine.dim), len(engine)
        if got_dim != dim:
            raise IndexFormatError(
                f"the {self.name} engine holds {got_dim}-dimensional vectors but {source} says {dim}; "
                "the index is damaged or its manifest was edited"
            )
        if got_count != count:
            raise IndexFormatError(
                f"the {self.name} engine holds {got_count} vectors but {source} says {count}; "
                "the index is damaged or its manifest was edited"
            )
        own = engine.metric
        if own is not None and own is not self.metric and not (own is Metric.IP and self.metric is Metric.COSINE):
            raise IndexFormatError(
                f"the {self.name} engine's data uses metric {own.value} but {source} says {self.metric.value}; "
                "the index is damaged or its manifest was edited"
            )

    def _for_saved(self, manifest: Mapping[str, Any], where: Path) -> Builder:
        """A builder configured as the saved index, with this builder's overrides."""
        given = self.config.given
        saved_metric = parse_metric(manifest["metric"]).value
        if "metric" in given and given["metric"] != saved_metric:
            raise InvalidParameterError(
                f"the index was built with metric {saved_metric!r}; it cannot be loaded as "
                f"{given['metric']!r} (omit metric= or rebuild)"
            )
        if "dim" in given and given["dim"] != manifest["dim"]:
            raise DimensionMismatchError(f"the index has dimension {manifest['dim']}, not {given['dim']}")
        known = {p.name for p in self.schema()} - {"metric", "dim"}
        saved = {**(manifest.get("params") or {}), **(manifest.get("search_params") or {})}
        saved = {k: v for k, v in saved.items() if k in known and k not in given and v is not None}
        try:
            resolve_params(self.schema(), saved, self.name)
        except RechubError as exc:
            raise IndexFormatError(
                f"{where}: the saved parameters are invalid ({exc}); the manifest was edited"
            ) from None
        return type(self)(self._backend_cls, **{**saved, "metric": saved_metric, **given})

    def _adopt(self, path: Path) -> Indexer:
        adopted = self._call(self._backend.adopt, "adopt a native file", path, self.config, load=True)
        if not isinstance(adopted, Adopted):
            raise PluginError(f"the {self.name} backend's adopt() returned {type(adopted).__name__}, not Adopted")
        engine = adopted.engine
        try:
            metric = parse_metric(adopted.metric)
            given = self.config.given.get("metric")
            builder = self
            if given is None and metric is not self.metric:
                builder = type(self)(self._backend_cls, **{**self.config.given, "metric": metric.value})
            elif given is not None and given != metric.value and not (given == "cosine" and metric is Metric.IP):
                raise InvalidParameterError(
                    f"{path} holds a {metric.value} index; it cannot be opened as metric={given!r} (omit metric=, or "
                    "use metric='cosine' only for an inner-product index of normalised vectors)"
                )
            dim = int(adopted.dim or engine.dim)
            if self.config.dim is not None and self.config.dim != dim:
                raise DimensionMismatchError(f"{path} holds {dim}-dimensional vectors, not dim={self.config.dim}")
            native = self._backend_cls.native_ids
            ids = None if native else IdMap.create(adopted.ids, len(engine))
            return Indexer(engine, builder=builder, dim=dim, ids=ids)
        except BaseException:
            _close_quietly(engine)
            raise

    def _call(self, fn: Any, what: str, *args: Any, load: bool = False) -> Any:
        """Call the plugin, turning foreign exceptions into the library's."""
        try:
            return fn(*args)
        except RechubError:
            raise
        except Exception as exc:
            error = NotAnIndexError if load else BackendError
            raise error(f"the {self.name} backend failed to {what}: {type(exc).__name__}: {exc}") from exc


def _close_quietly(engine: Any) -> None:
    try:
        engine.close()
    except Exception:
        logger.debug("closing an engine that failed its checks raised", exc_info=True)
