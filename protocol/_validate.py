"""Strict, declarative validation of parsed JSON into dataclasses, plus JSON Schema.

Why not pydantic/msgspec: the ``protocol`` package must depend on the stdlib only, and the
wire format is small enough that a compiled-closure validator is fast and easy to audit.

Message classes declare constraints with :func:`spec`; :func:`decoder` compiles one
validating constructor per class (type hints are resolved once, at build time);
:func:`to_json_schema` publishes the same contract; :func:`to_plain` turns replies back into
JSON-ready data.  Error reasons never echo client-supplied values, so they are safe to return
to clients (object keys in ``path`` are JSON-quoted and truncated).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import threading
import types
import typing
from collections.abc import Callable, Collection, Mapping
from operator import attrgetter
from typing import Any, Final, Literal, TypeVar, Union, get_args, get_origin

__all__ = ["ValidationError", "decoder", "spec", "to_json_schema", "to_plain"]

T = TypeVar("T")
_Converter = Callable[[Any], Any]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_KEY_LEN: Final = 256
_META_KEY: Final = "spec"
_MISSING: Final[Any] = dataclasses.MISSING
_NONE_TYPE: Final = type(None)
_JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KIND_NAMES: Final[dict[type, str]] = {
    _NONE_TYPE: "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


# --------------------------------------------------------------------------- errors


class ValidationError(ValueError):
    """Invalid client input: ``path`` says where (``$.seats[2].seat_id``), ``reason`` what."""

    path: str
    reason: str

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Invalid(Exception):
    """Internal failure; path segments are collected innermost-first while unwinding.

    Building the path lazily keeps the success path free of string formatting.
    """

    __slots__ = ("parts", "reason")

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []

    @property
    def path(self) -> str:
        return "$" + "".join(reversed(self.parts))


def _kind(value: object) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_kind(value)}")


def _key_segment(key: object) -> str:
    """Path segment for an object key: ``.name`` or ``["quoted key"]`` (JSON-escaped, capped)."""
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return "." + key if len(key) <= 64 else "." + key[:64] + "..."
    text = key if isinstance(key, str) else repr(key)
    if len(text) > 64:
        return "[" + json.dumps(text[:64]) + "...]"
    return "[" + json.dumps(text) + "]"


def _amount(n: int | float, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --------------------------------------------------------------------------- constraints


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a JSON Schema (ECMA-262) pattern with matching Python semantics.

    Python's ``$`` also matches before a trailing newline, which would let ``"abc\\n"`` pass
    ``^[a-z]+$``; every unescaped ``$`` outside a character class becomes ``\\Z``.  ``re.ASCII``
    makes ``\\d``/``\\w``/``\\b`` ASCII-only as in ECMA-262.  Matching is a *search*, as in
    JSON Schema, so anchor patterns explicitly.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return re.compile("".join(out), re.ASCII)


def _check_count(name: str, value: object) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise TypeError(f"{name} must be a non-negative int, got {value!r}")


def _check_bound(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite int or float, got {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Constraints:
    """Checked constraint bundle stored in ``field.metadata["spec"]``."""

    min_len: int | None = None
    max_len: int | None = None
    pattern: str | None = None
    ge: int | float | None = None
    le: int | float | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique: bool = False
    item: _Constraints | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        for name in ("min_len", "max_len", "min_items", "max_items"):
            _check_count(name, getattr(self, name))
        _check_bound("ge", self.ge)
        _check_bound("le", self.le)
        for lo, hi in (("min_len", "max_len"), ("min_items", "max_items"), ("ge", "le")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo}={a!r} is greater than {hi}={b!r}")
        if type(self.unique) is not bool:
            raise TypeError(f"unique must be a bool, got {self.unique!r}")
        if self.pattern is not None:
            if not isinstance(self.pattern, str):
                raise TypeError(f"pattern must be a str, got {self.pattern!r}")
            try:
                _compile_pattern(self.pattern)
            except re.error as exc:
                raise ValueError(f"invalid pattern {self.pattern!r}: {exc}") from exc
        if self.description is not None and not isinstance(self.description, str):
            raise TypeError(f"description must be a str, got {self.description!r}")

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> _Constraints:
        """Build the element constraints given to ``spec(item=...)`` (may nest ``item``)."""
        if not isinstance(item, Mapping):
            raise TypeError(f"item must be a dict of constraints, got {item!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(item) - known)
        if unknown:
            raise TypeError(f"unknown item constraint(s): {', '.join(unknown)}")
        kwargs = dict(item)
        if kwargs.get("item") is not None:
            kwargs["item"] = cls.from_item(kwargs["item"])
        return cls(**kwargs)

    def used(self) -> set[str]:
        """Names of the constraints that are set (``description`` is not a constraint)."""
        return {
            f.name
            for f in dataclasses.fields(self)
            if f.name != "description" and getattr(self, f.name) != f.default
        }


_NO_CONSTRAINTS: Final = _Constraints()


def spec(
    *,
    default: Any = _MISSING,
    default_factory: Any = _MISSING,
    min_len: int | None = None,
    max_len: int | None = None,
    pattern: str | None = None,
    ge: int | float | None = None,
    le: int | float | None = None,
    min_items: int | None = None,
    max_items: int | None = None,
    unique: bool = False,
    item: dict[str, Any] | None = None,
    description: str | None = None,
) -> Any:
    """Declare a dataclass field with wire constraints (a ``dataclasses.field`` wrapper).

    ``min_len``/``max_len``/``pattern`` apply to strings (length in characters, pattern is
    searched), ``ge``/``le`` to numbers, ``min_items``/``max_items`` to tuples and dicts,
    ``unique`` to tuples, and ``item`` (same keys) to tuple elements or dict values.  For
    ``X | None`` fields the constraints apply to the non-null value.  Returns ``Any`` so that
    ``x: str = spec(...)`` type-checks, like ``dataclasses.field``.
    """
    constraints = _Constraints(
        min_len=min_len,
        max_len=max_len,
        pattern=pattern,
        ge=ge,
        le=le,
        min_items=min_items,
        max_items=max_items,
        unique=unique,
        item=None if item is None else _Constraints.from_item(item),
        description=description,
    )
    metadata = {_META_KEY: constraints}
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    if default is not _MISSING:
        return dataclasses.field(default=default, metadata=metadata)
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(metadata=metadata)


# --------------------------------------------------------------------------- type model


@dataclasses.dataclass(frozen=True, slots=True)
class _Type:
    """Resolved annotation: the few shapes the wire format supports."""

    kind: str  # str | int | float | bool | literal | tuple | dict | object
    nullable: bool = False
    item: _Type | None = None  # tuple element / dict value
    literals: tuple[str | int, ...] = ()
    cls: type | None = None


_APPLICABLE: Final[dict[str, frozenset[str]]] = {
    "str": frozenset({"min_len", "max_len", "pattern"}),
    "int": frozenset({"ge", "le"}),
    "float": frozenset({"ge", "le"}),
    "tuple": frozenset({"min_items", "max_items", "unique", "item"}),
    "dict": frozenset({"min_items", "max_items", "item"}),
}


def _parse_type(tp: Any, where: str) -> _Type:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        rest = [a for a in args if a is not _NONE_TYPE]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"{where}: only `X | None` unions are supported, got {tp!r}")
        return dataclasses.replace(_parse_type(rest[0], where), nullable=True)
    if origin is Literal:
        values = get_args(tp)
        if not values or any(type(v) not in (str, int) for v in values):
            raise TypeError(f"{where}: Literal values must be str or int, got {tp!r}")
        return _Type("literal", literals=tuple(dict.fromkeys(values)))
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: only homogeneous tuple[T, ...] is supported, got {tp!r}")
        return _Type("tuple", item=_parse_type(args[0], f"{where}[]"))
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise TypeError(f"{where}: dict keys must be str, got {tp!r}")
        return _Type("dict", item=_parse_type(value, f"{where}[]"))
    if origin is not None or tp in (list, tuple, dict):
        hint = " (use tuple[T, ...] for arrays)" if origin is list or tp is list else ""
        raise TypeError(f"{where}: unsupported annotation {tp!r}{hint}")
    if tp in (str, int, float, bool):
        return _Type(tp.__name__)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _Type("object", cls=tp)
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


def _check_applicable(t: _Type, c: _Constraints, where: str) -> None:
    bad = c.used() - _APPLICABLE.get(t.kind, frozenset())
    if bad:
        raise TypeError(f"{where}: {', '.join(sorted(bad))} cannot apply to a {t.kind} field")
    if c.item is not None and t.item is not None:
        _check_applicable(t.item, c.item, f"{where}[]")


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: _Type
    constraints: _Constraints
    has_default: bool
    default: Any  # value, or _MISSING
    default_factory: Any  # zero-argument callable, or _MISSING


_FIELDS: dict[type, tuple[_Field, ...]] = {}
_LOCK = threading.RLock()


def _fields_of(cls: type) -> tuple[_Field, ...]:
    """Resolve and check a dataclass's fields once (annotations may be strings)."""
    cached = _FIELDS.get(cls)
    if cached is not None:
        return cached
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    try:
        # Resolves each base's annotations in its own module's globals.
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(f"cannot resolve annotations of {cls.__qualname__}: {exc}") from exc
    out: list[_Field] = []
    for f in dataclasses.fields(cls):
        where = f"{cls.__qualname__}.{f.name}"
        if not f.init:
            raise TypeError(f"{where}: init=False fields are not supported")
        constraints = f.metadata.get(_META_KEY, _NO_CONSTRAINTS)
        if not isinstance(constraints, _Constraints):
            raise TypeError(f"{where}: metadata[{_META_KEY!r}] must come from spec()")
        t = _parse_type(hints[f.name], where)
        _check_applicable(t, constraints, where)
        has_default = f.default is not _MISSING or f.default_factory is not _MISSING
        out.append(_Field(f.name, t, constraints, has_default, f.default, f.default_factory))
    result = tuple(out)
    _FIELDS[cls] = result
    return result


