"""Checks of request values, and the translation of schema errors into the server's error shape.

Everything a batch will run is checked here, per request, before the request
joins a batch: a value that passed cannot make the tower or the index fail,
so one client's bad input never fails another client's request that shares
its batch. :func:`translate` turns pydantic's errors into one
:class:`~.errors.RequestError` that names the field (``users[3].age``) and says
what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import RequestError
from .schemas import FLOAT32_MAX, INT64_MAX, INT64_MIN

__all__ = ["FeatureChecker", "translate"]

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _is_id(value: Any) -> bool:
    """A raw categorical value the encoder accepts: a str, or an int that fits int64 (not a bool)."""
    t = type(value)
    return t is str or (t is int and INT64_MIN <= value <= INT64_MAX)


def _is_number(value: Any) -> bool:
    """A number the tower can take: finite once converted to float32 (not a bool)."""
    t = type(value)
    return (t is int or t is float) and math.isfinite(value) and abs(value) <= FLOAT32_MAX


class FeatureChecker:
    """Type checks of each user's raw features against the user tower's input specs."""

    def __init__(self, features: Sequence[Mapping[str, Any]]):
        self.names = [str(spec["name"]) for spec in features]
        self._checks: list[tuple[str, Callable[[Any], str | None]]] = [
            (str(spec["name"]), self._check_for(spec)) for spec in features
        ]

    @staticmethod
    def _check_for(spec: Mapping[str, Any]) -> Callable[[Any], str | None]:
        kind = spec["type"]
        if kind == "sparse":

            def sparse(value: Any) -> str | None:
                if value is None or _is_id(value):
                    return None
                return f"expected a string or an integer (one raw value), got {_type_name(value)}"

            return sparse
        if kind == "sequence":

            def sequence(value: Any) -> str | None:
                if value is None or type(value) is str:
                    return None
                if type(value) is not list:
                    return f"expected a list of ids (strings or integers), got {_type_name(value)}"
                for j, item in enumerate(value):
                    if not _is_id(item):
                        return f"[{j}]: expected a string or an integer id, got {_type_name(item)}"
                return None

            return sequence
        dim = int(spec.get("embed_dim", 1))
        if dim == 1:

            def dense(value: Any) -> str | None:
                if _is_number(value):
                    return None
                return f"expected one finite number (float32 range), got {_type_name(value)}"

            return dense

        def dense_vector(value: Any) -> str | None:
            if type(value) is not list or len(value) != dim:
                got = f"a list of {len(value)}" if type(value) is list else _type_name(value)
                return f"expected a list of {dim} finite numbers, got {got}"
            for j, item in enumerate(value):
                if not _is_number(item):
                    return f"[{j}]: expected a finite number (float32 range), got {_type_name(item)}"
            return None

        return dense_vector

    def check(self, users: Sequence[Mapping[str, Any]]) -> None:
        """Raise a 422 :class:`RequestError` naming ``users[i].feature`` for the first wrong value."""
        for i, user in enumerate(users):
            for name, check in self._checks:
                problem = check(user[name])
                if problem is not None:
                    if problem.startswith("["):
                        index, _, rest = problem.partition(": ")
                        raise RequestError(
                            422, "wrong_type", f"users[{i}].{name}{index}: {rest}", f"users[{i}].{name}{index}"
                        )
                    raise RequestError(422, "wrong_type", f"users[{i}].{name}: {problem}", f"users[{i}].{name}")


# -- schema errors -----------------------------------------------------------------------------------
_DEPTH = {"users": 3, "seen": 3, "exclude": 3, "vectors": 3, "search_params": 2}


def _field(loc: Sequence[Any]) -> str:
    loc = [p for p in loc if p != "body"]
    if not loc:
        return ""
    loc = loc[: _DEPTH.get(str(loc[0]), 1)]
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def translate(errors: Sequence[Mapping[str, Any]], fields: Sequence[str], limits: Any, id_kind: str) -> RequestError:
    """One :class:`RequestError` for the first of pydantic's ``errors`` on a request with top-level ``fields``."""
    if not errors:
        return RequestError(422, "invalid_request", "the request is not valid")
    err = errors[0]
    kind_of = str(err.get("type", ""))
    loc = [p for p in err.get("loc", ()) if p != "body"]
    field = _field(loc)
    top = str(loc[0]) if loc else ""
    given = err.get("input")
    ids = "integers" if id_kind != "str" else "strings"
    if kind_of in ("json_invalid", "json_type"):
        return RequestError(400, "invalid_json", f"the body is not valid JSON ({err.get('msg', 'parse error')})")
    if not loc or (kind_of in ("model_type", "model_attributes_type") and len(loc) <= 1):
        return RequestError(422, "wrong_type", f"the body must be a JSON object with the fields {list(fields)}")
    if kind_of == "extra_forbidden" and len(loc) == 1:
        return RequestError(
            422, "unknown_field", f"{field}: not a field of this request; the fields are {list(fields)}", field
        )
    if kind_of == "missing":
        if top == "users" and len(loc) == 3:
            return RequestError(
                422, "missing_feature", f"{field}: missing feature {loc[2]!r}; every user needs every feature", field
            )
        return RequestError(422, "missing_field", f"{field}: this field is required", field)
    if top in ("users", "vectors") and len(loc) == 1 and kind_of == "too_long":
        what = "users" if top == "users" else "vectors"
        n = (err.get("ctx") or {}).get("actual_length", "too many")
        return RequestError(
            422, f"too_many_{what}",
            f"{field}: {n} {what} in one request; at most {limits.max_users} (split the request)", field,
        )  # fmt: skip
    if top in ("users", "vectors") and len(loc) == 1 and kind_of == "too_short":
        return RequestError(422, "empty_request", f"{field}: give at least one entry", field)
    if top == "k":
        if kind_of in ("greater_than_equal", "less_than_equal"):
            return RequestError(
                422, "k_out_of_range", f"k must be between 1 and {limits.max_k}, got {given!r}", "k"
            )  # fmt: skip
        return RequestError(422, "wrong_type", f"k: expected an integer, got {_type_name(given)}", "k")
    if top in ("seen", "exclude"):
        if len(loc) == 3:
            if kind_of in ("greater_than_equal", "less_than_equal"):
                return RequestError(422, "unknown_id_type", f"{field}: {given!r} is outside the int64 ids", field)
            return RequestError(
                422, "unknown_id_type", f"{field}: this index's item ids are {ids}; got {_type_name(given)}", field
            )
        if len(loc) == 1 and kind_of == "too_long":
            return RequestError(
                422, "too_many_rows", f"{field}: more rows than entries; give one list per entry", field
            )
        return RequestError(422, "wrong_type", f"{field}: expected one list of item ids (or null) per entry", field)
    if top == "vectors":
        if len(loc) == 2 and kind_of in ("too_short", "too_long"):
            n = (err.get("ctx") or {}).get("actual_length", "?")
            return RequestError(
                422, "wrong_dimension", f"{field}: a vector of {n} numbers; this index has dimension "
                f"{(err.get('ctx') or {}).get('min_length') or (err.get('ctx') or {}).get('max_length')}", field,
            )  # fmt: skip
        if len(loc) == 3:
            got = "a non-finite number" if kind_of == "finite_number" else _type_name(given)
            if kind_of in ("greater_than_equal", "less_than_equal"):
                got = f"{given!r}, outside the float32 range"
            return RequestError(422, "wrong_type", f"{field}: expected a finite number, got {got}", field)
        return RequestError(422, "wrong_type", f"{field}: expected a list of numbers", field)
    if top == "users":
        if len(loc) == 2:
            return RequestError(422, "wrong_type", f"{field}: expected an object of feature values", field)
        return RequestError(422, "wrong_type", f"{field}: expected a list of user objects", field)
    if top == "search_params":
        if len(loc) == 1:
            return RequestError(422, "wrong_type", "search_params: expected an object of name: value", field)
        return RequestError(
            422, "wrong_type", f"{field}: a search parameter is a number, a string or a boolean", field
        )  # fmt: skip
    if top == "exclude_seen":
        return RequestError(422, "wrong_type", f"exclude_seen: expected true or false, got {_type_name(given)}", field)
    return RequestError(422, "invalid_request", f"{field}: {err.get('msg', 'invalid value')}", field or None)
