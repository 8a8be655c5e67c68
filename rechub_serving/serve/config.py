"""What a server runs: the model's paths, the batching, limits and monitoring knobs, the network options.

One frozen :class:`ServeConfig` describes a server completely. The CLI builds
it from options; with several workers it travels to each worker process as
JSON in an environment variable (:data:`CONFIG_ENV`), so nothing secret may
live in it: the admin token is read by each worker from the environment or
from a file (:func:`read_admin_token`), never from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_TOKEN_ENV",
    "BatchConfig",
    "Limits",
    "ModelPaths",
    "RecallConfig",
    "ServeConfig",
    "read_admin_token",
]

CONFIG_ENV = "RECHUB_SERVE_CONFIG"
DEFAULT_TOKEN_ENV = "RECHUB_SERVE_ADMIN_TOKEN"


@dataclass(frozen=True)
class Limits:
    """Per-request limits: what a request may ask, and how long it may take."""

    max_body_bytes: int = 1 << 20
    max_users: int = 256  # users (recommend) or vectors (search) in one request
    max_k: int = 1000
    request_timeout_s: float = 5.0

    def check(self) -> None:
        _positive("max_body_bytes", self.max_body_bytes)
        _positive("max_users", self.max_users)
        _positive("max_k", self.max_k)
        _positive("request_timeout_s", self.request_timeout_s)


@dataclass(frozen=True)
class BatchConfig:
    """Micro-batching: up to ``max_batch`` users per tower run and index query, waiting at most ``max_wait_ms``.

    ``max_batch=1`` serves requests one at a time (no batching). ``threads`` is
    how many batches compute at once, each on its own thread; 0 computes on
    the event loop's thread. ``max_queue`` bounds the users waiting (beyond it
    a request gets 503 at once instead of a growing delay).
    """

    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 4096
    threads: int = 1

    def check(self) -> None:
        _positive("max_batch", self.max_batch)
        _positive("max_queue", self.max_queue)
        if self.threads < 0:
            raise ConfigError(f"batch threads must be >= 0 (0: on the event loop), got {self.threads}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


@dataclass(frozen=True)
class RecallConfig:
    """Live recall monitoring: the share of requests answered again by exact search, off the request path."""

    sample_rate: float = 0.01
    queue_size: int = 64
    window: int = 1000  # recall over the last ``window`` checked users
    reference_vectors: str | None = None
    reference_ids: str | None = None

    def check(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(f"recall sample rate must be in [0, 1], got {self.sample_rate}")
        _positive("recall queue size", self.queue_size)
        _positive("recall window", self.window)
        if self.reference_ids and not self.reference_vectors:
            raise ConfigError("--reference-ids needs --reference-vectors")


@dataclass(frozen=True)
class ModelPaths:
    """The files one model generation is loaded from (absolute paths)."""

    user_tower: Path | None
    index: Path
    embeddings: Path | None  # the model dir's item_embeddings.npy (exact reference for recall)
    embedding_ids: Path | None

    @property
    def mode(self) -> str:
        return "recommend" if self.user_tower is not None else "search"


@dataclass(frozen=True)
class ServeConfig:
    """Everything a server needs; see ``rechub-index serve --help`` for each option."""

    model_dir: str | None = None
    user_tower: str | None = None
    index: str | None = None
    index_params: dict[str, Any] = field(default_factory=dict)
    default_k: int = 10
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    watch_interval_s: float = 2.0  # 0: no polling, reload only on the admin endpoint
    admin_token_env: str = DEFAULT_TOKEN_ENV
    admin_token_file: str | None = None
    tower_threads: int | None = 1
    compute_threads: int = 1  # numpy's BLAS and OpenMP (faiss) threads; 0: the libraries' defaults
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False
    limits: Limits = field(default_factory=Limits)
    batching: BatchConfig = field(default_factory=BatchConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)

    # -- checks and paths ----------------------------------------------------------------------
    def check(self) -> ServeConfig:
        """Raise :class:`ConfigError` for an impossible combination; returns ``self``."""
        self.paths()
        self.limits.check()
        self.batching.check()
        self.recall.check()
        if not 1 <= self.default_k <= self.limits.max_k:
            raise ConfigError(f"the default k ({self.default_k}) must be between 1 and max_k ({self.limits.max_k})")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        _positive("workers", self.workers)
        if self.watch_interval_s < 0:
            raise ConfigError(f"the watch interval must be >= 0 seconds (0 disables it), got {self.watch_interval_s}")
        if self.compute_threads < 0:
            raise ConfigError(f"compute threads must be >= 0 (0: the libraries' defaults), got {self.compute_threads}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be 'text' or 'json', got {self.log_format!r}")
        return self

    def paths(self) -> ModelPaths:
        """Resolve the model dir / tower / index options into the files of one generation."""
        tower = Path(self.user_tower).expanduser().absolute() if self.user_tower else None
        index = Path(self.index).expanduser().absolute() if self.index else None
        embeddings = embedding_ids = None
        if self.model_dir:
            root = Path(self.model_dir).expanduser().absolute()
            if not root.is_dir():
                raise ConfigError(
                    f"{root} is not a directory; give the directory `rechub-index train -o DIR` wrote, "
                    "or --user-tower and --index"
                )
            tower = tower or root / "user_tower.onnx"
            index = index or root / "items.index"
            embeddings, embedding_ids = root / "item_embeddings.npy", root / "item_ids.json"
        if index is None:
            raise ConfigError("nothing to serve: give MODEL_DIR, or --index (with --user-tower for recommendations)")
        if tower is not None and not tower.is_file():
            raise ConfigError(f"the user tower {tower} does not exist (expected the user_tower.onnx of an export)")
        if not (index / "manifest.json").is_file():
            raise ConfigError(f"{index} is not a saved rechub-serving index (no manifest.json)")
        return ModelPaths(tower, index, embeddings, embedding_ids)

    # -- transport to worker processes --------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        data["limits"] = Limits(**data.get("limits", {}))
        data["batching"] = BatchConfig(**data.get("batching", {}))
        data["recall"] = RecallConfig(**data.get("recall", {}))
        return cls(**data)

    @classmethod
    def from_environment(cls) -> ServeConfig:
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise ConfigError(f"{CONFIG_ENV} is not set; start the server with `rechub-index serve`")
        return cls.from_json(text)


def read_admin_token(config: ServeConfig) -> str | None:
    """The admin token from ``--admin-token-file`` or the environment variable; None disables admin endpoints."""
    token: str | None
    if config.admin_token_file:
        path = Path(config.admin_token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the admin token file {path}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"the admin token file {path} is empty")
    else:
        token = os.environ.get(config.admin_token_env, "").strip() or None
    return token


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