# --------------------------------------------------------------------------- decoding


def _str_converter(c: _Constraints, what: str) -> _Converter:
    lo, hi, pattern = c.min_len, c.max_len, c.pattern
    if lo is None and hi is None and pattern is None:

        def plain_str(v: Any) -> Any:
            if type(v) is str:
                return v
            raise _expected(what, v)

        return plain_str
    rx = None if pattern is None else _compile_pattern(pattern)

    def checked_str(v: Any) -> Any:
        if type(v) is not str:
            raise _expected(what, v)
        if lo is not None and len(v) < lo:
            raise _Invalid(f"must be at least {_amount(lo, 'character')}")
        if hi is not None and len(v) > hi:
            raise _Invalid(f"must be at most {_amount(hi, 'character')}")
        if rx is not None and rx.search(v) is None:
            raise _Invalid(f"must match {pattern}")
        return v

    return checked_str


def _int_converter(c: _Constraints, what: str) -> _Converter:
    ge, le = c.ge, c.le

    def int_(v: Any) -> Any:
        if type(v) is not int:  # also rejects bool
            raise _expected(what, v)
        if not INT64_MIN <= v <= INT64_MAX:
            raise _Invalid("must fit in a signed 64-bit integer")
        if ge is not None and v < ge:
            raise _Invalid(f"must be >= {ge}")
        if le is not None and v > le:
            raise _Invalid(f"must be <= {le}")
        return v

    return int_


