"""Immutable value classes, made at import for less than the standard library's: :class:`Frozen` and
:data:`NamedTuple`.

A frozen dataclass compiles its generated methods with ``exec`` at every start of every command (a third of a
millisecond or more per class), and a named tuple equals any tuple of the same values and cannot hold state
beyond its fields. A :class:`Frozen` class writes its ``__init__`` and inherits the rest.

:data:`NamedTuple` is :class:`typing.NamedTuple` for the type checker and, at run time, the same class statement
without the type check of each field's annotation: under ``from __future__ import annotations`` every annotation
is a string, and ``typing.NamedTuple`` compiles each one into a ``ForwardRef``, which nothing here ever
evaluates. For the 27 named tuples of the modules a copy pass imports (215 fields) that was 5 ms of every
command's start (the fastest of 6 runs: 24.0 against 19.2 ms for importing those modules), 4% of a 10-file
pass's wall time (20 alternated pairs).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, ClassVar


class Frozen:
    """Base of an immutable value class whose fields are named by ``_fields`` (default: its ``__slots__``, in
    order; a class with derived state in further slots names its fields).

    The subclass's ``__init__`` sets each slot once, with ``object.__setattr__``; assigning or deleting an
    attribute afterwards raises AttributeError. Two objects are equal when they are of the same class and their
    fields are equal (an object of another class, a tuple of the same values included, never is); an object
    hashes as its fields' tuple; its repr names its class and fields.
    """

    __slots__: ClassVar[tuple[str, ...]] = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_fields" not in cls.__dict__:
            cls._fields = tuple(cls.__dict__.get("__slots__", ()))

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable: cannot delete {name!r}")


# What typing.NamedTuple (Python 3.11) takes from a class body as is, and what it refuses to have overwritten.
_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})
_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make",
                         "_replace", "_asdict", "_source"})


class _NamedTupleMeta(type):
    """Makes ``class C(NamedTuple): ...`` a :func:`collections.namedtuple` class, as ``typing.NamedTuple`` does:
    the fields are the annotated names in order, a field's value in the body is its default (no field without
    one may follow a field with one), the other attributes of the body (methods, properties, the docstring,
    constants) are the class's; the annotations are kept as written."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> Any:
        if not bases:
            return super().__new__(mcs, name, bases, ns)  # the base itself (below)
        annotations: dict[str, Any] = ns.get("__annotations__", {})
        defaults: list[Any] = []
        for field in annotations:
            if field in ns:
                defaults.append(ns[field])
            elif defaults:
                raise TypeError(f"{name}: field {field!r} has no default but follows a field with one")
        fields = list(annotations)
        tpl = collections.namedtuple(name, fields, defaults=defaults, module=ns["__module__"])  # type: ignore[misc]
        tpl.__annotations__ = dict(annotations)
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
            if key not in _SPECIAL and key not in fields:
                setattr(tpl, key, value)
        return tpl


if TYPE_CHECKING:
    from typing import NamedTuple  # noqa: TID251 (the type checker's view of the class below)
else:
    class NamedTuple(metaclass=_NamedTupleMeta):
        """Base of a named tuple class statement (see the module doc); not itself a class to instantiate."""


__all__ = ["Frozen", "NamedTuple"]
