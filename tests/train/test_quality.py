"""On synthetic data with planted structure, the DSSM beats most-popular widely in every mode and tower."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("pandas")

from rechub_serving.train import make_synthetic, train_dssm


@pytest.fixture(scope="module")
def data():
    return make_synthetic(500, 300, 15000, in_cluster=0.9, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode, tower", [(0, "mlp"), (1, "mlp"), (2, "mlp"), (2, "sequence")])
def test_dssm_beats_most_popular(data, mode, tower):
    result = train_dssm(
        data, mode=mode, user_tower=tower, n_epoch=6, batch_size=256, lr=3e-3, neg_ratio=2, ks=(10,), progress=False,
        threads=1, seq_max_len=20,
    )  # fmt: skip
    for metric in ("recall@10", "ndcg@10"):
        assert result.metrics[metric] >= 1.5 * result.baseline[metric], (metric, result.metrics, result.baseline)