def _float_converter(c: _Constraints, what: str) -> _Converter:
    ge, le = c.ge, c.le
    isfinite = math.isfinite

    def float_(v: Any) -> Any:
        t = type(v)
        if t is float:
            if not isfinite(v):
                raise _Invalid("must be a finite number")
        elif t is int:  # JSON has one number type; bool is excluded by the exact check
            try:
                v = float(v)
            except OverflowError:
                raise _Invalid("must be a finite number") from None
        else:
            raise _expected(what, v)
        if ge is not None and v < ge:
            raise _Invalid(f"must be >= {ge}")
        if le is not None and v > le:
            raise _Invalid(f"must be <= {le}")
        return v

    return float_


def _bool_converter(what: str) -> _Converter:
    def bool_(v: Any) -> Any:
        if type(v) is bool:
            return v
        raise _expected(what, v)

    return bool_


def _literal_converter(t: _Type) -> _Converter:
    allowed = frozenset(t.literals)
    # Exact types: True == 1 and hash(True) == hash(1), so membership alone is not enough.
    allowed_types = frozenset(type(v) for v in t.literals)
    reason = "must be one of " + ", ".join(map(repr, t.literals))
    if t.nullable:
        reason += " (or null)"

    def literal(v: Any) -> Any:
        if type(v) in allowed_types and v in allowed:
            return v
        raise _Invalid(reason)

    return literal


