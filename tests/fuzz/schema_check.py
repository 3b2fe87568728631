"""The published JSON Schema, compiled to plain Python checks fast enough for every fuzz reply.

``jsonschema`` takes about 2 ms per small frame here (6 ms against the whole ``ServerFrame``
``oneOf``), far too slow for the hundreds of thousands of replies a fuzz run reads. This module
compiles ``protocol/seatd.v1.schema.json`` into closures, one per sub-schema, supporting exactly
the keywords the generated schema uses (``compile_schema`` refuses any other keyword, so a new one
cannot be silently ignored), with draft 2020-12 semantics: ``integer`` accepts ``1.0``, ``const``
and ``enum`` compare as JSON values (``1 == 1.0``, ``true != 1``), ``pattern`` is searched, and
each keyword applies only to its own JSON type.

``SchemaOracle.check`` validates with the compiled checks and, for a sample of frames (the first
of each reply shape, then every ``cross_check_every``-th one), also with ``jsonschema``: any
disagreement is reported as a problem of the oracle itself, so the fast path is proven equal to
the reference implementation on the very traffic of the run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

from protocol.schema import SCHEMA_PATH

__all__ = ["Check", "SchemaOracle", "compile_schema", "json_equal", "load_schema"]

Check = Callable[[Any], bool]

# Keywords that only annotate; they never affect validity.
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "default", "examples"})
_SUPPORTED = _ANNOTATIONS | {
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "pattern",
    "anyOf",
    "oneOf",
    "$defs",
}


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The committed schema document, as published."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_type(value: object, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "number":
        return _is_number(value)
    if name == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return True
        return isinstance(value, float) and value.is_integer()
    raise ValueError(f"unknown JSON type {name!r}")


def json_equal(a: object, b: object) -> bool:
    """Equality of two JSON values as JSON Schema defines it (numbers by value, bool apart)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def compile_schema(root: Mapping[str, Any], defs: Mapping[str, Any]) -> Check:
    """A predicate equivalent to validating against ``root`` (``$ref``s resolved in ``defs``)."""
    compiled: dict[str, Check] = {}

    def ref(target: str) -> Check:
        prefix = "#/$defs/"
        if not target.startswith(prefix):
            raise ValueError(f"unsupported $ref {target!r}")
        name = target[len(prefix) :]
        if name not in defs:
            raise ValueError(f"$ref to a missing definition {name!r}")

        def resolved(value: Any) -> bool:
            check = compiled.get(name)
            if check is None:  # compiled on first use: definitions may refer to themselves
                check = compiled[name] = build(defs[name])
            return check(value)

        return resolved

    def build(schema: Mapping[str, Any]) -> Check:
        unknown = set(schema) - _SUPPORTED
        if unknown:
            raise ValueError(f"the fuzz oracle does not implement {sorted(unknown)}")
        checks: list[Check] = []
        if "$ref" in schema:
            checks.append(ref(schema["$ref"]))
        if "type" in schema:
            names = tuple(schema["type"] if isinstance(schema["type"], list) else [schema["type"]])
            checks.append(_type_check(names))
        if "const" in schema:
            checks.append(_enum_check([schema["const"]]))
        if "enum" in schema:
            checks.append(_enum_check(schema["enum"]))
        checks += _string_checks(schema)
        checks += _number_checks(schema)
        checks += _array_checks(schema, build)
        checks += _object_checks(schema, build)
        if "anyOf" in schema:
            checks.append(_combine([_branch(s, defs, build) for s in schema["anyOf"]], any_of=True))
        if "oneOf" in schema:
            checks.append(
                _combine([_branch(s, defs, build) for s in schema["oneOf"]], any_of=False)
            )
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        return _all_of(tuple(checks))

    return build(root)


def _type_check(names: tuple[str, ...]) -> Check:
    return lambda v: any(_is_type(v, n) for n in names)


def _all_of(checks: tuple[Check, ...]) -> Check:
    return lambda v: all(c(v) for c in checks)


@dataclass(frozen=True, slots=True)
class _Branch:
    """A branch of a oneOf/anyOf with what rejects it cheaply: its required keys and the
    properties it fixes with a string or boolean ``const`` (seen through a ``$ref``). A value
    that lacks one of those keys or holds another constant fails the branch's full check too,
    so skipping the full check for it changes no outcome; it only saves time."""

    required: tuple[str, ...]
    consts: dict[str, tuple[str, str | bool]]  # key -> (JSON type, value)
    check: Check

    def excludes(self, v: dict[str, Any]) -> bool:
        for key in self.required:
            if key not in v:
                return True
        for key, tagged in self.consts.items():  # noqa: SIM110 (a loop is faster)
            if key in v and _tag(v[key]) != tagged:
                return True
        return False


