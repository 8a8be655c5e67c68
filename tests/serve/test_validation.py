"""Feature value checks against a tower's input specs (sparse, sequence, dense of one or more numbers)."""

from __future__ import annotations

import pytest

from rechub_serving.serve.errors import RequestError
from rechub_serving.serve.validation import FeatureChecker

SPECS = [
    {"name": "user_id", "type": "sparse"},
    {"name": "hist", "type": "sequence"},
    {"name": "price", "type": "dense", "embed_dim": 1},
    {"name": "emb", "type": "dense", "embed_dim": 3},
]
GOOD = {"user_id": "u1", "hist": [1, "2"], "price": 9.5, "emb": [0.0, 1, -2.5]}


@pytest.mark.parametrize(
    "user",
    [GOOD, {**GOOD, "user_id": 7, "hist": "1|2"}, {**GOOD, "user_id": None, "hist": None, "price": 3}],
)
def test_good_values_pass(user):
    FeatureChecker(SPECS).check([user])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"user_id": [1]}, "users[1].user_id"),
        ({"user_id": 1.0}, "users[1].user_id"),
        ({"user_id": False}, "users[1].user_id"),
        ({"user_id": 2**63}, "users[1].user_id"),
        ({"hist": [1, None]}, "users[1].hist[1]"),
        ({"hist": {"a": 1}}, "users[1].hist"),
        ({"price": "9.5"}, "users[1].price"),
        ({"price": True}, "users[1].price"),
        ({"price": float("nan")}, "users[1].price"),
        ({"price": 1e39}, "users[1].price"),
        ({"emb": [0.0, 1.0]}, "users[1].emb"),
        ({"emb": 1.0}, "users[1].emb"),
        ({"emb": [0.0, "x", 1.0]}, "users[1].emb[1]"),
        ({"emb": [0.0, float("inf"), 1.0]}, "users[1].emb[1]"),
    ],
)
def test_wrong_values_name_the_user_and_feature(change, field):
    with pytest.raises(RequestError) as raised:
        FeatureChecker(SPECS).check([GOOD, {**GOOD, **change}])
    error = raised.value
    assert (error.status, error.kind, error.field) == (422, "wrong_type", field)
    assert error.message.startswith(field + ": expected")