def _first_failure(convert: _Converter, items: Any) -> _Invalid:
    """Re-run a (pure) converter one element at a time to locate the failing index/key.

    Lets the success path use fast ``map``/comprehensions without tracking positions.
    """
    pairs = items.items() if isinstance(items, dict) else enumerate(items)
    for key, value in pairs:
        try:
            convert(value)
        except _Invalid as exc:
            exc.parts.append(f"[{key}]" if type(key) is int else _key_segment(key))
            return exc
    raise AssertionError("converter is not deterministic")  # pragma: no cover


def _duplicate_index(values: tuple[Any, ...]) -> int:
    try:
        seen: set[Any] = set()
        for i, v in enumerate(values):
            if v in seen:
                return i
            seen.add(v)
    except TypeError:  # unhashable items (e.g. dicts): quadratic fallback
        for i, v in enumerate(values):
            if v in values[:i]:
                return i
    return -1


def _tuple_converter(t: _Type, c: _Constraints, what: str) -> _Converter:
    assert t.item is not None
    item = _converter(t.item, c.item or _NO_CONSTRAINTS)
    lo, hi, unique = c.min_items, c.max_items, c.unique

    def tuple_(v: Any) -> Any:
        if type(v) is not list:
            raise _expected(what, v)
        n = len(v)
        if lo is not None and n < lo:
            raise _Invalid(f"must have at least {lo} item(s)")
        if hi is not None and n > hi:
            raise _Invalid(f"must have at most {hi} item(s)")
        try:
            out = tuple(map(item, v))
        except _Invalid:
            raise _first_failure(item, v) from None
        if unique and n > 1:
            try:
                is_unique = len(set(out)) == n
            except TypeError:
                is_unique = False
            if not is_unique:
                i = _duplicate_index(out)
                if i >= 0:
                    exc = _Invalid("duplicate item")
                    exc.parts.append(f"[{i}]")
                    raise exc
        return out

    return tuple_


def _dict_converter(t: _Type, c: _Constraints, what: str) -> _Converter:
    assert t.item is not None
    value = _converter(t.item, c.item or _NO_CONSTRAINTS)
    lo, hi = c.min_items, c.max_items

    def dict_(v: Any) -> Any:
        if type(v) is not dict:
            raise _expected(what, v)
        n = len(v)
        if lo is not None and n < lo:
            raise _Invalid(f"must have at least {lo} item(s)")
        if hi is not None and n > hi:
            raise _Invalid(f"must have at most {hi} item(s)")
        for k in v:
            if type(k) is not str:
                raise _Invalid("keys must be strings")
            if len(k) > MAX_KEY_LEN:
                raise _Invalid(f"keys must be at most {MAX_KEY_LEN} characters")
        try:
            return {k: value(x) for k, x in v.items()}
        except _Invalid:
            raise _first_failure(value, v) from None

    return dict_


_OBJECTS: dict[tuple[type, frozenset[str]], _Converter] = {}
_BUILDING: set[type] = set()


