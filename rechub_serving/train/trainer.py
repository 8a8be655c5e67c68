"""MatchTrainer: point-wise, pair-wise and list-wise training of two-tower models.

Batches are gathered with tensor indexing from the prepared arrays (no
DataLoader, no per-sample collation), which is where most of the speed comes
from. Early stopping watches validation Recall@K computed through this SDK.
With the sequence user tower and the list-wise mode, a batch is a set of
whole history windows and every position of a window is a training example
(one causal pass predicts each next item), so an epoch costs one pass per
window instead of one per interaction.

Checkpoints (``model_path=``) are written after every epoch; ``fit(data,
resume=True)`` continues from one. Each epoch's shuffling and dropout are
seeded by ``(seed, epoch)``, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from rechub_serving import InvalidParameterError

from .evaluate import evaluate_retrieval, most_popular_baseline
from .model import DSSM
from .preprocess import OFFSET, PAD, EvalSplit, MatchData

__all__ = ["DEFAULT_MAX_EPOCHS", "DEFAULT_PATIENCE", "DEFAULT_THREADS", "MatchTrainer", "default_threads"]

logger = logging.getLogger("rechub_serving.train")

# torch's intra-op threads while training (see default_threads). Measured in
# docs/benchmarks/train-threads.md.
DEFAULT_THREADS = 1
# Up to this many epochs, stopping after DEFAULT_PATIENCE without a better validation recall
# (docs/benchmarks/train-sweep.md: the best epochs land between 5 and 40).
DEFAULT_MAX_EPOCHS = 100
DEFAULT_PATIENCE = 5


def default_threads() -> int:
    """Threads used when ``threads`` is not given: ``$RECHUB_TRAIN_THREADS`` or :data:`DEFAULT_THREADS`."""
    import os

    value = os.environ.get("RECHUB_TRAIN_THREADS", "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else DEFAULT_THREADS


class MatchTrainer:
    """Train a :class:`DSSM` on :class:`MatchData`.

    ``mode`` 0: point-wise BCE on the logits (needs data prepared with mode 0);
    1: pair-wise BPR, ``-log sigmoid(s_pos - s_neg)`` (mode-1 data);
    2: list-wise softmax over in-batch negatives (any data; the positives are used),
    with optional log-popularity correction (``logq_correction``) and in-batch
    duplicates of a row's positive masked out.
    Adam with ``weight_decay``; early stopping on validation ``Recall@eval_k``
    with ``earlystop_patience``; the best epoch's weights are restored.
    ``threads``: torch's intra-op threads during ``fit`` (default
    :func:`default_threads`). ``model_path``: a directory where a checkpoint
    is written after every epoch (torch-rechub's keyword; it wrote
    ``model.pth`` there): :func:`~rechub_serving.train.load_checkpoint` reads it
    back, ``fit(data, resume=True)`` continues from it. ``window_batch``: history
    windows per batch when the sequence tower trains list-wise (default
    ``batch_size / seq_max_len``, about ``batch_size`` predictions per batch).
    """

    def __init__(
        self,
        model: DSSM,
        mode: int = 2,
        *,
        optimizer_params: Mapping[str, Any] | None = None,
        n_epoch: int = DEFAULT_MAX_EPOCHS,
        batch_size: int = 1024,
        earlystop_patience: int = DEFAULT_PATIENCE,
        eval_k: int = 10,
        logq_correction: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
        threads: int | None = None,
        model_path: str | Path | None = None,
        window_batch: int | None = None,
    ):
        if mode not in (0, 1, 2):
            raise InvalidParameterError(f"mode must be 0 (point-wise), 1 (pair-wise) or 2 (list-wise), got {mode!r}")
        if batch_size < 2 or n_epoch < 1:
            raise InvalidParameterError("batch_size must be >= 2 and n_epoch >= 1")
        self.model = model
        self.mode = mode
        params = {"lr": 1e-3, "weight_decay": 1e-6, **(optimizer_params or {})}
        self.device = torch.device(device)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), **params)
        self.n_epoch = n_epoch
        self.batch_size = batch_size
        self.patience = earlystop_patience
        self.eval_k = eval_k
        self.logq_correction = logq_correction
        self.seed = seed
        self.progress = progress
        self.threads = threads
        self.model_path = Path(model_path) if model_path is not None else None
        self.window_batch = window_batch
        self.history: list[dict[str, float]] = []
        self.samples_per_second: float = 0.0
        self._epoch = 0  # epochs finished (survives a resume)
        self._best, self._bad, self._best_state = -1.0, 0, None
        self._stopped = False  # early stopping fired (a resumed run does not train further)

    # -- data on the device --------------------------------------------------------------
    def _tensors(self, data: MatchData) -> dict[str, Any]:
        dev = self.device
        t = {
            "user_table": {k: torch.as_tensor(v, device=dev) for k, v in data.user_table.items()},
            "item_table": {k: torch.as_tensor(v, device=dev) for k, v in data.item_table.items()},
            "hist": torch.as_tensor(data.train_hist, device=dev),
            "train": {k: torch.as_tensor(v, device=dev) for k, v in data.train.items()},
        }
        if self.logq_correction:
            pop = torch.as_tensor(data.item_popularity, dtype=torch.float32, device=dev)
            t["log_pop"] = torch.log((pop + 1.0) / (pop.sum() + len(pop)))
        return t

    def _user_x(self, data: MatchData, t: dict, user: torch.Tensor, hist: torch.Tensor) -> dict[str, torch.Tensor]:
        x = {f: t["user_table"][f][user] for f in data.user_features}
        x[data.hist_col] = hist
        return x

    def _item_x(self, data: MatchData, t: dict, item: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f: t["item_table"][f][item] for f in data.item_features}

    # -- losses ----------------------------------------------------------------------------
    def _loss(self, data: MatchData, t: dict, idx: torch.Tensor) -> torch.Tensor:
        tr = t["train"]
        user, item = tr["user"][idx], tr["item"][idx]
        ux = self._user_x(data, t, user, t["hist"][tr["row"][idx]])
        temp = self.model.temperature
        u = self.model.user_embedding(ux)
        if self.mode == 0:
            i = self.model.item_embedding(self._item_x(data, t, item))
            logits = (u * i).sum(-1) / temp
            return F.binary_cross_entropy_with_logits(logits, tr["label"][idx])
        if self.mode == 1:
            neg = tr["neg_items"][idx]  # (B, r)
            i = self.model.item_embedding(self._item_x(data, t, item))
            n = self.model.item_embedding(self._item_x(data, t, neg.reshape(-1))).view(neg.shape[0], neg.shape[1], -1)
            s_pos = (u * i).sum(-1, keepdim=True) / temp
            s_neg = torch.einsum("bd,brd->br", u, n) / temp
            return -F.logsigmoid(s_pos - s_neg).mean()
        i = self.model.item_embedding(self._item_x(data, t, item))
        logits = u @ i.T / temp
        if self.logq_correction:
            logits = logits - t["log_pop"][item].unsqueeze(0)
        same = item.unsqueeze(0) == item.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(item), device=logits.device))

    def _window_loss(self, data: MatchData, t: dict, idx: torch.Tensor) -> torch.Tensor:
        """List-wise loss at every position of a batch of history windows (sequence tower).

        The candidates are the distinct target items of the batch (a sampled
        softmax whose samples are the batch's own positives), with the same
        log-popularity correction as the row-wise list-wise loss.
        """
        w = t["windows"]
        user, hist, target = w["user"][idx], w["hist"][idx], w["target"][idx]
        states = self.model.user_states(self._user_x(data, t, user, hist))  # (B, L, d)
        valid = target != PAD
        u = states[valid]
        candidates, labels = torch.unique(target[valid], return_inverse=True)
        i = self.model.item_embedding(self._item_x(data, t, candidates))
        logits = u @ i.T / self.model.temperature
        if self.logq_correction:
            logits = logits - t["log_pop"][candidates].unsqueeze(0)
        return F.cross_entropy(logits, labels)

    def _windowed(self, data: MatchData) -> bool:
        return (
            self.mode == 2
            and getattr(self.model, "user_tower_kind", "mlp") == "sequence"
            and len(data.windows.get("target", ())) > 0
        )

    # -- training -----------------------------------------------------------------------------
    def fit(self, data: MatchData, *, resume: bool = False) -> list[dict[str, float]]:
        """Train for up to ``n_epoch`` epochs in all; returns one dict per epoch (loss, val metrics, time).

        ``resume=True`` continues from the checkpoint in ``model_path`` (its
        last weights, optimizer state, epoch count and early-stopping state):
        the run ends where an uninterrupted run of ``n_epoch`` epochs would.
        ``threads`` (constructor) sets torch's intra-op threads during the fit.
        """
        if resume:
            self._resume(data)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads or default_threads())
        try:
            return self._fit(data)
        finally:
            torch.set_num_threads(previous)

    def _resume(self, data: MatchData) -> None:
        from .checkpoint import load_weights, read_config

        if self.model_path is None:
            raise InvalidParameterError("resume=True needs model_path= (the checkpoint directory to continue from)")
        if not (self.model_path / "trainer.pt").is_file():
            raise InvalidParameterError(
                f"{self.model_path} holds no trainer state to resume from; train once with model_path= first"
            )
        config = read_config(self.model_path)
        if config["model"] != self.model.config():
            raise InvalidParameterError(
                f"the checkpoint in {self.model_path} has another architecture than this trainer's model; "
                "rebuild the model with load_checkpoint(path).model or MatchTrainer.from_checkpoint(path)"
            )
        sizes = config.get("vocabulary_sizes")
        if sizes and sizes != {k: len(v) for k, v in data.vocabularies.items()}:
            raise InvalidParameterError(
                f"the data's vocabularies differ from the checkpoint's in {self.model_path}; prepare the same data "
                "(same interactions, same seed) to resume"
            )
        state = torch.load(self.model_path / "trainer.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(load_weights(self.model_path, "last"))
        self.model.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self._epoch = int(state["epoch"])
        self._best, self._bad = float(state["best"]), int(state["bad"])
        self._stopped = bool(state.get("stopped", False))
        self.history = [dict(h) for h in state["history"]]
        self._best_state = load_weights(self.model_path, "best") if state.get("has_best") else None
        logger.info("resuming from %s after epoch %d", self.model_path, self._epoch)

    def save(self, directory: str | Path, data: MatchData | None = None) -> Path:
        """Write a checkpoint: the best weights, the last ones, the trainer state and ``data``'s vocabularies."""
        from .checkpoint import save_checkpoint

        state = {
            "optimizer": self.optimizer.state_dict(),
            "epoch": self._epoch,
            "best": self._best,
            "bad": self._bad,
            "history": self.history,
            "has_best": self._best_state is not None,
            "stopped": self._stopped,
            "mode": self.mode,
            "seed": self.seed,
        }
        extra = {}
        if data is not None:
            extra = {
                "data": {"user_col": data.user_col, "item_col": data.item_col, "hist_col": data.hist_col,
                         "user_features": data.user_features, "item_features": data.item_features,
                         "seq_max_len": data.seq_max_len, "mode": data.mode},
                "vocabulary_sizes": {k: len(v) for k, v in data.vocabularies.items()},
            }  # fmt: skip
        return save_checkpoint(
            directory,
            self.model,
            vocabularies=data.vocabularies if data is not None else None,
            trainer_state=state,
            best_state=self._best_state,
            extra=extra,
        )

    @classmethod
    def from_checkpoint(cls, directory: str | Path, **kwargs: Any) -> MatchTrainer:
        """A trainer over the model of a checkpoint, writing to the same directory; ``fit(data, resume=True)``."""
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(directory)
        state = ckpt.trainer_state or {}
        kwargs.setdefault("mode", state.get("mode", 2))
        kwargs.setdefault("seed", state.get("seed", 0))
        kwargs.setdefault("model_path", directory)
        return cls(ckpt.model, **kwargs)

    def _fit(self, data: MatchData) -> list[dict[str, float]]:
        from tqdm.auto import tqdm

        if self.mode == 0 and "label" not in data.train:
            raise InvalidParameterError("mode 0 (point-wise) needs data prepared with mode=0 (negatives with labels)")
        if self.mode == 1 and "neg_items" not in data.train:
            raise InvalidParameterError("mode 1 (pair-wise) needs data prepared with mode=1 (negatives per positive)")
        t = self._tensors(data)
        windowed = self._windowed(data)
        if windowed:
            t["windows"] = {k: torch.as_tensor(v, device=self.device) for k, v in data.windows.items()}
            n = len(data.windows["target"])
            batch = self.window_batch or max(2, round(self.batch_size / data.seq_max_len))
            n_batches = math.ceil(n / batch)
            loss_fn = self._window_loss
        else:
            n = len(data.train["item"])
            batch = self.batch_size
            n_batches = max(1, n // batch) if self.mode == 2 else math.ceil(n / batch)
            loss_fn = self._loss
        validate = data.val is not None and len(data.val) > 0
        while self._epoch < self.n_epoch and not self._stopped:
            epoch = self._epoch
            torch.manual_seed(self.seed * 1_000_003 + epoch)  # dropout: reproducible per epoch, also after a resume
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + epoch)
            self.model.train()
            perm = torch.randperm(n, generator=gen).to(self.device)
            total, start = 0.0, time.perf_counter()
            bar = tqdm(
                range(n_batches), desc=f"epoch {epoch + 1}/{self.n_epoch}", disable=not self.progress, leave=False
            )
            for b in bar:
                idx = perm[b * batch : (b + 1) * batch]
                loss = loss_fn(data, t, idx)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += loss.item()
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{total / (b + 1):.4f}")
            bar.close()
            seconds = time.perf_counter() - start
            seen = int((t["windows"]["target"] != PAD).sum()) if windowed else min(n, n_batches * batch)
            self.samples_per_second = seen / max(seconds, 1e-9)
            record = {
                "epoch": epoch + 1,
                "loss": total / n_batches,
                "seconds": seconds,
                "samples_per_s": self.samples_per_second,
            }
            if validate:
                metric = self.evaluate(data, "val", ks=(self.eval_k,))[f"recall@{self.eval_k}"]
                record[f"val_recall@{self.eval_k}"] = metric
                if metric > self._best:
                    self._best, self._bad = metric, 0
                    self._best_state = copy.deepcopy(self.model.state_dict())
                else:
                    self._bad += 1
            self.history.append(record)
            self._epoch += 1
            logger.info("epoch %d: %s", epoch + 1, record)
            self._stopped = validate and self.patience > 0 and self._bad >= self.patience
            if self.model_path is not None:
                self.save(self.model_path, data)
            if self._stopped:
                logger.info(
                    "early stopping after epoch %d (best val recall@%d %.4f)", epoch + 1, self.eval_k, self._best
                )
                break
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        self.model.eval()
        return self.history

    # -- inference and evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def inference_embedding(
        self,
        mode: Any = "user",
        data: Any = None,
        split: Any = "test",
        inputs: Any = None,
        batch_size: int = 4096,
        *,
        model: torch.nn.Module | None = None,
        data_loader: Any = None,
        model_path: str | Path | None = None,
    ) -> np.ndarray:
        """Embeddings of the user or item tower (float32, L2-normalised rows).

        ``mode="item"``: every real item of ``data`` (in ``data.catalog`` order),
        or the items given as ``inputs``. ``mode="user"``: the users of a held-out
        ``split`` (``"test"``/``"val"``) of ``data``, or raw tower ``inputs``
        (feature name -> encoded array).

        torch-rechub's call ``inference_embedding(model, mode, data_loader,
        model_path)`` (positional or by keyword) also works: ``model`` must be
        this trainer's model, ``data_loader`` is a :class:`MatchData`, a dict
        of encoded arrays or an iterable of such dict batches (a torch
        ``DataLoader``), and ``model_path`` a checkpoint directory whose best
        weights are loaded first; like torch-rechub's, that call returns a CPU
        torch tensor.
        """
        compat = isinstance(mode, torch.nn.Module) or model is not None or data_loader is not None
        if compat:  # torch-rechub's call returns what torch-rechub returned: a CPU torch tensor
            args = (mode, data, split, inputs, batch_size)
            return torch.from_numpy(
                self._inference_compat(*args, model=model, data_loader=data_loader, model_path=model_path)
            )
        return self._inference_compat(mode, data, split, inputs, batch_size, model_path=model_path)

    def _inference_compat(
        self,
        mode: Any,
        data: Any,
        split: Any,
        inputs: Any,
        batch_size: int,
        *,
        model: torch.nn.Module | None = None,
        data_loader: Any = None,
        model_path: str | Path | None = None,
    ) -> np.ndarray:
        if isinstance(mode, torch.nn.Module):  # torch-rechub's positional order: (model, mode, data_loader, model_path)
            model, mode, data_loader, model_path = (
                mode,
                data,
                split if data_loader is None else data_loader,
                (inputs if model_path is None else model_path),
            )
            data, split, inputs = None, "test", None
        if model is not None and model is not self.model:
            raise InvalidParameterError(
                "model= must be this trainer's model (rechub-serving trainers own their model); "
                "call inference_embedding on a MatchTrainer built around that model"
            )
        if mode not in ("user", "item"):
            raise InvalidParameterError(f"mode must be 'user' or 'item', got {mode!r}")
        if model_path is not None:
            from .checkpoint import load_weights

            self.model.load_state_dict(load_weights(model_path, "best"))
            self.model.to(self.device)
        if data_loader is not None:
            if isinstance(data_loader, MatchData):
                data = data_loader
            elif isinstance(data_loader, Mapping):
                inputs = data_loader
            else:
                return self._embed_batches(mode, data_loader)
        self.model.eval()
        if inputs is None:
            if data is None:
                raise InvalidParameterError("pass data= (a MatchData) or inputs= (feature name -> encoded array)")
            if mode == "item":
                inputs = data.item_inputs(data.catalog)
            else:
                s = getattr(data, split) if isinstance(split, str) else split
                inputs = data.user_inputs(s.user, s.hist)
        tower = self.model.user_tower if mode == "user" else self.model.item_tower
        names = [f.name for f in (self.model.user_features if mode == "user" else self.model.item_features)]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InvalidParameterError(
                f"the {mode} tower needs the features {missing}; the inputs have {list(inputs)}"
            )
        n = len(next(iter(inputs.values())))
        out = []
        for s in range(0, n, batch_size):
            x = {k: torch.as_tensor(np.asarray(inputs[k][s : s + batch_size]), device=self.device) for k in names}
            out.append(tower(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.embed_dim), np.float32)

    def _embed_batches(self, mode: str, batches: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Run a tower over an iterable of feature dicts (a DataLoader's batches)."""
        out = [
            self._inference_compat(mode, None, "test", {k: np.asarray(v) for k, v in b.items()}, 4096) for b in batches
        ]
        return np.concatenate(out) if out else np.zeros((0, self.model.embed_dim), np.float32)

    def evaluate(
        self, data: MatchData, split: str = "test", ks: Sequence[int] = (10, 50), builder: Any = None
    ) -> dict[str, float]:
        """Recall/Hit/NDCG@K over all items, each user's earlier items excluded (through the SDK index)."""
        s: EvalSplit = getattr(data, split)
        items = self.inference_embedding("item", data)
        users = self.inference_embedding("user", data, split)
        return evaluate_retrieval(
            users, items, s.target, item_ids=data.catalog, exclude=s.seen(data.sorted_items), ks=ks, builder=builder
        )


def popularity_baseline(data: MatchData, split: str = "test", ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """The most-popular baseline on a held-out split of ``data`` (same exclusions as the model)."""
    s: EvalSplit = getattr(data, split)
    return most_popular_baseline(
        data.item_popularity[OFFSET:], len(s), s.target, item_ids=data.catalog, exclude=s.seen(data.sorted_items), ks=ks
    )