def _tag(value: Any) -> tuple[str, Any]:
    """A hashable stand-in for a JSON scalar that equals another's exactly when the two are
    equal JSON strings or booleans (other values get tags no const has)."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, str):
        return ("string", value)
    return ("other", id(value))


def _branch(
    schema: Mapping[str, Any], defs: Mapping[str, Any], build: Callable[[Mapping[str, Any]], Check]
) -> _Branch:
    target = schema
    while set(target) - _ANNOTATIONS == {"$ref"}:
        target = defs[target["$ref"].removeprefix("#/$defs/")]
    required = tuple(target.get("required", ())) if target.get("type") == "object" else ()
    consts = {
        key: _tag(sub["const"])
        for key, sub in target.get("properties", {}).items()
        if "const" in sub and isinstance(sub["const"], str | bool)
    }
    return _Branch(required, consts, build(schema))


def _combine(branches: list[_Branch], *, any_of: bool) -> Check:
    """oneOf (exactly one branch) or anyOf (at least one), trying only the branches a value
    can match: those indexed under its value of the most common const key, and those without
    a const on that key."""
    keys = Counter(key for b in branches for key in b.consts)
    key = keys.most_common(1)[0][0] if keys else None
    loose = [b for b in branches if key not in b.consts]
    index: dict[tuple[str, Any], list[_Branch]] = {}
    for b in branches:
        if key in b.consts:
            index.setdefault(b.consts[key], []).append(b)

    def matches(v: Any) -> int:
        if not isinstance(v, dict):
            candidates = branches
        elif key in v:
            candidates = index.get(_tag(v[key]), []) + loose
        else:
            candidates = branches
        count = 0
        for b in candidates:
            if isinstance(v, dict) and b.excludes(v):
                continue
            if b.check(v):
                count += 1
                if any_of:
                    return count
        return count

    if any_of:
        return lambda v: matches(v) > 0
    return lambda v: matches(v) == 1


def _enum_check(values: list[Any]) -> Check:
    if all(isinstance(x, str | bool) for x in values):
        tags = frozenset(_tag(x) for x in values)
        return lambda v: _tag(v) in tags
    return lambda v: any(json_equal(v, x) for x in values)


def _string_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    if "minLength" in schema:
        n = schema["minLength"]
        checks.append(lambda v: not isinstance(v, str) or len(v) >= n)
    if "maxLength" in schema:
        m = schema["maxLength"]
        checks.append(lambda v: not isinstance(v, str) or len(v) <= m)
    if "pattern" in schema:
        rx = re.compile(schema["pattern"])  # jsonschema searches with Python's re as well
        checks.append(lambda v: not isinstance(v, str) or rx.search(v) is not None)
    return checks


def _number_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    if "minimum" in schema:
        lo = schema["minimum"]
        checks.append(lambda v: not _is_number(v) or v >= lo)
    if "maximum" in schema:
        hi = schema["maximum"]
        checks.append(lambda v: not _is_number(v) or v <= hi)
    return checks


def _array_checks(
    schema: Mapping[str, Any], build: Callable[[Mapping[str, Any]], Check]
) -> list[Check]:
    checks: list[Check] = []
    if "items" in schema:
        item = build(schema["items"])
        checks.append(lambda v: not isinstance(v, list) or all(item(x) for x in v))
    if "minItems" in schema:
        n = schema["minItems"]
        checks.append(lambda v: not isinstance(v, list) or len(v) >= n)
    if "maxItems" in schema:
        m = schema["maxItems"]
        checks.append(lambda v: not isinstance(v, list) or len(v) <= m)
    if schema.get("uniqueItems") is True:

        def unique(v: Any) -> bool:
            if not isinstance(v, list):
                return True
            return not any(json_equal(v[i], v[j]) for i in range(len(v)) for j in range(i))

        checks.append(unique)
    return checks


def _object_checks(
    schema: Mapping[str, Any], build: Callable[[Mapping[str, Any]], Check]
) -> list[Check]:
    checks: list[Check] = []
    if "required" in schema:
        required = tuple(schema["required"])
        checks.append(lambda v: not isinstance(v, dict) or all(k in v for k in required))
    properties: dict[str, Check] = {k: build(s) for k, s in schema.get("properties", {}).items()}
    # Cheap rejections first: a const property (type, ok) tells the branches of a oneOf apart.
    consts = {k: s["const"] for k, s in schema.get("properties", {}).items() if set(s) == {"const"}}
    if consts:
        checks.insert(
            0,
            lambda v: (
                not isinstance(v, dict)
                or all(k not in v or json_equal(v[k], c) for k, c in consts.items())
            ),
        )
    additional = schema.get("additionalProperties", True)
    extra: Check | None
    if additional is True:
        extra = None
    elif additional is False:
        extra = lambda v: False  # noqa: E731
    else:
        extra = build(additional)
    if properties or extra is not None:

        def members(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for key, value in v.items():
                check = properties.get(key)
                if check is not None:
                    if not check(value):
                        return False
                elif extra is not None and not extra(value):
                    return False
            return True

        checks.append(members)
    return checks


class SchemaOracle:
    """Validates server frames against the schema's ``ServerFrame`` (compiled, cross-checked)."""

    def __init__(self, cross_check_every: int = 500, document: dict[str, Any] | None = None):
        self.document = document if document is not None else load_schema()
        defs = self.document["$defs"]
        self._check = compile_schema({"$ref": "#/$defs/ServerFrame"}, defs)
        self._reference = Draft202012Validator({"$ref": "#/$defs/ServerFrame", "$defs": defs})
        self._every = cross_check_every
        self._seen_shapes: set[tuple[Any, ...]] = set()
        self._error_verdicts: dict[tuple[Any, ...], bool] = {}
        self.checked = 0
        self.cross_checked = 0
        self.disagreements: list[str] = []

    def check(self, frame: Any) -> str | None:
        """None when ``frame`` is a valid server frame, else why not."""
        self.checked += 1
        key = _error_key(frame)
        if key is not None and key in self._error_verdicts and self.checked % self._every:
            return None if self._error_verdicts[key] else self.explain(frame)
        valid = self._check(frame)
        shape = _shape(frame)
        if shape not in self._seen_shapes or self.checked % self._every == 0:
            self._seen_shapes.add(shape)
            self.cross_checked += 1
            reference = self._reference.is_valid(frame)
            if reference != valid:
                self.disagreements.append(
                    f"compiled schema says {valid}, jsonschema says {reference}: {frame!r:.500}"
                )
                valid = reference
        if key is not None:
            self._error_verdicts[key] = valid
        if valid:
            return None
        return self.explain(frame)

    def explain(self, frame: Any) -> str:
        return _explain(self._reference, frame)