def _object_converter(cls: type, ignore: frozenset[str] = frozenset()) -> _Converter:
    """Cached converter for a dataclass; recursive classes get a late-bound reference."""
    key = (cls, ignore)
    conv = _OBJECTS.get(key)
    if conv is not None:
        return conv
    with _LOCK:
        if key in _OBJECTS:
            return _OBJECTS[key]
        if not ignore and cls in _BUILDING:

            def deferred(v: Any) -> Any:
                return _OBJECTS[key](v)

            return deferred
        if not ignore:
            _BUILDING.add(cls)
        try:
            conv = _build_object_converter(cls, ignore)
        finally:
            if not ignore:
                _BUILDING.discard(cls)
        _OBJECTS[key] = conv
        return conv


def _check_default(cls: type, f: _Field, convert: _Converter) -> None:
    """Fail at build time if a default violates its own field's constraints.

    Keeps the published schema honest: a default is always a value a client could have sent.
    """
    value = f.default if f.default is not _MISSING else f.default_factory()
    dump = _dumper(f.type)
    try:
        convert(value if value is None or dump is None else dump(value))
    except _Invalid as exc:
        raise TypeError(
            f"{cls.__qualname__}.{f.name}: default {value!r} is invalid: {exc.path}: {exc.reason}"
        ) from None


def _build_object_converter(cls: type, ignore: frozenset[str]) -> _Converter:
    fields = _fields_of(cls)
    allowed = frozenset(f.name for f in fields) | ignore
    plan: list[tuple[str, _Converter, bool]] = []
    for f in fields:
        convert = _converter(f.type, f.constraints)
        if f.has_default:
            _check_default(cls, f, convert)
        plan.append((f.name, convert, f.has_default))
    steps = tuple(plan)
    missing = _MISSING

    def object_(data: Any) -> Any:
        if type(data) is not dict:
            raise _expected("an object", data)
        if not allowed.issuperset(data):
            for k in data:
                if k not in allowed:
                    exc = _Invalid("unknown field")
                    exc.parts.append(_key_segment(k))
                    raise exc
        kwargs: dict[str, Any] = {}
        get = data.get
        name = ""
        try:
            for name, convert, has_default in steps:
                v = get(name, missing)
                if v is missing:
                    if has_default:
                        continue
                    raise _Invalid("required field is missing")
                kwargs[name] = convert(v)
        except _Invalid as exc:
            exc.parts.append("." + name)
            raise
        try:
            return cls(**kwargs)
        except ValidationError as exc:  # cross-field checks in __post_init__
            raise _Invalid(exc.reason) from None
        except ValueError as exc:
            raise _Invalid(str(exc)) from None

    object_.__qualname__ = f"decode_{cls.__qualname__}"
    return object_


def _converter(t: _Type, c: _Constraints) -> _Converter:
    what = {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "tuple": "an array",
        "dict": "an object",
        "object": "an object",
    }.get(t.kind, "")
    if t.nullable:
        what += " or null"
    inner: _Converter
    if t.kind == "str":
        inner = _str_converter(c, what)
    elif t.kind == "int":
        inner = _int_converter(c, what)
    elif t.kind == "float":
        inner = _float_converter(c, what)
    elif t.kind == "bool":
        inner = _bool_converter(what)
    elif t.kind == "literal":
        inner = _literal_converter(t)
    elif t.kind == "tuple":
        inner = _tuple_converter(t, c, what)
    elif t.kind == "dict":
        inner = _dict_converter(t, c, what)
    else:
        assert t.cls is not None
        inner = _object_converter(t.cls)
        if t.nullable:
            inner = _reword_object_error(inner, what)
    if not t.nullable:
        return inner

    def nullable(v: Any) -> Any:
        return None if v is None else inner(v)

    return nullable


def _reword_object_error(inner: _Converter, what: str) -> _Converter:
    """Say "expected an object or null" for nullable nested objects given a wrong type."""

    def object_or_null(v: Any) -> Any:
        if type(v) is not dict:
            raise _expected(what, v)
        return inner(v)

    return object_or_null


_DECODERS: dict[tuple[type, frozenset[str]], Callable[[object], Any]] = {}


