"""Parameter schemas: every backend declares its parameters once.

A :class:`Param` names a parameter, its type, default, aliases (torch-rechub's
spellings among them) and bounds, and says whether it is a *search* parameter
(overridable per query) or a *build* parameter. :func:`resolve_params` is the
one place where names are matched, aliases resolved and values checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import InvalidParameterError, UnknownParameterError

__all__ = ["Param", "resolve_params"]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    """One backend parameter.

    ``type`` is ``int``, ``float``, ``str`` or ``bool``; ``None`` as a value is
    allowed only when ``default`` is None (meaning "choose for me").
    ``choices`` restricts str values (matched case-insensitively, returned as
    written in ``choices``); ``minimum``/``maximum`` bound numbers.
    ``check`` may raise ``ValueError`` for anything else. ``runtime`` marks
    options of the running process (threads, mmap, a server address) that are
    not part of the saved index; ``secret`` ones are never written or shown.
    """

    name: str
    type: type
    default: Any = None
    doc: str = ""
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    search: bool = False
    runtime: bool = False
    secret: bool = False
    check: Callable[[Any], Any] | None = field(default=None, compare=False)

    def coerce(self, value: Any, backend: str) -> Any:
        """Return ``value`` converted to this parameter's type, or raise."""
        if value is None:
            if self.default is None:
                return None
            raise InvalidParameterError(f"{backend}: {self.name} cannot be None; {self._expected()}")
        kind = self.type
        ok = False
        if kind is bool:
            ok = isinstance(value, (bool, np.bool_))
            value = bool(value) if ok else value
        elif kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            value = int(value) if ok else value
        elif kind is float:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            value = float(value) if ok else value
        elif kind is str:
            ok = isinstance(value, str)
        if not ok:
            raise InvalidParameterError(
                f"{backend}: {self.name}={value!r} has type {type(value).__name__}; {self._expected()}"
            )
        if self.choices is not None:
            lowered = {str(c).lower(): c for c in self.choices}
            if str(value).lower() not in lowered:
                raise InvalidParameterError(
                    f"{backend}: {self.name}={value!r} is not allowed; choose one of "
                    + ", ".join(map(repr, self.choices))
                )
            value = lowered[str(value).lower()]
        if self.minimum is not None and value < self.minimum:
            raise InvalidParameterError(f"{backend}: {self.name}={value!r} is too small; {self._expected()}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidParameterError(f"{backend}: {self.name}={value!r} is too large; {self._expected()}")
        if self.check is not None:
            try:
                value = self.check(value) or value
            except ValueError as exc:
                raise InvalidParameterError(f"{backend}: {self.name}={value!r}: {exc}") from None
        return value

    def _expected(self) -> str:
        text = f"expected {_TYPE_NAMES.get(self.type, self.type.__name__)}"
        if self.minimum is not None and self.maximum is not None:
            text += f" between {self.minimum:g} and {self.maximum:g}"
        elif self.minimum is not None:
            text += f" >= {self.minimum:g}"
        elif self.maximum is not None:
            text += f" <= {self.maximum:g}"
        return text

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (for ``rechub-index backends``)."""
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "search": self.search,
            "runtime": self.runtime,
            "aliases": list(self.aliases),
            "choices": list(self.choices) if self.choices else None,
            "doc": self.doc,
        }


def _lookup_table(schema: Iterable[Param]) -> dict[str, Param]:
    table: dict[str, Param] = {}
    for param in schema:
        for key in (param.name, *param.aliases):
            table[key] = param
    return table


def resolve_params(
    schema: Iterable[Param],
    given: Mapping[str, Any],
    backend: str,
    *,
    search_only: bool = False,
) -> dict[str, Any]:
    """Match ``given`` against ``schema``; return ``{canonical name: value}``.

    Unknown names raise :class:`UnknownParameterError` listing the valid ones
    (with a close match suggested); a parameter given twice under two aliases,
    a wrong type or a bad value raise :class:`InvalidParameterError`. With
    ``search_only`` a build parameter is rejected (it cannot change per query).
    Only the given parameters are returned: defaults are applied by the caller.
    """
    params = list(schema)
    table = _lookup_table(params)
    folded = {key.lower(): p for key, p in table.items()}
    out: dict[str, Any] = {}
    for key, value in given.items():
        param = table.get(key) or folded.get(key.lower())
        if param is None:
            valid = sorted(p.name for p in params if p.search or not search_only)
            close = difflib.get_close_matches(key, list(table), n=1)
            hint = f" Did you mean {table[close[0]].name!r}?" if close else ""
            where = "search parameter" if search_only else "parameter"
            raise UnknownParameterError(
                f"{backend} has no {where} {key!r}.{hint} Valid: {', '.join(valid) or '(none)'}"
            )
        if search_only and not param.search:
            raise InvalidParameterError(
                f"{backend}: {param.name} is a build parameter and cannot change per query; "
                "pass it to builder_factory()"
            )
        if param.name in out:
            raise InvalidParameterError(f"{backend}: {param.name} was given twice (as {key!r} and an alias)")
        out[param.name] = param.coerce(value, backend)
    return out
