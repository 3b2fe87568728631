"""Strict decoding of server frames that still ignores keys this SDK does not know.

Types, ranges and required fields are checked by the protocol's strict decoders (a server that
sends a string where a number belongs is a bug worth surfacing), but PROTOCOL.md lets a server
add fields within seatd.v1 and asks clients to ignore unknown keys. So when, and only when, the
strict decoder refuses an unknown field, the unknown keys are pruned (recursively, following the
dataclass' fields) and the data decoded again: the common path costs nothing extra.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from protocol._validate import ValidationError, decoder

__all__ = ["tolerant_decoder"]

T = TypeVar("T")
_UNKNOWN = "unknown field"


def tolerant_decoder(cls: type[T], ignore: Collection[str] = ()) -> Callable[[object], T]:
    """Like ``decoder(cls)``, but unknown keys (at any depth) are dropped instead of refused."""
    strict = decoder(cls, ignore=frozenset(ignore))

    def decode(data: object) -> T:
        try:
            return strict(data)
        except ValidationError as error:
            if error.reason != _UNKNOWN:
                raise
        return strict(_prune(cls, data, frozenset(ignore)))

    return decode


def _prune(cls: type[Any], data: object, keep: frozenset[str] = frozenset()) -> object:
    if not isinstance(data, dict):
        return data
    hints = _hints(cls)
    return {
        key: _prune_value(hints[key], value) if key in hints else value
        for key, value in data.items()
        if key in hints or key in keep
    }


def _prune_value(tp: Any, value: object) -> object:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if value is not None and arg is not type(None):
                return _prune_value(arg, value)
        return value
    if origin is tuple and isinstance(value, list):
        item = typing.get_args(tp)[0]
        return [_prune_value(item, element) for element in value]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _prune(tp, value)
    return value


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        names = {f.name for f in dataclasses.fields(cls)}
        hints = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
        _HINTS[cls] = hints
    return hints