def decoder(cls: type[T], ignore: Collection[str] = frozenset()) -> Callable[[object], T]:
    """Return the cached validating constructor ``data -> cls`` for parsed JSON.

    ``ignore`` names top-level keys to skip (e.g. an envelope's ``id``/``type``); a key that
    is also a field is decoded as the field.  Raises :class:`ValidationError` on bad input
    (first error, unknown keys first, then fields in declaration order) and ``TypeError``
    at build time for unsupported annotations, misapplied constraints or invalid defaults.
    """
    key = (cls, frozenset(ignore))
    decode = _DECODERS.get(key)
    if decode is not None:
        return decode
    convert = _object_converter(cls, key[1])

    def decode_(data: object) -> T:
        try:
            result: T = convert(data)
            return result
        except _Invalid as exc:
            raise ValidationError(exc.path, exc.reason) from None
        except RecursionError:
            raise ValidationError("$", "nesting is too deep") from None

    decode_.__qualname__ = decode_.__name__ = f"decode_{cls.__name__}"
    _DECODERS[key] = decode_
    return decode_


# --------------------------------------------------------------------------- encoding


_DUMPERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _dumper(t: _Type) -> Callable[[Any], Any] | None:
    """Non-null value -> JSON-ready value, or None when the value is already JSON-ready."""
    if t.kind == "object":
        return to_plain
    if t.kind not in ("tuple", "dict"):
        return None
    assert t.item is not None
    inner = _dumper(t.item)
    if t.kind == "tuple":
        if inner is None:
            return list
        if t.item.nullable:
            return lambda v: [None if x is None else inner(x) for x in v]
        return lambda v: [inner(x) for x in v]
    if inner is None:
        return dict  # copy: callers must not be able to mutate the instance through it
    if t.item.nullable:
        return lambda v: {k: None if x is None else inner(x) for k, x in v.items()}
    return lambda v: {k: inner(x) for k, x in v.items()}


def _build_dumper(cls: type) -> Callable[[Any], dict[str, Any]]:
    fields = _fields_of(cls)
    names = tuple(f.name for f in fields)
    # None is omitted only where the decoder restores it (default None), so replies round-trip.
    plan = tuple((f.name, _dumper(f.type), f.default is None) for f in fields)
    # attrgetter(*names) fetches all fields in one C call, but only returns a tuple for 2+.
    getter: Callable[[Any], tuple[Any, ...]]
    if len(names) >= 2:
        getter = attrgetter(*names)
    else:

        def getter(obj: Any) -> tuple[Any, ...]:
            return tuple(getattr(obj, name) for name in names)

    def dump(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, convert, omit_none), v in zip(plan, getter(obj), strict=True):
            if v is None:
                if not omit_none:
                    out[name] = None
            elif convert is None:
                out[name] = v
            else:
                out[name] = convert(v)
        return out

    return dump


def to_plain(obj: object) -> dict[str, Any]:
    """Dataclass instance -> JSON-ready dict (tuples become lists, nested objects dicts).

    Fields holding None are omitted when their default is None (the decoder restores them);
    other None values are emitted as null so that replies decode back to equal objects.
    """
    dump = _DUMPERS.get(type(obj))
    if dump is None:
        dump = _build_dumper(type(obj))
        _DUMPERS[type(obj)] = dump
    return dump(obj)


# --------------------------------------------------------------------------- JSON Schema


