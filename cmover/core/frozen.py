"""Immutable value classes that are neither named tuples nor dataclasses: :class:`Frozen`.

A frozen dataclass compiles its generated methods with ``exec`` at every start of every command (a third of a
millisecond or more per class), and a named tuple equals any tuple of the same values and cannot hold state
beyond its fields. A :class:`Frozen` class writes its ``__init__`` and inherits the rest.
"""

from __future__ import annotations

from typing import Any, ClassVar


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


__all__ = ["Frozen"]