_ABSENT = object()
_INT64 = 2**63


def _error_key(frame: Any) -> tuple[Any, ...] | None:
    """For an error reply: everything its validity depends on (the schema constrains the
    message and details only as a string and an object, the id only as a request id or
    null), so two replies with one key are both valid or both not; None for other frames
    and for any value outside those simple classes (those are checked in full)."""
    if type(frame) is not dict or frame.get("ok") is not False:
        return None
    error = frame.get("error")
    if type(error) is not dict:
        return None
    request_id = frame.get("id", _ABSENT)
    id_class: str
    if request_id is None or request_id is _ABSENT:
        id_class = "null" if request_id is None else "absent"
    elif type(request_id) is str and 0 < len(request_id) <= 64:
        id_class = "string"
    elif type(request_id) is int and -_INT64 <= request_id < _INT64:
        id_class = "integer"
    else:
        return None
    kind = frame.get("type", _ABSENT)
    retry = error.get("retry_after_ms", _ABSENT)
    if retry is not _ABSENT and not (type(retry) is int and 0 <= retry < _INT64):
        return None
    code, temporary = error.get("code"), error.get("temporary")
    if type(code) is not str or type(temporary) is not bool:
        return None
    return (
        tuple(sorted(frame)),
        id_class,
        kind is _ABSENT or type(kind) is str,
        tuple(sorted(error)),
        code,
        temporary,
        type(error.get("message")).__name__,
        retry is _ABSENT,
        type(error.get("details", _ABSENT)).__name__,
    )


def _shape(frame: Any) -> tuple[Any, ...]:
    """What tells replies apart for sampling: kind, type, ok, error code, keys of the result."""
    if not isinstance(frame, dict):
        return (type(frame).__name__,)
    error = frame.get("error")
    result = frame.get("result")
    kind, ok = frame.get("type"), frame.get("ok")
    code = error.get("code") if isinstance(error, dict) else None
    return (
        kind if isinstance(kind, str) else type(kind).__name__,
        ok if isinstance(ok, bool) else type(ok).__name__,
        code if isinstance(code, str) else type(code).__name__,
        tuple(sorted(result)) if isinstance(result, dict) else None,
        tuple(sorted(frame)),
    )


@cache
def _branch_validators(defs_json: str) -> dict[str, Draft202012Validator]:
    defs = json.loads(defs_json)
    return {
        name: Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})
        for name in defs
        if name.startswith(("reply.", "push."))
    }


def _explain(reference: Draft202012Validator, frame: Any) -> str:
    """A readable reason: the errors of the branch the frame is meant to match, if any."""
    defs = reference.schema["$defs"]
    if isinstance(frame, dict):
        kind = frame.get("type")
        if "ok" in frame:
            name = "reply.error" if frame["ok"] is False else f"reply.{kind}"
        else:
            name = f"push.{kind}"
        branches = _branch_validators(json.dumps(defs, sort_keys=True))
        if isinstance(kind, str) or name == "reply.error":
            validator = branches.get(name)
            if validator is not None:
                errors = sorted(validator.iter_errors(frame), key=lambda e: list(e.absolute_path))
                if errors:
                    return "; ".join(f"{name} at {e.json_path}: {e.message}" for e in errors[:3])
    error = best_match(reference.iter_errors(frame))
    return f"at {error.json_path}: {error.message}" if error else "rejected by the schema"