class _SchemaBuilder:
    """Collects ``$defs`` (keyed by class name) for nested classes.

    A recursive root is also put in ``$defs`` rather than referenced as ``#``, because the
    root may carry envelope-only ``extra_properties``.
    """

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, type] = {}

    def ref(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        owner = self.owners.setdefault(name, cls)
        if owner is not cls:
            raise TypeError(f"two classes named {name!r} cannot share one schema's $defs")
        if name not in self.defs:
            self.defs[name] = {}  # placeholder: breaks cycles
            self.defs[name] = self.object_schema(cls)
        return {"$ref": f"#/$defs/{name}"}

    def object_schema(self, cls: type) -> dict[str, Any]:
        schema: dict[str, Any] = {"title": cls.__name__}
        doc = cls.__doc__
        if doc and not doc.startswith(cls.__name__ + "("):  # skip dataclass's generated doc
            schema["description"] = inspect.cleandoc(doc)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in _fields_of(cls):
            prop = self.type_schema(f.type, f.constraints)
            if f.constraints.description is not None:
                prop = {"description": f.constraints.description, **prop}
            if f.has_default:
                value = f.default if f.default is not _MISSING else f.default_factory()
                dump = _dumper(f.type)
                prop["default"] = value if value is None or dump is None else dump(value)
            else:
                required.append(f.name)
            properties[f.name] = prop
        schema.update(
            type="object", properties=properties, required=required, additionalProperties=False
        )
        return schema

    def type_schema(self, t: _Type, c: _Constraints) -> dict[str, Any]:
        s: dict[str, Any]
        if t.kind == "str":
            s = {"type": "string"}
            _put(s, "minLength", c.min_len)
            _put(s, "maxLength", c.max_len)
            _put(s, "pattern", c.pattern)
        elif t.kind == "int":
            s = {
                "type": "integer",
                "minimum": INT64_MIN if c.ge is None else max(c.ge, INT64_MIN),
                "maximum": INT64_MAX if c.le is None else min(c.le, INT64_MAX),
            }
        elif t.kind == "float":
            s = {"type": "number"}
            _put(s, "minimum", c.ge)
            _put(s, "maximum", c.le)
        elif t.kind == "bool":
            s = {"type": "boolean"}
        elif t.kind == "literal":
            kinds = sorted({"string" if type(v) is str else "integer" for v in t.literals})
            s = {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(t.literals)}
        elif t.kind in ("tuple", "dict"):
            assert t.item is not None
            item_c = c.item or _NO_CONSTRAINTS
            items = self.type_schema(t.item, item_c)
            if item_c.description is not None:
                items = {"description": item_c.description, **items}
            if t.kind == "tuple":
                s = {"type": "array", "items": items}
                _put(s, "minItems", c.min_items)
                _put(s, "maxItems", c.max_items)
                if c.unique:
                    s["uniqueItems"] = True
            else:
                s = {
                    "type": "object",
                    "propertyNames": {"maxLength": MAX_KEY_LEN},
                    "additionalProperties": items,
                }
                _put(s, "minProperties", c.min_items)
                _put(s, "maxProperties", c.max_items)
        else:
            assert t.cls is not None
            s = self.ref(t.cls)
        if t.nullable:
            return {"anyOf": [s, {"type": "null"}]}
        return s


def _put(schema: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        schema[key] = value


def to_json_schema(
    cls: type,
    *,
    extra_properties: Mapping[str, Any] | None = None,
    extra_required: Collection[str] | None = None,
) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) describing what ``decoder(cls)`` accepts.

    ``extra_properties`` (listed first) describe envelope keys the dispatcher passes through
    ``decoder(..., ignore=...)``, e.g. ``{"type": {"const": "hold"}}``; ``extra_required``
    marks some of them required.  Known gaps vs. the decoder: JSON Schema's ``integer`` also
    admits ``1.0``, and validators may use a different regex dialect.
    """
    builder = _SchemaBuilder()
    body = builder.object_schema(cls)
    properties = dict(extra_properties or {})
    clash = sorted(properties.keys() & body["properties"].keys())
    if clash:
        raise ValueError(f"extra_properties clash with fields: {', '.join(clash)}")
    properties.update(body["properties"])
    required = list(extra_required or ())
    unknown = sorted(set(required) - properties.keys())
    if unknown:
        raise ValueError(f"extra_required names unknown properties: {', '.join(unknown)}")
    body["properties"] = properties
    body["required"] = required + [r for r in body["required"] if r not in required]
    schema: dict[str, Any] = {"$schema": _JSON_SCHEMA_DIALECT, **body}
    if builder.defs:
        schema["$defs"] = builder.defs
    return schema
