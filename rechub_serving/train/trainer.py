"""MatchTrainer: point-wise, pair-wise and list-wise training of two-tower models.

Batches are gathered with tensor indexing from the prepared arrays (no
DataLoader, no per-sample collation), which is where most of the speed comes
from. Early stopping watches validation Recall@K computed through this SDK.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .._errors import InvalidParameterError
from .evaluate import evaluate_retrieval, most_popular_baseline
from .model import DSSM
from .preprocess import OFFSET, EvalSplit, MatchData

__all__ = ["MatchTrainer"]

logger = logging.getLogger("rechub_serving.train")


class MatchTrainer:
    """Train a :class:`DSSM` on :class:`MatchData`.

    ``mode`` 0: point-wise BCE on the logits (needs data prepared with mode 0);
    1: pair-wise BPR, ``-log sigmoid(s_pos - s_neg)`` (mode-1 data);
    2: list-wise softmax over in-batch negatives (any data; the positives are used),
    with optional log-popularity correction (``logq_correction``) and in-batch
    duplicates of a row's positive masked out.
    Adam with ``weight_decay``; early stopping on validation ``Recall@eval_k``
    with ``earlystop_patience``; the best epoch's weights are restored.
    """

    def __init__(
        self,
        model: DSSM,
        mode: int = 2,
        *,
        optimizer_params: Mapping[str, Any] | None = None,
        n_epoch: int = 10,
        batch_size: int = 1024,
        earlystop_patience: int = 2,
        eval_k: int = 10,
        logq_correction: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
        threads: int | None = None,
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
        self.history: list[dict[str, float]] = []
        self.samples_per_second: float = 0.0

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

    # -- training -----------------------------------------------------------------------------
    def fit(self, data: MatchData) -> list[dict[str, float]]:
        """Train for up to ``n_epoch`` epochs; returns one dict per epoch (loss, val metrics, time).

        ``threads`` (constructor) sets torch's intra-op threads during the fit:
        small towers train faster on one thread than on a busy many-core pool.
        """
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._fit(data)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, data: MatchData) -> list[dict[str, float]]:
        from tqdm.auto import tqdm

        if self.mode == 0 and "label" not in data.train:
            raise InvalidParameterError("mode 0 (point-wise) needs data prepared with mode=0 (negatives with labels)")
        if self.mode == 1 and "neg_items" not in data.train:
            raise InvalidParameterError("mode 1 (pair-wise) needs data prepared with mode=1 (negatives per positive)")
        torch.manual_seed(self.seed)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        t = self._tensors(data)
        n = len(data.train["item"])
        n_batches = max(1, n // self.batch_size) if self.mode == 2 else math.ceil(n / self.batch_size)
        best, best_state, bad = -1.0, None, 0
        for epoch in range(self.n_epoch):
            self.model.train()
            perm = torch.randperm(n, generator=gen).to(self.device)
            total, start = 0.0, time.perf_counter()
            bar = tqdm(
                range(n_batches), desc=f"epoch {epoch + 1}/{self.n_epoch}", disable=not self.progress, leave=False
            )
            for b in bar:
                idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
                loss = self._loss(data, t, idx)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += loss.item()
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{total / (b + 1):.4f}")
            bar.close()
            seconds = time.perf_counter() - start
            seen = min(n, n_batches * self.batch_size)
            self.samples_per_second = seen / max(seconds, 1e-9)
            record = {
                "epoch": epoch + 1,
                "loss": total / n_batches,
                "seconds": seconds,
                "samples_per_s": self.samples_per_second,
            }
            if data.val is not None and len(data.val):
                metric = self.evaluate(data, "val", ks=(self.eval_k,))[f"recall@{self.eval_k}"]
                record[f"val_recall@{self.eval_k}"] = metric
                if metric > best:
                    best, bad = metric, 0
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    bad += 1
            self.history.append(record)
            logger.info("epoch %d: %s", epoch + 1, record)
            if data.val is not None and bad > self.patience - 1 and self.patience > 0:
                logger.info("early stopping after epoch %d (best val recall@%d %.4f)", epoch + 1, self.eval_k, best)
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return self.history

    # -- inference and evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def inference_embedding(
        self,
        mode: str = "user",
        data: MatchData | None = None,
        split: str | EvalSplit = "test",
        inputs: Mapping[str, Any] | None = None,
        batch_size: int = 4096,
    ) -> np.ndarray:
        """Embeddings of the user or item tower (float32, L2-normalised rows).

        ``mode="item"``: every real item of ``data`` (in ``data.catalog`` order),
        or the items given as ``inputs``. ``mode="user"``: the users of a held-out
        ``split`` (``"test"``/``"val"``) of ``data``, or raw tower ``inputs``
        (feature name -> encoded array).
        """
        if mode not in ("user", "item"):
            raise InvalidParameterError(f"mode must be 'user' or 'item', got {mode!r}")
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
        n = len(next(iter(inputs.values())))
        out = []
        for s in range(0, n, batch_size):
            x = {k: torch.as_tensor(np.asarray(v[s : s + batch_size]), device=self.device) for k, v in inputs.items()}
            out.append(tower(x).float().cpu().numpy())
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
