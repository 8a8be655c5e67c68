"""Request and response models: what the endpoints accept and return, and so what the OpenAPI document says.

The recommend request's user object is built from the loaded user tower's
metadata (one property per feature, typed by the feature's kind), and the
``seen`` / ``exclude`` ids are typed by the index's id kind, so the OpenAPI
description names exactly the features and id type this server takes. The
values of each feature are checked by :mod:`.validation` with messages that
name the user and the feature; the schema here documents the same rules.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, WithJsonSchema
from pydantic import create_model as _create_model
from typing_extensions import TypedDict

from .config import Limits

__all__ = [
    "ErrorResponse",
    "HealthResponse",
    "RecommendResponse",
    "ReloadResponse",
    "SearchResponse",
    "recommend_request_model",
    "search_request_model",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38

SearchParam = StrictInt | StrictFloat | StrictStr | StrictBool


def feature_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of one raw feature value, from the tower's input spec."""
    name, kind = spec["name"], spec["type"]
    if kind == "sparse":
        return {
            "type": ["integer", "string", "null"],
            "description": f"raw value of {name!r} (as in the training data); unknown values and null use the "
            "model's unknown slot",
        }
    if kind == "sequence":
        return {
            "anyOf": [
                {"type": "array", "items": {"type": ["integer", "string"]}},
                {"type": "string", "description": "ids separated by '|' or ','"},
                {"type": "null"},
            ],
            "description": f"raw values of {name!r}, oldest first (the last seq_max_len are used); "
            "item ids here are also excluded from the answer unless exclude_seen is false",
        }
    dim = int(spec.get("embed_dim", 1))
    if dim == 1:
        return {"type": "number", "description": f"the real value of {name!r}"}
    return {
        "type": "array",
        "items": {"type": "number"},
        "minItems": dim,
        "maxItems": dim,
        "description": f"the {dim} real values of {name!r}",
    }


def _id_type(id_kind: str) -> Any:
    if id_kind == "str":
        return StrictStr
    return Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]


def _id_rows(id_kind: str, max_users: int, description: str) -> tuple[Any, Any]:
    item: Any = _id_type(id_kind)
    row: Any = list[item] | None
    return (list[row] | None, Field(default=None, max_length=max_users, description=description))


def _k(limits: Limits, default_k: int) -> tuple[Any, Any]:
    return (
        Annotated[StrictInt, Field(ge=1, le=limits.max_k)] | None,
        Field(default=None, description=f"results per user, 1..{limits.max_k} (default {default_k})"),
    )


def _search_params() -> tuple[Any, Any]:
    return (
        dict[str, SearchParam],
        Field(
            default_factory=dict,
            description="search parameters of the index's backend for this request only (ef_search, nprobe, ...)",
        ),
    )


def recommend_request_model(features: list[dict[str, Any]], id_kind: str, limits: Limits, default_k: int) -> type:
    """The body model of ``POST /v1/recommend`` for a tower with these ``features`` (its metadata ``inputs``)."""
    props = {
        spec["name"]: Annotated[Any, WithJsonSchema(feature_schema(spec))]
        for spec in features
    }  # fmt: skip
    user: Any = TypedDict("UserFeatures", props)  # type: ignore[misc]
    setattr(user, "__pydantic_config__", ConfigDict(extra="ignore"))  # noqa: B010 - a dynamic TypedDict
    users: Any = (
        Annotated[
            list[user],
            Field(
                min_length=1,
                max_length=limits.max_users,
                description="the users' raw features, one object per user; other keys are ignored",
            ),
        ],
        ...,
    )
    return _create_model(
        "RecommendRequest",
        __config__=ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"users": [_example_user(features)], "k": default_k}]},
        ),
        users=users,
        k=_k(limits, default_k),
        seen=_id_rows(id_kind, limits.max_users, "per user, more item ids to exclude (one list or null per user)"),
        exclude_seen=(StrictBool, Field(default=True, description="exclude the history and seen ids")),
        search_params=_search_params(),
    )


def search_request_model(dim: int, id_kind: str, limits: Limits, default_k: int) -> type:
    """The body model of ``POST /v1/search`` for an index of dimension ``dim``."""
    number = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
    vector = Annotated[
        list[number],
        Field(min_length=dim, max_length=dim, description=f"a query vector of {dim} finite numbers"),
    ]
    return _create_model(
        "SearchRequest",
        __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": [{"vectors": [[0.1] * dim], "k": default_k}]}
        ),
        vectors=(Annotated[list[vector], Field(min_length=1, max_length=limits.max_users)], ...),
        k=_k(limits, default_k),
        exclude=_id_rows(id_kind, limits.max_users, "per vector, item ids to exclude (one list or null each)"),
        search_params=_search_params(),
    )


def _example_user(features: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in features:
        if spec["type"] == "sparse":
            out[spec["name"]] = 1
        elif spec["type"] == "sequence":
            out[spec["name"]] = [1, 2, 3]
        else:
            dim = int(spec.get("embed_dim", 1))
            out[spec["name"]] = 0.0 if dim == 1 else [0.0] * dim
    return out


# -- responses ---------------------------------------------------------------------------------------
ItemId = StrictInt | StrictStr


class UserRecommendations(BaseModel):
    ids: list[ItemId] = Field(description="raw item ids, best first (fewer than k when the index has fewer)")
    scores: list[float] = Field(description="higher is better (cosine or inner product; -squared L2 for l2)")


class RecommendResponse(BaseModel):
    results: list[UserRecommendations] = Field(description="one entry per user, in request order")
    generation: int = Field(description="the model generation that answered (grows on every hot swap)")
    model_hash: str | None = Field(description="the model hash of the tower and index that answered")


class Neighbours(BaseModel):
    ids: list[ItemId]
    distances: list[float] = Field(description="the metric's distance: squared L2 ascending, ip/cosine descending")


class SearchResponse(BaseModel):
    results: list[Neighbours]
    generation: int
    metric: str


class HealthResponse(BaseModel):
    status: str
    generation: int | None = None


class ReloadResponse(BaseModel):
    swapped: bool
    generation: int
    message: str


class ErrorDetail(BaseModel):
    kind: str = Field(description="machine-readable: missing_feature, wrong_type, k_out_of_range, ...")
    message: str = Field(description="what was wrong and what was expected")
    field: str | None = Field(default=None, description="the request field, e.g. users[2].age or seen[0][1]")


class ErrorResponse(BaseModel):
    error: ErrorDetail
