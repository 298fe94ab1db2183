"""Typed sections validated by pydantic: the one mechanism the bundle manifest (dkit.edge.bundle.manifest) and the
kit (dkit.core.kit) share. Strict scalars (`Int`, `Float`, `Bool`, `Str`: 640 is an integer, "640" is not, true
is no number), and `Section`, a base for frozen stdlib dataclasses read from and written to JSON documents:

    from dkit.edge.bundle.schema import EXTRA, Int, Section, Strings

    @dataclass(frozen=True)
    class Runtime(Section):
        providers: Strings = ()
        threads: Int = 0
        info: Mapping[str, Any] = field(default_factory=dict, metadata=EXTRA)  # the keys this version does not read

    r = Runtime.from_dict({"threads": 2, "note": "x"})   # validated; a bad value: Section.error naming its key
    r.to_dict()                                          # {"providers": [], "threads": 2, "note": "x"}

`from_dict` validates with a pydantic TypeAdapter built once per class, nested sections included (a section inside a
section is prepared the same way); the first problem is raised as the class's `error` (a ValueError) whose message
starts with the key at fault: `thresholds.iou: expected a number, got str`. Field metadata says how a field is
written back: EXTRA (unknown keys are kept in it, written back in its place), `omit(predicate)` (left out of the
document when the predicate of the section is true), `dump(function)` (written as function(section, value)),
INTERNAL (never read from or written to the document). Plain construction (`Runtime(threads=2)`) runs only the
dataclass's own `__post_init__` checks, as for any dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import pydantic
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import core_schema

# strict scalars: an integer is not a string, true is not a number; a Float takes an integer (as JSON does)
STRICT = ConfigDict(extra="forbid")
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

EXTRA = MappingProxyType({"extra": True})  # the field that keeps (and writes back) the keys this version does not read
INTERNAL = MappingProxyType({"internal": True})  # never read from nor written to the document


def omit(predicate: Callable[[Any], bool], **more: Any) -> Mapping[str, Any]:
    """Field metadata: leave the field out of `to_dict()` when `predicate(section)` is true."""
    return MappingProxyType({"omit": predicate, **more})


def dump(function: Callable[[Any, Any], Any], **more: Any) -> Mapping[str, Any]:
    """Field metadata: write the field as `function(section, value)` in `to_dict()`."""
    return MappingProxyType({"dump": function, **more})


class Invalid(ValueError):
    """A value a section's own check refuses: `key` relative to where it is validated ("" for the value itself).

    Raised in a validator or a `__post_init__`, it reaches the caller of `from_dict` as the section's error with
    the whole path: `Invalid("expected RGB or BGR, got 'YUV'", "channels")` inside `preprocess` reads
    `preprocess.channels: expected RGB or BGR, got 'YUV'`. `where` prefixes the message of a plain construction.
    """

    def __init__(self, detail: str, key: str = "", where: str = ""):
        self.detail, self.key = detail, key
        super().__init__(f"{where}{key}: {detail}" if where or key else detail)


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
             "bool_type": "true or false", "dict_type": "a JSON object", "dataclass_type": "a JSON object",
             "dataclass_exact_type": "a JSON object", "list_type": "a JSON array", "tuple_type": "a JSON array",
             "finite_number": "a finite number"}


def describe(err: pydantic.ValidationError) -> tuple[str, str]:
    """pydantic's first error as (key path, what is wrong), e.g. ("models.student.file", "missing required key"),
    ("prompts.rows[1].text", ...), ("thresholds.iou", "expected a number, got str")."""
    first = err.errors(include_url=False)[0]
    loc: list[str | int] = list(first["loc"])
    kind, error = first["type"], (first.get("ctx") or {}).get("error")
    if isinstance(error, Invalid):
        loc += [error.key] if error.key else []
        detail = error.detail
    elif kind == "missing":
        detail = "missing required key"
    elif kind in _EXPECTED:
        detail = f"expected {_EXPECTED[kind]}, got {type(first.get('input')).__name__}"
    else:
        detail = first["msg"]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip("."), detail


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise Invalid("expected a JSON array of strings")
    return tuple(value)


def _numbers(length: int | None) -> Callable[[Any], tuple[float, ...]]:
    def check(value: Any) -> tuple[float, ...]:
        ok = isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)
        if not ok or (length is not None and len(value) != length):
            raise Invalid(f"expected a JSON array of {length or 'some'} numbers")
        return tuple(float(v) for v in value)
    return check


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> Any:
    """A JSON number as an integer (114.0 -> 114); anything else is left to the int check (its error names it)."""
    if _is_number(value):
        return int(value)
    raise Invalid(f"expected a number, got {type(value).__name__}")


Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]  # a JSON array of strings
Numbers = Annotated[tuple[float, ...], BeforeValidator(_numbers(None))]  # a JSON array of numbers
Triple = Annotated[tuple[float, float, float], BeforeValidator(_numbers(3))]  # a JSON array of three numbers
Number = Float  # a JSON number (an integer is taken, as a float)
WholeNumber = Annotated[int, BeforeValidator(_whole)]  # a JSON number, kept as an integer


def frozen_dict(value: dict) -> Mapping[str, Any]:
    """AfterValidator: a validated dict made read-only."""
    return MappingProxyType(value)


Document = Annotated[dict[str, Any], AfterValidator(frozen_dict)]  # a JSON object kept as it is, read-only


class Section:
    """A frozen stdlib dataclass read from a JSON object with `from_dict` and written back with `to_dict` (the module
    docstring shows one); `error` is the exception `from_dict` raises (its message starts with the key at fault)."""

    error: ClassVar[type[ValueError]] = ValueError
    where: ClassVar[str] = ""  # the section's key in its document, prefixing `from_dict`'s error messages
    first: ClassVar[tuple[str, ...]] = ()  # fields `to_dict` writes first, in this order (then the others, in order)
    __pydantic_config__ = ConfigDict(extra="ignore")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(cls.prepare, handler(source))

    @classmethod
    def prepare(cls, doc: Any) -> Any:
        """The document before validation: a null value of a key with a default is its default, unknown keys go to
        the EXTRA field (when the class has one). Subclasses extend it (e.g. a size written as one integer)."""
        if not isinstance(doc, Mapping):
            return doc
        known, extra = _field_names(cls)
        out = {k: v for k, v in doc.items() if k in known and not (v is None and k in _defaulted(cls))}
        if extra:
            out[extra] = {k: v for k, v in doc.items() if k not in known}
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str | None = None):
        """Validate a JSON object into this section; raises `cls.error` naming the key at fault, prefixed with
        `where` (default: the class's `where`, e.g. "preprocess.")."""
        try:
            return _adapter(cls).validate_python(doc)
        except pydantic.ValidationError as e:
            key, detail = describe(e)
            prefix = cls.where if where is None else where
            path = f"{prefix}{key}" if key else prefix.rstrip(".")
            raise cls.error(f"{path}: {detail}" if path else detail) from e

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: fields in order, EXTRA merged in its place, `omit`/`dump` metadata applied."""
        doc: dict[str, Any] = {}
        for f in _dump_order(type(self)):
            meta, value = f.metadata, getattr(self, f.name)
            if meta.get("internal") or ("omit" in meta and meta["omit"](self)):
                continue
            if meta.get("extra"):
                doc |= {k: to_json(v) for k, v in value.items()}
            else:
                doc[f.name] = meta["dump"](self, value) if "dump" in meta else to_json(value)
        return doc


def to_json(value: Any) -> Any:
    """A section, tuple or read-only mapping (and what they hold) as plain JSON values."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


@cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


@cache
def _dump_order(cls: type) -> tuple[dataclasses.Field, ...]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return tuple(fields[k] for k in cls.first) + tuple(f for k, f in fields.items() if k not in cls.first)


@cache
def _field_names(cls: type) -> tuple[frozenset[str], str | None]:
    fields = dataclasses.fields(cls)
    extra = next((f.name for f in fields if f.metadata.get("extra")), None)
    known = frozenset(f.name for f in fields if not f.metadata.get("extra") and not f.metadata.get("internal")
                      or f.metadata.get("input"))
    return known, extra


@cache
def _defaulted(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
