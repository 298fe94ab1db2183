"""The student-kind registry: key -> `StudentKind`, and the live views every layer derives from it.

    from dkit.core.student_kinds import register_student_kind, student_kind, student_kinds

    register_student_kind(spec)          # StudentKindError when the key is taken
    student_kind("yolo-detect")          # the declaration; UsageError naming the known kinds otherwise
    student_kinds()                      # read-only {key: StudentKind}
    EXPORTERS = KindView(lambda k: k.exporter)   # {key: "module:function"}, always what the registry holds now

The views read the registry at each access, so a kind registered after a module defined its view is in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from dkit.core.errors import UsageError
from dkit.core.student_kinds.spec import StudentKind, StudentKindError

T = TypeVar("T")

_KINDS: dict[str, StudentKind] = {}


def register_student_kind(kind: StudentKind) -> StudentKind:
    """Add one declaration to the registry.

    Args:
        kind: the declaration (validated when it was built).
    Returns:
        `kind`, so a module may write `TINY = register_student_kind(StudentKind(...))`.
    Raises:
        StudentKindError: not a StudentKind, or its key is already declared.
    """
    if not isinstance(kind, StudentKind):
        raise StudentKindError(f"expected a StudentKind, got {type(kind).__name__}")
    if kind.key in _KINDS:
        raise StudentKindError(f"student kind {kind.key!r} is declared twice (first with "
                               f"train={_KINDS[kind.key].train})")
    _KINDS[kind.key] = kind
    return kind


def student_kinds() -> Mapping[str, StudentKind]:
    """Every declared kind, key -> StudentKind, in declaration order (a read-only, live view)."""
    return MappingProxyType(_KINDS)


def student_kind(key: str) -> StudentKind:
    """The declaration of `key`. Raises UsageError naming the known kinds."""
    try:
        return _KINDS[key]
    except KeyError:
        raise UsageError(f"unknown student kind {key!r}; known: {', '.join(_KINDS)}") from None


class KindView(Mapping[str, T], Generic[T]):
    """A read-only mapping key -> `derive(StudentKind)` over the registry, read at each access.

    Args:
        derive: what to make of a declaration (e.g. `lambda k: k.exporter`).
    Example:
        >>> EXPORTERS = KindView(lambda k: k.exporter)
        >>> EXPORTERS["yolo-cls"]
        'dkit.export.yolo:export_yolo_cls'
    """

    def __init__(self, derive: Callable[[StudentKind], T]):
        self._derive = derive

    def __getitem__(self, key: str) -> T:
        return self._derive(_KINDS[key])

    def __iter__(self) -> Iterator[str]:
        return iter(list(_KINDS))

    def __len__(self) -> int:
        return len(_KINDS)

    def __repr__(self) -> str:
        return f"KindView({dict(self)!r})"
